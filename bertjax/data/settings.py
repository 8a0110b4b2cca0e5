"""`config.data`: the keys, their defaults, and validation with errors that name the key."""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from bertjax.data.instances import OBJECTIVES
from bertjax.data.sources import TEXT_FORMATS, UNICODE_ERRORS

SOURCES = ("embedded", "text_files", "tfds", "prepared")


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """Validated `config.data` (google-research/bert flag names where one exists)."""

    source: str = "embedded"  # "embedded" | "text_files" | "tfds" | "prepared"
    text_files: str = ""  # path or glob, comma-separated allowed
    text_format: str = "bert"  # "bert" (sentence per line) | "paragraphs"
    tfds_name: str = ""  # e.g. "wikipedia/20230601.en"
    tfds_split: str = "train"
    tfds_data_dir: str = ""  # empty: TFDS's default data dir
    tfds_text_key: str = "text"  # the feature holding a document's text
    prepared_dir: str = ""  # output of `python -m bertjax.data.prepare` (source="prepared")
    vocab_file: str = ""  # empty: train a WordPiece vocabulary from the corpus
    vocab_size: int = 30522  # size of a trained vocabulary (BERT's English vocabularies: 30522)
    do_lower_case: bool = True
    max_seq_length: int = 128
    max_predictions_per_seq: int = 20
    masked_lm_prob: float = 0.15
    short_seq_prob: float = 0.1
    do_whole_word_mask: bool = False
    sentence_objective: str = "nsp"  # "nsp" | "sop" | "none"
    dupe_factor: int = 5  # offline `prepare` only: instance passes written per document
    eval_fraction: float = 0.02  # documents held out for eval
    min_document_chars: int = 20
    dedup_documents: bool = True
    unicode_errors: str = "strict"  # "strict" | "replace"
    # Sequence packing (bertjax/data/packing.py): several instances per training row, so that
    # padding is not paid for; rows then carry segment_ids, positions, cls_positions and
    # [B, K] NSP labels/weights. Eval batches stay unpacked.
    pack_sequences: bool = False
    max_instances_per_row: int = 4  # K: instances a packed row may hold

    @classmethod
    def from_config(cls, data_config: ml_collections.ConfigDict | dict[str, Any]) -> DataSettings:
        """Validates `config.data`; unknown, missing or bad values raise an error naming the key.

        Keys added after the first config files (`tfds_data_dir`, `tfds_text_key`,
        `prepared_dir`, `pack_sequences`, `max_instances_per_row`) may be absent and take their
        defaults.
        """
        values = dict(data_config.items()) if data_config is not None else {}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise KeyError(
                f"unknown key(s) in config.data: {', '.join('data.' + k for k in unknown)}; "
                f"known keys: {', '.join(sorted(known))}"
            )
        optional = {
            "tfds_data_dir",
            "tfds_text_key",
            "prepared_dir",
            "pack_sequences",
            "max_instances_per_row",
        }
        missing = sorted(known - set(values) - optional)
        if missing:
            raise KeyError(f"config.data lacks key(s): {', '.join('data.' + k for k in missing)}")
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in values:
                continue
            kwargs[f.name] = _coerce(f.name, values[f.name], type(f.default))
        settings = cls(**kwargs)
        settings.validate()
        return settings

    def _check(self, name: str, ok: bool, requirement: str) -> None:
        if not ok:
            raise ValueError(f"data.{name} must be {requirement}, got {getattr(self, name)!r}")

    def validate(self) -> None:
        _choice("source", self.source, SOURCES)
        _choice("text_format", self.text_format, TEXT_FORMATS)
        _choice("sentence_objective", self.sentence_objective, OBJECTIVES)
        _choice("unicode_errors", self.unicode_errors, UNICODE_ERRORS)
        min_len = 5 if self.sentence_objective != "none" else 4
        self._check("max_seq_length", self.max_seq_length >= min_len, f">= {min_len}")
        self._check(
            "max_predictions_per_seq",
            1 <= self.max_predictions_per_seq <= self.max_seq_length,
            f"in [1, data.max_seq_length={self.max_seq_length}]",
        )
        self._check("masked_lm_prob", 0.0 < self.masked_lm_prob < 1.0, "in (0, 1)")
        self._check("short_seq_prob", 0.0 <= self.short_seq_prob <= 1.0, "in [0, 1]")
        self._check("eval_fraction", 0.0 <= self.eval_fraction < 1.0, "in [0, 1)")
        self._check("dupe_factor", self.dupe_factor >= 1, ">= 1")
        self._check("min_document_chars", self.min_document_chars >= 0, ">= 0")
        self._check("vocab_size", self.vocab_size >= 16, ">= 16")
        self._check("max_instances_per_row", self.max_instances_per_row >= 1, ">= 1")
        if self.source == "text_files" and not self.text_files.strip():
            raise ValueError("data.source='text_files' needs data.text_files (a path or glob)")
        if self.source == "tfds" and not self.tfds_name:
            raise ValueError(
                "data.source='tfds' needs data.tfds_name, e.g. 'wikipedia/20230601.en'"
            )
        if self.source == "tfds" and not self.vocab_file:
            raise ValueError(
                "data.source='tfds' needs data.vocab_file: each host only reads its shard, so a "
                "vocabulary cannot be trained at start-up; train one with "
                "`python -m bertjax.data.train_vocab`"
            )
        if self.source == "prepared" and not self.prepared_dir:
            raise ValueError("data.source='prepared' needs data.prepared_dir")


def default_data_config() -> ml_collections.ConfigDict:
    """A `config.data` with every key at its default, for config files to start from."""
    return ml_collections.ConfigDict(dataclasses.asdict(DataSettings()))


def _coerce(name: str, value: Any, typ: type) -> Any:
    if typ is bool:
        if not isinstance(value, bool):
            raise TypeError(f"data.{name} must be a bool, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"data.{name} must be an int, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"data.{name} must be a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise TypeError(f"data.{name} must be a string, got {value!r}")
    return value


def _choice(name: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ValueError(f"data.{name} must be one of {options}, got {value!r}")
