"""Pretraining data: text sources, cleaning, WordPiece, BERT instances, dynamic masking, pipeline.

Entry point: `build_pretraining_data(config.data, seed=..., local_batch_size=...)`.

The names below are imported lazily (PEP 562), so that `from bertjax.data import glue` does not
pay for grain and the pretraining pipeline.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "CleaningStats": "bertjax.data.cleaning",
    "DataSettings": "bertjax.data.settings",
    "DataSourceError": "bertjax.data.sources",
    "PretrainingData": "bertjax.data.pipeline",
    "PretrainingIterator": "bertjax.data.pipeline",
    "VocabError": "bertjax.data.tokenizer",
    "WordPieceTokenizer": "bertjax.data.tokenizer",
    "build_pretraining_data": "bertjax.data.pipeline",
    "default_data_config": "bertjax.data.settings",
    "train_wordpiece_vocab": "bertjax.data.tokenizer",
}

__all__ = [
    "CleaningStats",
    "DataSettings",
    "DataSourceError",
    "PretrainingData",
    "PretrainingIterator",
    "VocabError",
    "WordPieceTokenizer",
    "build_pretraining_data",
    "default_data_config",
    "train_wordpiece_vocab",
]

if TYPE_CHECKING:
    from bertjax.data.cleaning import CleaningStats
    from bertjax.data.pipeline import PretrainingData, PretrainingIterator, build_pretraining_data
    from bertjax.data.settings import DataSettings, default_data_config
    from bertjax.data.sources import DataSourceError
    from bertjax.data.tokenizer import VocabError, WordPieceTokenizer, train_wordpiece_vocab


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bertjax.data' has no attribute {name!r}")
