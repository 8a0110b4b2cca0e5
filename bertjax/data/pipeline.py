"""Pretraining input pipeline: text -> clean documents -> WordPiece -> instances -> masked batches.

`build_pretraining_data` is the one entry point. Its train iterator is infinite (every epoch
re-creates the sentence pairs and the shuffle from the seed, and masks are drawn fresh for every
batch), deterministic for a seed, reads only this host's shard, and has `get_state()` /
`set_state()` (a small JSON dict: epoch, index, fingerprint), so a restored run continues with the
identical next batch. It subclasses `grain.DatasetIterator`, so `grain.checkpoint.CheckpointSave`
/ `CheckpointRestore` can store it in an Orbax checkpoint.

Why our own iterator rather than a grain `MapDataset` chain: the work per batch is a handful of
vectorised numpy calls; grain's per-record Python machinery would cost more than the work itself
and the state would be no simpler. Parallelism comes from `tokenizers` (Rust) at start-up and
from the offline `prepare` step for big corpora.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import grain
import ml_collections
import numpy as np

from bertjax.data import embedded_corpus, shards, sources
from bertjax.data.cleaning import CleaningStats, Document, clean_documents, document_hash
from bertjax.data.instances import InstanceSpans, TokenizedCorpus, assemble_batch, create_instances
from bertjax.data.masking import MaskingConfig, mask_batch
from bertjax.data.packing import assemble_packed_batch, first_fit, instance_lengths
from bertjax.data.seeding import seed_int
from bertjax.data.settings import DataSettings
from bertjax.data.tokenizer import WordPieceTokenizer, train_wordpiece_vocab

log = logging.getLogger(__name__)

VOCAB_FILENAME = "vocab.txt"
VOCAB_META_FILENAME = "vocab_meta.json"
_EVAL_SEED = 20181011  # eval batches do not depend on the training seed: runs compare alike


class InstanceSource(Protocol):
    """Where an iterator takes its instances from, one epoch (a shuffled pass) at a time."""

    def epoch_size(self, epoch: int) -> int: ...

    def fetch(self, epoch: int, start: int, stop: int) -> tuple[np.ndarray, InstanceSpans]:
        """Instances `start:stop` of `epoch`'s order: a token array and spans into it."""
        ...


class InMemoryInstances:
    """Instances from a tokenized corpus in memory, re-created and reshuffled for every epoch."""

    def __init__(
        self, corpus: TokenizedCorpus, settings: DataSettings, seed_parts: tuple[Any, ...]
    ):
        self.corpus = corpus
        self.settings = settings
        self.seed_parts = seed_parts
        self._cache: dict[int, InstanceSpans] = {}

    def epoch(self, epoch: int) -> InstanceSpans:
        if epoch not in self._cache:
            rng = random.Random(seed_int("instances", *self.seed_parts, epoch))
            spans = create_instances(
                self.corpus,
                max_seq_length=self.settings.max_seq_length,
                short_seq_prob=self.settings.short_seq_prob,
                objective=self.settings.sentence_objective,
                rng=rng,
            )
            order = np.random.default_rng(seed_int("shuffle", *self.seed_parts, epoch))
            spans = spans.take(order.permutation(len(spans)))
            # Keep the current and the next epoch only (an iterator crosses epochs forward).
            self._cache = {e: s for e, s in self._cache.items() if e > epoch - 2}
            self._cache[epoch] = spans
        return self._cache[epoch]

    def epoch_size(self, epoch: int) -> int:
        return len(self.epoch(epoch))

    def fetch(self, epoch: int, start: int, stop: int) -> tuple[np.ndarray, InstanceSpans]:
        return self.corpus.tokens, self.epoch(epoch).take(slice(start, stop))


class Batcher:
    """Turns instances into model batches: assemble rows, then mask them (vectorised)."""

    def __init__(self, tokenizer: WordPieceTokenizer, settings: DataSettings):
        self.settings = settings
        self.cls_id, self.sep_id, self.pad_id = tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id
        self.masking = MaskingConfig(
            max_predictions_per_seq=settings.max_predictions_per_seq,
            masked_lm_prob=settings.masked_lm_prob,
            do_whole_word_mask=settings.do_whole_word_mask,
            mask_id=tokenizer.mask_id,
            replacement_ids=tokenizer.random_replacement_ids(),
            is_subword=tokenizer.is_subword_table(),
        )

    def __call__(
        self, tokens: np.ndarray, spans: InstanceSpans, rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        rows = assemble_batch(
            tokens,
            spans,
            max_seq_length=self.settings.max_seq_length,
            cls_id=self.cls_id,
            sep_id=self.sep_id,
            pad_id=self.pad_id,
        )
        return mask_batch(rows, self.masking, rng)

    def packed(
        self, tokens: np.ndarray, spans: InstanceSpans, rng: np.random.Generator, num_rows: int
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """`num_rows` packed rows from the window `spans` (`bertjax.data.packing`); returns the
        masked batch and the indices (into the window) of the instances it holds."""
        settings = self.settings
        placement = first_fit(
            instance_lengths(spans),
            num_rows=num_rows,
            max_seq_length=settings.max_seq_length,
            max_instances_per_row=settings.max_instances_per_row,
        )
        packed = assemble_packed_batch(
            tokens,
            spans,
            placement,
            num_rows=num_rows,
            max_seq_length=settings.max_seq_length,
            max_instances_per_row=settings.max_instances_per_row,
            cls_id=self.cls_id,
            sep_id=self.sep_id,
            pad_id=self.pad_id,
        )
        batch = mask_batch(packed.assembled, self.masking, rng)
        batch.update(packed.extra_keys())
        return batch, placement.index


class PretrainingIterator(grain.DatasetIterator):
    """Infinite iterator of this host's masked batches; its state is `{epoch, index, fingerprint}`.

    A batch takes the next `batch_size` instances of the current epoch's order, running on into
    the next epoch at the end of one (nothing is dropped). Its masks come from an RNG seeded by
    (seed, host, epoch, index), so the batch after a restored state is the batch that followed it.
    """

    def __init__(
        self,
        source: InstanceSource,
        batcher: Batcher,
        *,
        batch_size: int,
        seed_parts: tuple[Any, ...],
        fingerprint: str,
        rows: slice | None = None,
    ):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"local_batch_size must be >= 1, got {batch_size}")
        self._source = source
        self._batcher = batcher
        self._batch_size = batch_size
        # Global order: `batch_size` is the global batch, built identically on every host, and
        # this host returns its `rows` of it (None: all rows).
        self._rows = rows
        self._seed_parts = seed_parts
        self._fingerprint = fingerprint
        self._epoch = 0
        self._index = 0
        # Packing only: positions (epoch, index) of instances an earlier batch had no room for.
        self._deferred: list[tuple[int, int]] = []
        self._packing = batcher.settings.pack_sequences

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self._next_batch()
        if self._rows is None:
            return batch
        return {k: v[self._rows] for k, v in batch.items()}

    def _next_batch(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed_int("mask", *self._seed_parts, self._epoch, self._index))
        if not self._packing:
            tokens, spans = self._fetch(self._epoch, self._index, self._batch_size)
            batch = self._batcher(tokens, spans, rng)
            self._epoch, self._index = self._advance(self._epoch, self._index, self._batch_size)
            return batch
        # A window of B * K instances: the deferred ones first, then new ones (see packing.py).
        window = self._batch_size * self._batcher.settings.max_instances_per_row
        new = window - len(self._deferred)  # >= B: every batch places at least B instances
        positions = self._deferred + self._positions(self._epoch, self._index, new)
        parts = [self._source.fetch(e, i, i + 1) for e, i in self._deferred]
        parts.append(self._fetch(self._epoch, self._index, new))
        tokens, spans = _merge(parts)
        batch, placed = self._batcher.packed(tokens, spans, rng, self._batch_size)
        left = np.ones(len(positions), bool)
        left[placed] = False
        self._deferred = [positions[j] for j in np.flatnonzero(left)]
        self._epoch, self._index = self._advance(self._epoch, self._index, new)
        return batch

    def _positions(self, epoch: int, index: int, count: int) -> list[tuple[int, int]]:
        """The (epoch, index) of each of the `count` instances from (epoch, index) on."""
        out: list[tuple[int, int]] = []
        while len(out) < count:
            size = self._source.epoch_size(epoch)
            take = min(count - len(out), size - index)
            out.extend((epoch, i) for i in range(index, index + take))
            epoch, index = (epoch + 1, 0) if index + take == size else (epoch, index + take)
        return out

    def _fetch(self, epoch: int, index: int, count: int) -> tuple[np.ndarray, InstanceSpans]:
        """`count` instances from position (epoch, index) on, running into later epochs."""
        parts: list[tuple[np.ndarray, InstanceSpans]] = []
        while count:
            size = self._source.epoch_size(epoch)
            if size == 0:
                raise RuntimeError(f"epoch {epoch} has no instances")
            take = min(count, size - index)
            parts.append(self._source.fetch(epoch, index, index + take))
            count -= take
            epoch, index = (epoch + 1, 0) if index + take == size else (epoch, index + take)
        return _merge(parts)

    def _advance(self, epoch: int, index: int, count: int) -> tuple[int, int]:
        """The position `count` instances after (epoch, index)."""
        while count:
            size = self._source.epoch_size(epoch)
            take = min(count, size - index)
            count -= take
            epoch, index = (epoch + 1, 0) if index + take == size else (epoch, index + take)
        return epoch, index

    def get_state(self) -> dict[str, Any]:
        state = {"epoch": self._epoch, "index": self._index, "fingerprint": self._fingerprint}
        if self._packing:
            state["deferred"] = [list(p) for p in self._deferred]
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        for key in ("epoch", "index", "fingerprint"):
            if key not in state:
                raise KeyError(f"data iterator state lacks {key!r}: {state!r}")
        if state["fingerprint"] != self._fingerprint:
            raise ValueError(
                "data iterator state was saved by a different data pipeline (config.data, corpus, "
                "vocabulary, seed, batch size or host count changed): saved fingerprint "
                f"{state['fingerprint']!r}, this pipeline {self._fingerprint!r}"
            )
        epoch, index = int(state["epoch"]), int(state["index"])
        if epoch < 0 or not 0 <= index < max(1, self._source.epoch_size(epoch)):
            raise ValueError(f"data iterator state out of range: epoch={epoch} index={index}")
        deferred = [(int(e), int(i)) for e, i in state.get("deferred", [])]
        if deferred and not self._packing:
            raise ValueError(
                "data iterator state holds deferred packed instances, but data.pack_sequences "
                "is off"
            )
        self._epoch, self._index, self._deferred = epoch, index, deferred

    def __repr__(self) -> str:
        return f"PretrainingIterator(epoch={self._epoch}, index={self._index})"


def _merge(parts: list[tuple[np.ndarray, InstanceSpans]]) -> tuple[np.ndarray, InstanceSpans]:
    """One token array + spans from several fetches (shared arrays are not copied)."""
    tokens = parts[0][0]
    if all(p[0] is tokens for p in parts):
        return tokens, InstanceSpans.concatenate([p[1] for p in parts])
    offsets = np.cumsum([0] + [len(p[0]) for p in parts[:-1]])
    shifted = [
        InstanceSpans(s.a_start + o, s.a_len, s.b_start + o, s.b_len, s.label)
        for (_, s), o in zip(parts, offsets, strict=True)
    ]
    return np.concatenate([p[0] for p in parts]), InstanceSpans.concatenate(shifted)


class PretrainingData:
    """What `build_pretraining_data` returns: the tokenizer and this host's train/eval iterators.

    Attributes:
      tokenizer: the `WordPieceTokenizer` (encode / decode / special ids).
      vocab_size: its vocabulary size (what the model's embedding needs).
      settings: the validated `config.data`.
      stats: counts of what reading and cleaning dropped (`CleaningStats`).
      sentence_objective: "nsp", "sop" or "none" ("none": `next_sentence_labels` are all 0 and
        the task should not train a sentence head).
    """

    def __init__(
        self,
        *,
        tokenizer: WordPieceTokenizer,
        settings: DataSettings,
        stats: CleaningStats,
        train_source: InstanceSource,
        eval_source: EvalInstances | None,
        seed: int,
        local_batch_size: int,
        process_index: int,
        process_count: int,
        data_fingerprint: str,
        global_order: bool = False,
    ):
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.vocab_size
        self.settings = settings
        self.stats = stats
        self.sentence_objective = settings.sentence_objective
        self.local_batch_size = local_batch_size
        self.process_index = process_index
        self.process_count = process_count
        self._train_source = train_source
        self._eval_source = eval_source
        self._seed = seed
        self._batcher = Batcher(tokenizer, settings)
        # global_order: every host holds the whole training corpus and builds the same global
        # batches (instances, order and masks depend on data, config and seed only), keeping
        # its rows; the number of hosts does not change the data, and a position saved by N
        # hosts resumes on M. Otherwise (tfds, prepared shards) each host reads its own shard.
        self.global_order = global_order
        if global_order:
            parts: tuple[Any, ...] = (data_fingerprint, seed, local_batch_size * process_count)
        else:
            parts = (data_fingerprint, seed, local_batch_size, process_index, process_count)
        self._fingerprint = hashlib.sha256(repr(parts).encode()).hexdigest()[:16]

    def train_iterator(self) -> PretrainingIterator:
        """A fresh infinite iterator at epoch 0 (restore a position with `set_state`)."""
        if self.global_order:
            local = self.local_batch_size
            return PretrainingIterator(
                self._train_source,
                self._batcher,
                batch_size=local * self.process_count,
                seed_parts=(self._seed,),
                fingerprint=self._fingerprint,
                rows=slice(self.process_index * local, (self.process_index + 1) * local),
            )
        return PretrainingIterator(
            self._train_source,
            self._batcher,
            batch_size=self.local_batch_size,
            seed_parts=(self._seed, self.process_index, self.process_count),
            fingerprint=self._fingerprint,
        )

    def eval_iterator(self, num_batches: int) -> Iterator[dict[str, np.ndarray]]:
        """`num_batches` deterministic held-out batches (fixed pairs and masks, seed-independent).

        When the held-out instances are fewer than `num_batches * local_batch_size`, further
        passes over them (new pairs, new masks) fill the remainder.
        """
        if self._eval_source is None:
            raise ValueError("no held-out data: set data.eval_fraction > 0")
        if self.global_order:  # the global eval batches, this host's rows of each
            size, local = self.local_batch_size * self.process_count, self.local_batch_size
            rows, host = slice(self.process_index * local, (self.process_index + 1) * local), 0
        else:
            size, rows, host = self.local_batch_size, slice(None), self.process_index
        tokens, spans = self._eval_source.instances(num_batches * size)
        for b in range(num_batches):
            rng = np.random.default_rng(seed_int("eval-mask", _EVAL_SEED, host, b))
            batch = self._batcher(tokens, spans.take(slice(b * size, (b + 1) * size)), rng)
            yield {k: v[rows] for k, v in batch.items()}


class EvalInstances:
    """Held-out instances: as many passes over the eval documents as a request needs."""

    def __init__(self, corpus: TokenizedCorpus, settings: DataSettings, process_index: int):
        self.corpus = corpus
        self.settings = settings
        self.process_index = process_index
        self._cached: tuple[int, InstanceSpans] | None = None

    def instances(self, needed: int) -> tuple[np.ndarray, InstanceSpans]:
        # The training loop asks for the same eval set every `eval_every` steps: build it once.
        if self._cached is not None and self._cached[0] >= needed:
            return self.corpus.tokens, self._cached[1]
        parts: list[InstanceSpans] = []
        total = 0
        for k in range(1_000_000):
            if total >= needed:
                break
            rng = random.Random(seed_int("eval-instances", _EVAL_SEED, self.process_index, k))
            spans = create_instances(
                self.corpus,
                max_seq_length=self.settings.max_seq_length,
                short_seq_prob=self.settings.short_seq_prob,
                objective=self.settings.sentence_objective,
                rng=rng,
            )
            parts.append(spans)
            total += len(spans)
        spans = InstanceSpans.concatenate(parts)
        self._cached = (len(spans), spans)
        return self.corpus.tokens, spans


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------


def build_pretraining_data(
    data_config: ml_collections.ConfigDict,
    *,
    seed: int,
    local_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    vocab_dir: str | None = None,
) -> PretrainingData:
    """Builds this host's pretraining data from `config.data`.

    Args:
      data_config: `config.data` (keys: see `bertjax.data.settings.DataSettings`).
      seed: the run's seed (`config.seed`): same seed, same batches.
      local_batch_size: rows per batch on this host (global batch / process count).
      process_index, process_count: this host and the number of hosts (`jax.process_index()`,
        `jax.process_count()`); each host reads a disjoint shard, together covering the data.
      vocab_dir: where a vocabulary trained at start-up is saved (and, on a resumed run, read
        back), e.g. the workdir. Unused when `data.vocab_file` is set.

    Raises:
      ValueError / KeyError / FileNotFoundError: bad config or input, naming the key or file.
    """
    settings = DataSettings.from_config(data_config)
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count})")
    if settings.source == "prepared":
        prepared = shards.open_prepared(
            settings, seed=seed, process_index=process_index, process_count=process_count
        )
        return PretrainingData(
            tokenizer=prepared.tokenizer,
            settings=settings,
            stats=prepared.stats,
            train_source=prepared.train,
            eval_source=prepared.eval,
            seed=seed,
            local_batch_size=local_batch_size,
            process_index=process_index,
            process_count=process_count,
            data_fingerprint=prepared.fingerprint,
        )

    stats = CleaningStats()
    if settings.source == "tfds":
        raw = sources.tfds_documents(
            settings.tfds_name,
            split=settings.tfds_split,
            data_dir=settings.tfds_data_dir,
            text_key=settings.tfds_text_key,
            unicode_errors=settings.unicode_errors,
            process_index=process_index,
            process_count=process_count,
            stats=stats,
        )
        host_docs = _clean(raw, settings, stats)
        train_docs, eval_docs = split_eval_by_threshold(host_docs, settings.eval_fraction)
        vocab_docs: Sequence[Document] = ()  # tfds requires data.vocab_file (checked)
        where = f"tfds {settings.tfds_name}[{settings.tfds_split}] shard {process_index}"
        host_split = True  # each host streams its own shard of the dataset
    else:
        if settings.source == "embedded":
            raw = [list(d) for d in embedded_corpus.embedded_documents()]
            where = "the embedded corpus"
        else:
            raw = sources.read_text_files(
                settings.text_files,
                text_format=settings.text_format,
                unicode_errors=settings.unicode_errors,
                stats=stats,
            )
            where = f"data.text_files={settings.text_files!r}"
        # Every host reads and cleans the (small enough) file list, so duplicates are found across
        # the whole corpus; then each keeps its own documents.
        docs = _clean(raw, settings, stats)
        # Enough held-out documents for every host to pair them (NSP needs 2 per host).
        per_host = 2 if settings.sentence_objective == "nsp" else 1
        train_docs, eval_docs = split_eval_exact(docs, settings.eval_fraction, min_eval=per_host)
        vocab_docs = docs
        # Every host keeps every document: the global batches do not depend on the host count.
        host_split = False
    log.info("data from %s: %s", where, stats.summary())
    _check_enough_documents(
        train_docs,
        settings,
        where,
        process_index if host_split else 0,
        process_count if host_split else 1,
        stats,
    )

    corpus_fp = documents_fingerprint(vocab_docs) if not settings.vocab_file else ""
    tokenizer = resolve_tokenizer(
        settings,
        vocab_docs=vocab_docs,
        corpus_fingerprint=corpus_fp,
        vocab_dir=vocab_dir,
        process_index=process_index,
    )
    train_corpus = tokenize_documents(tokenizer, train_docs)
    eval_source = None
    if eval_docs:
        if settings.sentence_objective == "nsp" and len(eval_docs) < 2:
            raise ValueError(
                f"{where}: host {process_index} holds {len(eval_docs)} held-out document(s); NSP "
                "needs 2: raise data.eval_fraction (or set it to 0 for no eval)"
            )
        eval_source = EvalInstances(
            tokenize_documents(tokenizer, eval_docs), settings, process_index if host_split else 0
        )
    log.info(
        "host %d/%d: %d train documents (%d tokens), %d eval documents, vocabulary %d",
        process_index,
        process_count,
        train_corpus.num_documents,
        len(train_corpus.tokens),
        len(eval_docs),
        tokenizer.vocab_size,
    )
    data_fp = hashlib.sha256(
        repr((settings, tokenizer.fingerprint(), documents_fingerprint(train_docs))).encode()
    ).hexdigest()
    seed_parts = (seed, process_index, process_count) if host_split else (seed,)
    return PretrainingData(
        tokenizer=tokenizer,
        settings=settings,
        stats=stats,
        train_source=InMemoryInstances(train_corpus, settings, seed_parts),
        eval_source=eval_source,
        seed=seed,
        local_batch_size=local_batch_size,
        process_index=process_index,
        process_count=process_count,
        data_fingerprint=data_fp,
        global_order=not host_split,
    )


def _clean(raw: Sequence[Document], settings: DataSettings, stats: CleaningStats) -> list[Document]:
    return list(
        clean_documents(
            raw,
            min_document_chars=settings.min_document_chars,
            dedup_documents=settings.dedup_documents,
            stats=stats,
        )
    )


def _check_enough_documents(
    docs: Sequence[Document],
    settings: DataSettings,
    where: str,
    process_index: int,
    process_count: int,
    stats: CleaningStats,
) -> None:
    needed = 2 if settings.sentence_objective == "nsp" else 1
    if len(docs) >= needed:
        return
    host = f" on host {process_index} of {process_count}" if process_count > 1 else ""
    why = (
        "next-sentence prediction pairs a segment with a span of another document, so it needs "
        "at least 2 documents (or set data.sentence_objective to 'sop' or 'none')"
        if needed == 2
        else "there is nothing to train on"
    )
    raise ValueError(
        f"{where}: {len(docs)} training document(s){host} after cleaning ({stats.summary()}); {why}"
    )


def split_eval_exact(
    docs: Sequence[Document], eval_fraction: float, *, min_eval: int = 1
) -> tuple[list[Document], list[Document]]:
    """(train, eval): the max(min_eval, ceil(fraction * n)) documents with the smallest stable
    hashes are eval; none when that would leave fewer training than eval documents.

    Independent of seed and document order, so every run holds out the same text.
    """
    if eval_fraction <= 0:
        return list(docs), []
    n_eval = max(min_eval, math.ceil(eval_fraction * len(docs)))
    if len(docs) - n_eval < n_eval:
        log.warning(
            "%d documents are too few to hold out %d for eval: no eval split", len(docs), n_eval
        )
        return list(docs), []
    ranked = sorted(range(len(docs)), key=lambda i: document_hash(docs[i]))
    eval_set = set(ranked[:n_eval])
    train = [d for i, d in enumerate(docs) if i not in eval_set]
    held = [d for i, d in enumerate(docs) if i in eval_set]
    return train, held


def split_eval_by_threshold(
    docs: Sequence[Document], eval_fraction: float
) -> tuple[list[Document], list[Document]]:
    """(train, eval) by hash threshold: each host decides alone (used when it sees only a shard)."""
    if eval_fraction <= 0:
        return list(docs), []
    cut = int(eval_fraction * 2**64)
    train, held = [], []
    for d in docs:
        (held if document_hash(d) < cut else train).append(d)
    return train, held


def documents_fingerprint(docs: Sequence[Document]) -> str:
    """sha256 of the documents' text (what a trained vocabulary was trained on)."""
    h = hashlib.sha256()
    for doc in docs:
        h.update("\n".join(doc).encode("utf-8"))
        h.update(b"\n\n")
    return h.hexdigest()


def tokenize_documents(
    tokenizer: WordPieceTokenizer, docs: Sequence[Document], chunk_sentences: int = 50_000
) -> TokenizedCorpus:
    """WordPiece ids of every sentence (batched Rust calls), as a `TokenizedCorpus`.

    Documents are encoded in chunks of about `chunk_sentences` sentences, so the tokenizer's
    per-sentence objects never exist for the whole corpus at once.
    """
    parts: list[TokenizedCorpus] = []
    start = 0
    while start < len(docs):
        stop, n = start, 0
        while stop < len(docs) and (n == 0 or n + len(docs[stop]) <= chunk_sentences):
            n += len(docs[stop])
            stop += 1
        chunk = docs[start:stop]
        ids = tokenizer.encode_batch([s for d in chunk for s in d])
        grouped, k = [], 0
        for d in chunk:
            grouped.append(ids[k : k + len(d)])
            k += len(d)
        parts.append(TokenizedCorpus.from_token_lists(grouped))
        start = stop
    return TokenizedCorpus.concatenate(parts)


def resolve_tokenizer(
    settings: DataSettings,
    *,
    vocab_docs: Sequence[Document],
    corpus_fingerprint: str,
    vocab_dir: str | None,
    process_index: int,
) -> WordPieceTokenizer:
    """`data.vocab_file` if set; else `vocab_dir/vocab.txt` if a previous run left one there;
    else a vocabulary trained now from `vocab_docs` (and saved to `vocab_dir` by host 0)."""
    if settings.vocab_file:
        return WordPieceTokenizer.from_vocab_file(
            settings.vocab_file, do_lower_case=settings.do_lower_case
        )
    meta = {
        "corpus_fingerprint": corpus_fingerprint,
        "vocab_size": settings.vocab_size,
        "do_lower_case": settings.do_lower_case,
    }
    if vocab_dir:
        path = os.path.join(vocab_dir, VOCAB_FILENAME)
        meta_path = os.path.join(vocab_dir, VOCAB_META_FILENAME)
        if os.path.exists(path):
            if os.path.exists(meta_path):
                with open(meta_path, encoding="utf-8") as f:
                    saved = json.load(f)
                diffs = [k for k in meta if saved.get(k) != meta[k]]
                if diffs:
                    raise ValueError(
                        f"{path} was trained for a different {', '.join(diffs)} than this run's "
                        f"config.data; delete it to train a new one, or set data.vocab_file"
                    )
            else:
                log.warning("%s has no %s; using it as is", path, VOCAB_META_FILENAME)
            log.info("using the vocabulary saved in %s", path)
            return WordPieceTokenizer.from_vocab_file(path, do_lower_case=settings.do_lower_case)
    vocab = train_wordpiece_vocab(
        (s for d in vocab_docs for s in d),
        vocab_size=settings.vocab_size,
        do_lower_case=settings.do_lower_case,
    )
    if len(vocab) < settings.vocab_size:
        log.warning(
            "the corpus supports only %d of data.vocab_size=%d WordPiece tokens",
            len(vocab),
            settings.vocab_size,
        )
    tokenizer = WordPieceTokenizer(vocab, do_lower_case=settings.do_lower_case, source="trained")
    if vocab_dir and process_index == 0:
        os.makedirs(vocab_dir, exist_ok=True)
        # The metadata first: whoever sees vocab.txt can check it.
        tmp = os.path.join(vocab_dir, f"{VOCAB_META_FILENAME}.tmp.{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)
        os.replace(tmp, os.path.join(vocab_dir, VOCAB_META_FILENAME))
        tokenizer.save_vocab(os.path.join(vocab_dir, VOCAB_FILENAME))
        log.info("trained a %d-token vocabulary, saved to %s", len(vocab), vocab_dir)
    return tokenizer
