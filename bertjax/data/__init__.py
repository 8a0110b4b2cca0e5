"""Pretraining data: text sources, cleaning, WordPiece, BERT instances, dynamic masking, pipeline.

Entry point: `build_pretraining_data(config.data, seed=..., local_batch_size=...)`.
"""

from bertjax.data.cleaning import CleaningStats
from bertjax.data.pipeline import PretrainingData, PretrainingIterator, build_pretraining_data
from bertjax.data.settings import DataSettings, default_data_config
from bertjax.data.sources import DataSourceError
from bertjax.data.tokenizer import VocabError, WordPieceTokenizer, train_wordpiece_vocab

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
