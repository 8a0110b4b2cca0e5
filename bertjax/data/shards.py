"""Prepared instance shards (ArrayRecord), written by `bertjax.data.prepare`, read online.

A prepared directory holds:
  * `train-SSSSS-of-NNNNN.array_record`, `eval-...`: one record per unmasked instance,
    `[label, len_a, len_b, *tokens_a, *tokens_b]` as little-endian uint16 (int32 when the
    vocabulary has more than 65536 tokens); records are in random order within a shard;
  * `vocab.txt`, the vocabulary the ids refer to;
  * `metadata.json`, written last (a directory without it is incomplete): the settings the
    instances were made with, record counts, cleaning counts.

Masking stays online and dynamic; only the (expensive) tokenization and pairing are offline.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bertjax.data.cleaning import CleaningStats
from bertjax.data.instances import InstanceSpans
from bertjax.data.seeding import seed_int
from bertjax.data.settings import DataSettings
from bertjax.data.tokenizer import WordPieceTokenizer

FORMAT = "bertjax-pretraining-instances-v1"
METADATA = "metadata.json"
VOCAB = "vocab.txt"
_HEADER = 3  # label, len_a, len_b


def record_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 65536 else np.dtype("<i4")


def encode_records(tokens: np.ndarray, spans: InstanceSpans, dtype: np.dtype) -> list[bytes]:
    """One record per instance: header then A's and B's token ids."""
    out = []
    for a0, la, b0, lb, label in zip(
        spans.a_start.tolist(),
        spans.a_len.tolist(),
        spans.b_start.tolist(),
        spans.b_len.tolist(),
        spans.label.tolist(),
        strict=True,
    ):
        rec = np.empty(_HEADER + la + lb, dtype)
        rec[:_HEADER] = (label, la, lb)
        rec[_HEADER : _HEADER + la] = tokens[a0 : a0 + la]
        rec[_HEADER + la :] = tokens[b0 : b0 + lb]
        out.append(rec.tobytes())
    return out


def decode_records(records: Sequence[bytes], dtype: np.dtype) -> tuple[np.ndarray, InstanceSpans]:
    """Records -> (flat token array, spans into it); the inverse of `encode_records`.

    The records are joined into one buffer and the spans point past each header, so decoding
    a batch is one `join` and a few vectorised operations.
    """
    sizes = np.fromiter(map(len, records), np.int64, len(records)) // dtype.itemsize
    starts = np.zeros(len(records), np.int64)
    np.cumsum(sizes[:-1], out=starts[1:])
    buffer = np.frombuffer(b"".join(records), dtype).astype(np.int32)
    label, a_len, b_len = (buffer[starts + k].astype(np.int64) for k in range(_HEADER))
    if ((a_len + b_len + _HEADER) != sizes).any():
        bad = int(np.nonzero((a_len + b_len + _HEADER) != sizes)[0][0])
        raise ValueError(
            f"corrupt instance record (batch position {bad}): header and size disagree"
        )
    a_start = starts + _HEADER
    return buffer, InstanceSpans(a_start, a_len, a_start + a_len, b_len, label.astype(np.int32))


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.array_record"


def read_metadata(prepared_dir: str) -> dict[str, Any]:
    path = os.path.join(prepared_dir, METADATA)
    if not os.path.isdir(prepared_dir):
        raise FileNotFoundError(f"data.prepared_dir: directory {prepared_dir!r} does not exist")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"data.prepared_dir: {path} is missing; the directory is not a finished "
            "`python -m bertjax.data.prepare` output"
        )
    with open(path, encoding="utf-8") as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


class PreparedInstances:
    """This host's instances of a prepared split: records `process_index::process_count`."""

    def __init__(
        self,
        prepared_dir: str,
        files: Sequence[str],
        dtype: np.dtype,
        *,
        seed_parts: tuple[Any, ...],
        process_index: int,
        process_count: int,
    ):
        from array_record.python.array_record_data_source import ArrayRecordDataSource

        paths = [os.path.join(prepared_dir, f) for f in files]
        for p in paths:
            if not os.path.exists(p):
                raise FileNotFoundError(
                    f"data.prepared_dir: shard {p} listed in metadata is missing"
                )
        self._source = ArrayRecordDataSource(paths)
        self._dtype = dtype
        self._keys = np.arange(process_index, len(self._source), process_count, dtype=np.int64)
        self._seed_parts = seed_parts
        self._order_epoch = -1
        self._order: np.ndarray = self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if epoch != self._order_epoch:
            rng = np.random.default_rng(seed_int("shuffle", *self._seed_parts, epoch))
            self._order = self._keys[rng.permutation(len(self._keys))]
            self._order_epoch = epoch
        return self._order

    def epoch_size(self, epoch: int) -> int:
        return len(self._keys)

    def fetch(self, epoch: int, start: int, stop: int) -> tuple[np.ndarray, InstanceSpans]:
        keys = self._epoch_order(epoch)[start:stop]
        return decode_records(self._source.__getitems__(keys.tolist()), self._dtype)

    def instances(self, needed: int) -> tuple[np.ndarray, InstanceSpans]:
        """Eval: the first `needed` records in file order, cycling if there are fewer."""
        if not len(self._keys):
            raise ValueError("the prepared eval split has no instances for this host")
        idx = np.resize(self._keys, needed)
        return decode_records(self._source.__getitems__(idx.tolist()), self._dtype)


@dataclass(frozen=True)
class PreparedData:
    """What a prepared directory gives this host: the pipeline wraps it in `PretrainingData`."""

    tokenizer: WordPieceTokenizer
    stats: CleaningStats
    train: PreparedInstances
    eval: PreparedInstances | None
    fingerprint: str  # identifies the prepared data in iterator states


def open_prepared(
    settings: DataSettings, *, seed: int, process_index: int, process_count: int
) -> PreparedData:
    """This host's view of `settings.prepared_dir` (`data.source = "prepared"`), after checking
    that the config agrees with what the directory was prepared with."""
    meta = read_metadata(settings.prepared_dir)
    for key in ("max_seq_length", "sentence_objective", "do_lower_case"):
        if meta[key] != getattr(settings, key):
            raise ValueError(
                f"data.{key}={getattr(settings, key)!r} but {settings.prepared_dir} was prepared "
                f"with {meta[key]!r}; prepare it again or change the config"
            )
    vocab_path = settings.vocab_file or os.path.join(settings.prepared_dir, VOCAB)
    tokenizer = WordPieceTokenizer.from_vocab_file(vocab_path, do_lower_case=settings.do_lower_case)
    if tokenizer.fingerprint() != meta["vocab_fingerprint"]:
        raise ValueError(
            f"data.vocab_file={vocab_path!r} is not the vocabulary {settings.prepared_dir} was "
            "prepared with (token ids would not match)"
        )
    dtype = np.dtype(meta["dtype"])
    seed_parts = (seed, process_index, process_count)
    train = PreparedInstances(
        settings.prepared_dir,
        meta["train_files"],
        dtype,
        seed_parts=seed_parts,
        process_index=process_index,
        process_count=process_count,
    )
    if len(train) == 0:
        raise ValueError(
            f"{settings.prepared_dir}: no training instances for host {process_index} of "
            f"{process_count} ({meta['num_train']} in total)"
        )
    eval_source = None
    if meta["eval_files"] and meta["num_eval"] >= process_count:
        eval_source = PreparedInstances(
            settings.prepared_dir,
            meta["eval_files"],
            dtype,
            seed_parts=seed_parts,
            process_index=process_index,
            process_count=process_count,
        )
    stats = CleaningStats(**meta.get("stats", {}))
    return PreparedData(
        tokenizer=tokenizer,
        stats=stats,
        train=train,
        eval=eval_source,
        fingerprint=json.dumps(
            {
                k: meta[k]
                for k in ("vocab_fingerprint", "corpus_fingerprint", "num_train", "train_files")
            },
            sort_keys=True,
        ),
    )
