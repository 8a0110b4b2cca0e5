r"""Offline step for corpora too big to tokenize at start-up: text -> instance shards (ArrayRecord).

    python -m bertjax.data.prepare --config=configs/bert_base_pretrain.py \
        --config.data.source=text_files --config.data.text_files='corpus/*.txt' \
        --output_dir=/data/bert_prepared --num_shards=256 --num_workers=16

Tokenization and pairing run in parallel worker processes (one shard per task, a progress bar
over shards); every train document yields `data.dupe_factor` passes of instances, as
google-research/bert's `create_pretraining_data.py`. Train with
`--config.data.source=prepared --config.data.prepared_dir=/data/bert_prepared`; masking stays
online and dynamic. Random "NotNext" segments are drawn from documents of the same shard.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import random
from collections.abc import Sequence
from typing import Any

import numpy as np

from bertjax.data import embedded_corpus, pipeline, shards, sources
from bertjax.data.cleaning import CleaningStats, Document
from bertjax.data.instances import InstanceSpans, create_instances
from bertjax.data.settings import DataSettings
from bertjax.data.tokenizer import WordPieceTokenizer

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ShardJob:
    """One worker task: the documents of one train shard and one eval shard."""

    index: int
    num_shards: int
    output_dir: str
    settings: DataSettings
    vocab: list[str]
    seed: int
    train_docs: list[Document] | None = None  # None: read this shard from TFDS in the worker
    eval_docs: list[Document] | None = None


def _run_job(job: ShardJob) -> dict[str, Any]:
    """Tokenizes, pairs and writes one shard; returns its counts (runs in a worker process)."""
    from array_record.python.array_record_module import ArrayRecordWriter

    s = job.settings
    stats = CleaningStats()
    train_docs, eval_docs = job.train_docs, job.eval_docs
    if train_docs is None:
        raw = sources.tfds_documents(
            s.tfds_name,
            split=s.tfds_split,
            data_dir=s.tfds_data_dir,
            text_key=s.tfds_text_key,
            unicode_errors=s.unicode_errors,
            process_index=job.index,
            process_count=job.num_shards,
            stats=stats,
        )
        docs = pipeline._clean(raw, s, stats)
        train_docs, eval_docs = pipeline.split_eval_by_threshold(docs, s.eval_fraction)
    tokenizer = WordPieceTokenizer(job.vocab, do_lower_case=s.do_lower_case)
    dtype = shards.record_dtype(tokenizer.vocab_size)
    out: dict[str, Any] = {"stats": stats.as_dict()}
    for split, docs, passes in (("train", train_docs, s.dupe_factor), ("eval", eval_docs or [], 1)):
        name = shards.shard_name(split, job.index, job.num_shards)
        if not docs:
            out[split] = (None, 0)
            continue
        corpus = pipeline.tokenize_documents(tokenizer, docs)
        parts = []
        for k in range(passes):
            rng = random.Random(pipeline.seed_int("prepare", job.seed, split, job.index, k))
            parts.append(
                create_instances(
                    corpus,
                    max_seq_length=s.max_seq_length,
                    short_seq_prob=s.short_seq_prob,
                    objective=s.sentence_objective,
                    rng=rng,
                )
            )
        spans = InstanceSpans.concatenate(parts)
        order = np.random.default_rng(
            pipeline.seed_int("prepare-shuffle", job.seed, split, job.index)
        )
        spans = spans.take(order.permutation(len(spans)))
        path = os.path.join(job.output_dir, name)
        writer = ArrayRecordWriter(path, "group_size:1")  # group_size 1: fast random access
        for rec in shards.encode_records(corpus.tokens, spans, dtype):
            writer.write(rec)
        writer.close()
        out[split] = (name, len(spans))
    return out


def prepare(
    settings: DataSettings,
    *,
    output_dir: str,
    seed: int,
    num_shards: int,
    num_workers: int,
    progress: bool = True,
) -> dict[str, Any]:
    """Writes a prepared directory (see `bertjax.data.shards`); returns its metadata."""
    if settings.source == "prepared":
        raise ValueError("data.source='prepared' is already prepared; choose a text source")
    if num_shards < 1 or num_workers < 1:
        raise ValueError("--num_shards and --num_workers must be >= 1")
    os.makedirs(output_dir, exist_ok=True)
    if os.path.exists(os.path.join(output_dir, shards.METADATA)):
        raise FileExistsError(f"{output_dir} already holds a prepared corpus; choose a new one")
    stats = CleaningStats()
    jobs: list[ShardJob]
    if settings.source == "tfds":
        tokenizer = WordPieceTokenizer.from_vocab_file(
            settings.vocab_file, do_lower_case=settings.do_lower_case
        )
        corpus_fp = f"tfds:{settings.tfds_name}[{settings.tfds_split}]"
        jobs = [
            ShardJob(i, num_shards, output_dir, settings, tokenizer.vocab, seed)
            for i in range(num_shards)
        ]
    else:
        if settings.source == "embedded":
            raw = [list(d) for d in embedded_corpus.embedded_documents()]
        else:
            raw = sources.read_text_files(
                settings.text_files,
                text_format=settings.text_format,
                unicode_errors=settings.unicode_errors,
                stats=stats,
            )
        docs = pipeline._clean(raw, settings, stats)
        train, held = pipeline.split_eval_exact(docs, settings.eval_fraction)
        corpus_fp = pipeline.documents_fingerprint(docs)
        tokenizer = pipeline.resolve_tokenizer(
            settings, vocab_docs=docs, corpus_fingerprint=corpus_fp, vocab_dir=None, process_index=0
        )
        # Two documents per shard at least, so that a "NotNext" segment has somewhere to come from.
        num_shards = max(1, min(num_shards, len(train) // 2))
        jobs = [
            ShardJob(
                i,
                num_shards,
                output_dir,
                settings,
                tokenizer.vocab,
                seed,
                train_docs=train[i::num_shards],
                eval_docs=held[i::num_shards],
            )
            for i in range(num_shards)
        ]
    tokenizer.save_vocab(os.path.join(output_dir, shards.VOCAB))

    results = _run_all(jobs, num_workers, progress)
    for r in results:
        stats.merge(CleaningStats(**r["stats"]))
    train_files = [r["train"][0] for r in results if r["train"][1]]
    eval_files = [r["eval"][0] for r in results if r["eval"][1]]
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
            repr((corpus_fp, dataclasses.asdict(settings), seed, num_shards)).encode()
        ).hexdigest(),
        "dtype": shards.record_dtype(tokenizer.vocab_size).str,
        "train_files": train_files,
        "eval_files": eval_files,
        "num_train": sum(r["train"][1] for r in results),
        "num_eval": sum(r["eval"][1] for r in results),
        "stats": stats.as_dict(),
    }
    if not meta["num_train"]:
        raise ValueError(f"no training instances were made ({stats.summary()})")
    tmp = os.path.join(output_dir, shards.METADATA + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
    os.replace(tmp, os.path.join(output_dir, shards.METADATA))  # last: marks the output complete
    return meta


def _run_all(jobs: Sequence[ShardJob], num_workers: int, progress: bool) -> list[dict[str, Any]]:
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="prepare shards", unit="shard", disable=not progress)
    results: list[dict[str, Any]] = [{}] * len(jobs)
    if num_workers == 1:
        for i, job in enumerate(jobs):
            results[i] = _run_job(job)
            bar.update()
    else:
        # spawn: the Rust tokenizer's thread pool does not survive fork.
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(num_workers, initializer=_init_worker) as pool:
            for i, res in pool.imap_unordered(_indexed_job, list(enumerate(jobs))):
                results[i] = res
                bar.update()
    bar.close()
    return results


def _init_worker() -> None:
    # Each worker is one process; Rust threads on top would oversubscribe the cores.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def _indexed_job(item: tuple[int, ShardJob]) -> tuple[int, dict[str, Any]]:
    return item[0], _run_job(item[1])


def main(argv: Sequence[str]) -> None:
    from absl import flags

    del argv
    config = flags.FLAGS.config
    settings = DataSettings.from_config(config.data)
    meta = prepare(
        settings,
        output_dir=flags.FLAGS.output_dir,
        seed=int(config.get("seed", 0)),
        num_shards=flags.FLAGS.num_shards,
        num_workers=flags.FLAGS.num_workers,
    )
    print(
        f"wrote {meta['num_train']} train / {meta['num_eval']} eval instances in "
        f"{len(meta['train_files'])} + {len(meta['eval_files'])} shards to {flags.FLAGS.output_dir}"
    )
    print(f"cleaning: {CleaningStats(**meta['stats']).summary()}")


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
    flags.DEFINE_string("output_dir", None, "Directory to write the shards to (must be new).")
    flags.DEFINE_integer("num_shards", 64, "Number of train shards (and eval shards).")
    flags.DEFINE_integer("num_workers", os.cpu_count() or 1, "Worker processes.")
    flags.mark_flags_as_required(["config", "output_dir"])
    app.run(main)
