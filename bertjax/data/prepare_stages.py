"""The stages of `python -m bertjax.data.prepare` that both of its engines run.

`prepare` has two engines: a multiprocessing pool on one host (`bertjax.data.prepare`) and an
Apache Beam pipeline (`bertjax.data.prepare_beam`) for corpora that outgrow one machine. Both
call these functions, so the same input, config and seed give the same shards record for record:

  1. read + clean: `sources.documents_from_bytes` / `tfds_example_document`, then
     `cleaning.clean_document` per document;
  2. dedup (`data.dedup_documents`): of the documents with one `cleaning.dedup_key`, the first
     in corpus order (the smallest position key) is kept;
  3. `plan_shards`: from the kept documents' hashes in corpus order, which are held out for eval
     (as `pipeline.split_eval_exact`) and which shard each goes to (round robin in corpus order);
  4. `shard_records`: per shard, tokenize its documents (in corpus order), make
     `data.dupe_factor` passes of instances seeded by (seed, split, shard, pass), shuffle them
     with a seeded permutation, encode them as records;
  5. `build_metadata`: `metadata.json` from the shard results and the summed cleaning counts.

Nothing depends on which worker ran what or in which order workers finished: every random draw
is seeded from content or (seed, split, shard, pass), and every order is a sort by position.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import random
from collections.abc import Sequence
from typing import Any

import numpy as np

from bertjax.data import shards
from bertjax.data.cleaning import CleaningStats, Document
from bertjax.data.instances import InstanceSpans, create_instances
from bertjax.data.pipeline import seed_int, tokenize_documents
from bertjax.data.settings import DataSettings
from bertjax.data.tokenizer import WordPieceTokenizer

log = logging.getLogger(__name__)

SPLITS = ("train", "eval")


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    """Where each kept document goes: `split[i]` (0 train, 1 eval) and `shard[i]`, for the
    documents in corpus order; `fingerprint` identifies the kept documents and their order."""

    num_shards: int
    split: np.ndarray
    shard: np.ndarray
    fingerprint: str

    def members(self, split: str, index: int) -> np.ndarray:
        """Corpus-order indices of the documents of one shard."""
        want = SPLITS.index(split)
        return np.nonzero((self.split == want) & (self.shard == index))[0]


def plan_shards(hashes: np.ndarray, *, eval_fraction: float, num_shards: int) -> ShardPlan:
    """Splits and shards the kept documents, given their `cleaning.document_hash` in corpus order.

    Eval: the max(1, ceil(eval_fraction * n)) documents with the smallest hashes (ties by
    position), none when that would leave fewer training than eval documents, exactly as
    `pipeline.split_eval_exact`. Shards: min(num_shards, n_train // 2) of them (at least 1), so
    that a "NotNext" segment has another document of its shard to come from; document k of a
    split (in corpus order) goes to shard k % num_shards.
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    n = len(hashes)
    is_eval = np.zeros(n, bool)
    if eval_fraction > 0 and n:
        n_eval = max(1, math.ceil(eval_fraction * n))
        if n - n_eval < n_eval:
            log.warning(
                "%d documents are too few to hold out %d for eval: no eval split", n, n_eval
            )
        else:
            is_eval[np.argsort(hashes, kind="stable")[:n_eval]] = True
    n_train = int(n - is_eval.sum())
    num_shards = max(1, min(num_shards, n_train // 2))
    shard = np.empty(n, np.int64)
    for flag in (False, True):
        idx = np.nonzero(is_eval == flag)[0]
        shard[idx] = np.arange(len(idx)) % num_shards
    fingerprint = hashlib.sha256(hashes.astype("<u8").tobytes()).hexdigest()
    return ShardPlan(num_shards, is_eval.astype(np.int8), shard, fingerprint)


def shard_records(
    docs: Sequence[Document],
    *,
    split: str,
    index: int,
    settings: DataSettings,
    tokenizer: WordPieceTokenizer,
    seed: int,
) -> list[bytes]:
    """The records of one shard: its documents' instances (`dupe_factor` passes for train, one
    for eval), shuffled by a permutation seeded with (seed, split, index)."""
    passes = settings.dupe_factor if split == "train" else 1
    corpus = tokenize_documents(tokenizer, docs)
    parts = []
    for k in range(passes):
        rng = random.Random(seed_int("prepare", seed, split, index, k))
        parts.append(
            create_instances(
                corpus,
                max_seq_length=settings.max_seq_length,
                short_seq_prob=settings.short_seq_prob,
                objective=settings.sentence_objective,
                rng=rng,
            )
        )
    spans = InstanceSpans.concatenate(parts)
    order = np.random.default_rng(seed_int("prepare-shuffle", seed, split, index))
    spans = spans.take(order.permutation(len(spans)))
    dtype = shards.record_dtype(tokenizer.vocab_size)
    return shards.encode_records(corpus.tokens, spans, dtype)


def write_records(path: str, records: Sequence[bytes]) -> str:
    """Writes one ArrayRecord shard to a local path; returns the sha256 of its records."""
    from array_record.python.array_record_module import ArrayRecordWriter

    digest = hashlib.sha256()
    writer = ArrayRecordWriter(path, "group_size:1")  # group_size 1: fast random access
    for rec in records:
        writer.write(rec)
        digest.update(len(rec).to_bytes(8, "little"))
        digest.update(rec)
    writer.close()
    return digest.hexdigest()


def shard_result(split: str, index: int, num_shards: int, count: int, digest: str) -> dict:
    """What a written shard reports to `build_metadata`."""
    name = shards.shard_name(split, index, num_shards)
    return {"split": split, "index": index, "file": name, "count": count, "sha256": digest}


def build_metadata(
    settings: DataSettings,
    *,
    seed: int,
    num_shards: int,
    corpus_fingerprint: str,
    tokenizer: WordPieceTokenizer,
    results: Sequence[dict[str, Any]],
    stats: CleaningStats,
    engine: str,
) -> dict[str, Any]:
    """`metadata.json` of a prepared directory (see `bertjax.data.shards`).

    Shards without records are left out of the file lists. Raises ValueError when no training
    instance was made.
    """
    ordered = sorted(results, key=lambda r: (SPLITS.index(r["split"]), r["index"]))
    files = {s: [r["file"] for r in ordered if r["split"] == s and r["count"]] for s in SPLITS}
    counts = {s: sum(r["count"] for r in ordered if r["split"] == s) for s in SPLITS}
    meta = {
        "format": shards.FORMAT,
        "max_seq_length": settings.max_seq_length,
        "sentence_objective": settings.sentence_objective,
        "do_lower_case": settings.do_lower_case,
        "short_seq_prob": settings.short_seq_prob,
        "dupe_factor": settings.dupe_factor,
        "source": settings.source,
        "seed": seed,
        "vocab_fingerprint": tokenizer.fingerprint(),
        "corpus_fingerprint": hashlib.sha256(
            repr((corpus_fingerprint, dataclasses.asdict(settings), seed, num_shards)).encode()
        ).hexdigest(),
        "dtype": shards.record_dtype(tokenizer.vocab_size).str,
        "train_files": files["train"],
        "eval_files": files["eval"],
        "num_train": counts["train"],
        "num_eval": counts["eval"],
        "stats": stats.as_dict(),
        # Corpus-wide exact deduplication (normalised text), counted in `stats` too.
        "dedup": {
            "enabled": settings.dedup_documents,
            "documents_checked": stats.documents_kept + stats.dropped_duplicate,
            "duplicates_dropped": stats.dropped_duplicate,
            "documents_kept": stats.documents_kept,
        },
        "shard_sha256": {r["file"]: r["sha256"] for r in ordered if r["count"]},
        "engine": engine,  # which engine wrote it; the only field that differs between them
    }
    if not meta["num_train"]:
        raise ValueError(f"no training instances were made ({stats.summary()})")
    return meta
