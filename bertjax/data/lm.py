"""Causal-LM data: documents -> GPT-2 byte-level BPE -> packed full-length rows, resumable.

The corpus comes from the same sources and cleaning as BERT's pipeline (`bertjax.data.sources`:
local files, TFDS, the embedded corpus). Each document's sentences are joined with spaces,
tokenized, and all documents are concatenated into one token stream with `<|endoftext|>` before
each document:

    <eot> doc_1 <eot> doc_2 <eot> doc_3 ...

The stream is cut into rows of `max_seq_length + 1` tokens that overlap by one (row r starts at
token r * T), so every token of the stream is a prediction target exactly once:
`input_ids = row[:-1]`, `targets = row[1:]`. No padding, no token wasted.

With `data.document_masking = True` a row also carries `segment_ids` (+1 at each `<eot>`, which
opens its document) and `positions` (restarting at 0 on each `<eot>`), so the model attends only
within a document; the targets are unchanged (the last token of a document still learns to predict
`<eot>`, the `<eot>` predicts the next document's first token from nothing but itself). With
False (GPT-2's own recipe) rows are plain causal windows over the stream.

Host sharding and resumption: the rows of the stream are shuffled each epoch by a permutation
seeded with (seed, epoch); global batch b is rows perm[b*GB:(b+1)*GB] and host h takes its slice
of them, so the global batches are the same whatever the number of hosts. The iterator's state is
{epoch, step}: restoring it gives the identical next batches. (With a TFDS source each host reads
only its shard of the examples, so it packs and shuffles its own rows.)

Online, the whole stream is held in memory as int32 (4 bytes per token: ~400 MB for 100M
tokens). For larger corpora, tokenize once offline with `python -m bertjax.data.lm_prepare`
(flat uint16 token files) and train with `data.source = "prepared"`: the files are memory-mapped
and each host reads only the rows it serves.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import ml_collections
import numpy as np

from bertjax.data import batching
from bertjax.data.bpe import ByteBPETokenizer
from bertjax.data.cleaning import CleaningStats, clean_documents, document_hash
from bertjax.data.sources import TEXT_FORMATS, UNICODE_ERRORS, read_text_files, tfds_documents

log = logging.getLogger(__name__)

LM_SOURCES = ("embedded", "text_files", "tfds", "prepared")
TOKENIZER_SUBDIR = "tokenizer"  # where a trained tokenizer is saved in the workdir
PREPARED_META_FILE = "meta.json"  # in a `bertjax.data.lm_prepare` output directory


@dataclasses.dataclass(frozen=True)
class LMDataSettings:
    """Validated `config.data` of the causal_lm task (BERT's key names where they overlap)."""

    source: str = "embedded"  # "embedded" | "text_files" | "tfds" | "prepared"
    text_files: str = ""  # path or glob, comma-separated allowed
    text_format: str = "paragraphs"  # "bert" (sentence per line) | "paragraphs"
    tfds_name: str = ""
    tfds_split: str = "train"
    tfds_data_dir: str = ""
    tfds_text_key: str = "text"
    prepared_dir: str = ""  # output of `python -m bertjax.data.lm_prepare` (source="prepared")
    vocab_file: str = ""  # GPT-2 vocab.json; empty (with merges_file): train a BPE vocabulary
    merges_file: str = ""  # GPT-2 merges.txt
    vocab_size: int = 8192  # size of a trained vocabulary
    max_seq_length: int = 128  # T: tokens per row
    document_masking: bool = False  # True: no attention across documents inside a row
    eval_fraction: float = 0.02  # documents held out for eval (chosen by a hash of their text)
    min_document_chars: int = 20
    dedup_documents: bool = True
    unicode_errors: str = "strict"  # "strict" | "replace"

    @classmethod
    def from_config(cls, data_config: ml_collections.ConfigDict | dict[str, Any]) -> LMDataSettings:
        """Validates `config.data`; an unknown key or bad value raises naming `data.<key>`."""
        values = dict(data_config.items())
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise KeyError(
                "unknown key(s) in config.data for task causal_lm: "
                + ", ".join("data." + k for k in unknown)
                + f"; known keys: {', '.join(sorted(fields))}"
            )
        kwargs = {}
        for name, value in values.items():
            typ = type(fields[name].default)
            if typ is bool:
                ok = isinstance(value, bool)
            elif typ in (int, float):
                ok = isinstance(value, int | typ) and not isinstance(value, bool)
            else:
                ok = isinstance(value, str)
            if not ok:
                raise TypeError(f"data.{name} must be a {typ.__name__}, got {value!r}")
            kwargs[name] = typ(value)
        settings = cls(**kwargs)
        settings.validate()
        return settings

    def validate(self) -> None:
        def check(name: str, ok: bool, requirement: str) -> None:
            if not ok:
                raise ValueError(f"data.{name} must be {requirement}, got {getattr(self, name)!r}")

        check("source", self.source in LM_SOURCES, f"one of {LM_SOURCES}")
        check("text_format", self.text_format in TEXT_FORMATS, f"one of {TEXT_FORMATS}")
        check("unicode_errors", self.unicode_errors in UNICODE_ERRORS, f"one of {UNICODE_ERRORS}")
        check("max_seq_length", self.max_seq_length >= 2, ">= 2")
        check("eval_fraction", 0.0 <= self.eval_fraction < 1.0, "in [0, 1)")
        check("vocab_size", self.vocab_size >= 257, ">= 257 (256 bytes + <|endoftext|>)")
        check("min_document_chars", self.min_document_chars >= 0, ">= 0")
        if bool(self.vocab_file) != bool(self.merges_file):
            raise ValueError(
                "data.vocab_file and data.merges_file go together: set both or neither"
            )
        if self.source == "text_files" and not self.text_files.strip():
            raise ValueError("data.source='text_files' needs data.text_files (a path or glob)")
        if self.source == "prepared" and not self.prepared_dir:
            raise ValueError("data.source='prepared' needs data.prepared_dir")
        if self.source == "tfds" and not (self.tfds_name and self.vocab_file):
            raise ValueError(
                "data.source='tfds' needs data.tfds_name and data.vocab_file/merges_file: each "
                "host reads only its shard, so no vocabulary can be trained at start-up"
            )


# -- documents and tokens -------------------------------------------------------------------------


def read_documents(
    settings: LMDataSettings, process_index: int = 0, process_count: int = 1
) -> tuple[list[str], CleaningStats, bool]:
    """(cleaned document texts, what cleaning dropped, whether they are only this host's shard)."""
    stats = CleaningStats()
    sharded = False
    if settings.source == "embedded":
        from bertjax.data.embedded_corpus import embedded_documents

        raw = [list(d) for d in embedded_documents()]
    elif settings.source == "text_files":
        raw = read_text_files(
            settings.text_files,
            text_format=settings.text_format,
            unicode_errors=settings.unicode_errors,
            stats=stats,
        )
    else:
        raw = tfds_documents(
            settings.tfds_name,
            split=settings.tfds_split,
            data_dir=settings.tfds_data_dir or None,
            text_key=settings.tfds_text_key,
            unicode_errors=settings.unicode_errors,
            process_index=process_index,
            process_count=process_count,
            stats=stats,
        )
        sharded = process_count > 1
    docs = clean_documents(
        raw,
        min_document_chars=settings.min_document_chars,
        dedup_documents=settings.dedup_documents,
        stats=stats,
    )
    return [" ".join(d) for d in docs], stats, sharded


def is_eval_document(text: str, eval_fraction: float) -> bool:
    """Held out for eval? Decided by a hash of the text: stable across seeds, hosts, orders."""
    return (document_hash([text]) % 1_000_000) < eval_fraction * 1_000_000


def load_or_train_tokenizer(
    settings: LMDataSettings, train_texts: Sequence[str], workdir: str | None, is_writer: bool
) -> ByteBPETokenizer:
    """GPT-2 files when configured; else the workdir's saved one; else trained on train_texts.

    A trained tokenizer is saved to WORKDIR/tokenizer/ (by the writer process) so that a resumed
    run, `bertjax.generate_cli` and Hugging Face export use the very same vocabulary.
    """
    if settings.vocab_file:
        return ByteBPETokenizer.from_files(settings.vocab_file, settings.merges_file)
    saved = os.path.join(workdir, TOKENIZER_SUBDIR) if workdir else None
    if saved and os.path.isfile(os.path.join(saved, "tokenizer.json")):
        tokenizer = ByteBPETokenizer.from_dir(saved)
        log.info("loaded the BPE tokenizer of this run from %s", saved)
        return tokenizer
    if not train_texts:
        raise ValueError("no training documents to train a BPE vocabulary on")
    tokenizer = ByteBPETokenizer.train(train_texts, vocab_size=settings.vocab_size)
    log.info("trained a byte-level BPE vocabulary of %d tokens", tokenizer.vocab_size)
    if saved and is_writer:
        tokenizer.save(saved)
    return tokenizer


def token_stream(token_docs: Sequence[np.ndarray], eot_id: int) -> np.ndarray:
    """One int32 stream: <eot> doc_1 <eot> doc_2 ... (an <eot> opens every document)."""
    if not token_docs:
        return np.empty(0, np.int32)
    lengths = np.array([len(d) + 1 for d in token_docs], np.int64)
    stream = np.empty(int(lengths.sum()), np.int32)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    stream[starts] = eot_id
    body = np.ones(len(stream), bool)
    body[starts] = False
    stream[body] = np.concatenate(token_docs)
    return stream


def num_rows(stream: np.ndarray, seq_len: int) -> int:
    """Rows of seq_len + 1 tokens (overlapping by one) that fit in the stream."""
    return max(0, (len(stream) - 1) // seq_len)


def make_batch(
    stream: np.ndarray, rows: np.ndarray, seq_len: int, eot_id: int, document_masking: bool
) -> dict[str, np.ndarray]:
    """The batch of the given row indices (vectorised: one gather, no per-token Python)."""
    # (A prepared corpus is a uint16 memory map: only these rows are read from disk.)
    window = stream[rows[:, None].astype(np.int64) * seq_len + np.arange(seq_len + 1)]
    window = window.astype(np.int32)
    inputs = window[:, :-1]
    batch = {
        "input_ids": np.ascontiguousarray(inputs),
        "targets": np.ascontiguousarray(window[:, 1:]),
    }
    if document_masking:
        opens = inputs == eot_id
        batch["segment_ids"] = (np.cumsum(opens, axis=1) + 1).astype(np.int32)
        index = np.arange(seq_len)
        last_open = np.maximum.accumulate(np.where(opens, index, 0), axis=1)
        batch["positions"] = (index - last_open).astype(np.int32)
    return batch


# -- iterators ------------------------------------------------------------------------------------


class PackedLMIterator:
    """Endless per-host batches of packed rows; `get_state()` / `set_state()` for checkpoints.

    The row order is `bertjax.data.batching.EpochOrder`'s (the fine-tuning tasks' too), without
    padding: a last incomplete batch waits for the next epoch's shuffle.
    shard_index / shard_count: this host's slice of every global batch (global_batch_size rows,
    local_batch_size = global_batch_size / shard_count of them here).
    """

    def __init__(
        self,
        stream: np.ndarray,
        *,
        seq_len: int,
        global_batch_size: int,
        shard_index: int,
        shard_count: int,
        seed: int,
        eot_id: int,
        document_masking: bool,
    ):
        if global_batch_size % shard_count:
            raise ValueError(
                f"global batch size {global_batch_size} is not divisible by {shard_count} hosts"
            )
        self.stream = stream
        self.seq_len = seq_len
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // shard_count
        self.shard_index = shard_index
        self.seed = seed
        self.eot_id = eot_id
        self.document_masking = document_masking
        self.rows = num_rows(stream, seq_len)
        self._order = batching.EpochOrder(
            self.rows, global_batch_size, seed, shard_index, shard_count, pad_last=False
        )
        self.steps_per_epoch = self._order.steps_per_epoch
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"the training corpus has {len(stream)} tokens = {self.rows} rows of "
                f"data.max_seq_length={seq_len}; one batch needs {global_batch_size} rows. "
                "Lower batch_size or data.max_seq_length, or add data."
            )

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rows = self._order.next_rows()  # never padding: pad_last=False
        return make_batch(self.stream, rows, self.seq_len, self.eot_id, self.document_masking)

    def get_state(self) -> dict[str, Any]:
        return self._order.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        missing = {"epoch", "step"} - set(state)
        if missing:
            raise KeyError(f"LM iterator state lacks {sorted(missing)}; got {sorted(state)}")
        epoch, step = int(state["epoch"]), int(state["step"])
        if not (epoch >= 0 and 0 <= step < self.steps_per_epoch):
            raise ValueError(
                f"LM iterator state {state} does not fit this data ({self.steps_per_epoch} "
                "steps per epoch): was the checkpoint made with another corpus or batch size?"
            )
        self._order.set_state(epoch, step)


def eval_batches(
    stream: np.ndarray,
    *,
    seq_len: int,
    global_batch_size: int,
    shard_index: int,
    shard_count: int,
    eot_id: int,
    document_masking: bool,
    max_batches: int = 0,
    exact_batches: bool = False,
) -> list[dict[str, np.ndarray]]:
    """This host's slice of every global eval batch over all eval rows (in order).

    The last global batch is padded with copies of row 0 marked `weights` 0, so every host yields
    the same number of batches; `max_batches` > 0 keeps only the first ones. `exact_batches`
    yields exactly `max_batches` (all-padding batches after the data), for hosts that hold
    different eval rows and so must agree on a count without talking.
    """
    rows = num_rows(stream, seq_len)
    if rows == 0:
        raise ValueError(
            f"the eval documents hold {len(stream)} tokens, less than one row of "
            f"data.max_seq_length={seq_len}; raise data.eval_fraction"
        )
    out = []
    for idx in batching.eval_rows(
        rows, global_batch_size, shard_index, shard_count,
        max_batches=max_batches, exact_batches=exact_batches,
    ):  # fmt: skip
        batch = make_batch(stream, np.maximum(idx, 0), seq_len, eot_id, document_masking)
        batch["weights"] = (idx >= 0).astype(np.float32)
        out.append(batch)
    return out


@dataclasses.dataclass
class LMData:
    """Everything `tasks/causal_lm.py` needs from the data side, on one host."""

    settings: LMDataSettings
    tokenizer: ByteBPETokenizer
    train: PackedLMIterator
    eval_stream: np.ndarray
    stats: CleaningStats
    eval_shard: tuple[int, int]  # (index, count) for eval_batches
    sharded: bool  # True: this host read only its own shard of the documents

    def eval_batches(self, max_batches: int = 0) -> list[dict[str, np.ndarray]]:
        """This host's eval batches (`weights` 0 marks padding rows)."""
        if self.sharded and max_batches <= 0:
            raise ValueError(
                "hosts that read their own TFDS shards need a fixed eval size: "
                "set config.eval_batches > 0"
            )
        return eval_batches(
            self.eval_stream,
            seq_len=self.settings.max_seq_length,
            global_batch_size=self.train.global_batch_size,
            shard_index=self.eval_shard[0],
            shard_count=self.eval_shard[1],
            eot_id=self.tokenizer.eot_id,
            document_masking=self.settings.document_masking,
            max_batches=max_batches,
        )


def build_lm_data(
    data_config: ml_collections.ConfigDict | dict[str, Any],
    *,
    seed: int,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    workdir: str | None = None,
) -> LMData:
    """Reads, cleans, tokenizes and packs the corpus (or maps a prepared one); this host's share."""
    settings = LMDataSettings.from_config(data_config)
    if settings.source == "prepared":
        train_stream, eval_stream, tokenizer = load_prepared(settings.prepared_dir)
        return _lm_data(
            settings,
            tokenizer,
            train_stream,
            eval_stream,
            CleaningStats(),
            False,
            seed,
            global_batch_size,
            process_index,
            process_count,
        )
    texts, stats, sharded = read_documents(settings, process_index, process_count)
    train_texts = [t for t in texts if not is_eval_document(t, settings.eval_fraction)]
    eval_texts = [t for t in texts if is_eval_document(t, settings.eval_fraction)]
    if settings.eval_fraction > 0 and not eval_texts:
        raise ValueError(
            f"data.eval_fraction={settings.eval_fraction} selected none of the {len(texts)} "
            "documents; raise it"
        )
    log.info(
        "causal_lm data: %d train / %d eval documents; cleaning: %s",
        len(train_texts),
        len(eval_texts),
        stats.summary(),
    )
    tokenizer = load_or_train_tokenizer(settings, train_texts, workdir, process_index == 0)
    train_stream = token_stream(tokenizer.encode_batch(train_texts), tokenizer.eot_id)
    eval_stream = token_stream(tokenizer.encode_batch(eval_texts), tokenizer.eot_id)
    return _lm_data(
        settings,
        tokenizer,
        train_stream,
        eval_stream,
        stats,
        sharded,
        seed,
        global_batch_size,
        process_index,
        process_count,
    )


def _lm_data(
    settings: LMDataSettings,
    tokenizer: ByteBPETokenizer,
    train_stream: np.ndarray,
    eval_stream: np.ndarray,
    stats: CleaningStats,
    sharded: bool,
    seed: int,
    global_batch_size: int,
    process_index: int,
    process_count: int,
) -> LMData:
    log.info("causal_lm data: %d train / %d eval tokens", len(train_stream), len(eval_stream))
    # A host that read only its own shard shuffles and serves only its own rows.
    shard = (0, 1) if sharded else (process_index, process_count)
    local = global_batch_size // process_count
    train = PackedLMIterator(
        train_stream,
        seq_len=settings.max_seq_length,
        global_batch_size=local if sharded else global_batch_size,
        shard_index=shard[0],
        shard_count=shard[1],
        seed=seed + (process_index if sharded else 0),
        eot_id=tokenizer.eot_id,
        document_masking=settings.document_masking,
    )
    return LMData(settings, tokenizer, train, eval_stream, stats, shard, sharded)


def load_prepared(directory: str) -> tuple[np.ndarray, np.ndarray, ByteBPETokenizer]:
    """Train and eval tokens (read-only memory maps) and the tokenizer of a prepared corpus."""
    meta_path = os.path.join(directory, PREPARED_META_FILE)
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(
            f"data.prepared_dir={directory!r} has no {PREPARED_META_FILE}: "
            "run `python -m bertjax.data.lm_prepare` first"
        )
    with open(meta_path) as f:
        meta = json.load(f)
    streams = []
    for split in ("train", "eval"):
        path = os.path.join(directory, f"{split}.bin")
        expected = meta["tokens"][split] * np.dtype(meta["dtype"]).itemsize
        if not os.path.isfile(path) or os.path.getsize(path) != expected:
            raise ValueError(
                f"{path}: missing or not the {expected} bytes that {PREPARED_META_FILE} "
                "records (an interrupted lm_prepare?)"
            )
        streams.append(
            np.memmap(path, dtype=meta["dtype"], mode="r") if expected else np.empty(0, np.int32)
        )
    tokenizer = ByteBPETokenizer.from_dir(os.path.join(directory, "tokenizer"))
    return streams[0], streams[1], tokenizer
