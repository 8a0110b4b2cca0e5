"""Featurisation of single texts and text pairs for BERT's sequence-level heads.

`[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]`, longest-first truncation exactly as
google-research/bert's `_truncate_seq_pair`, right padding with [PAD]. Used by training (GLUE
and the user's own files) and by inference (`bertjax.inference`), so that a served model sees
the very inputs it was trained on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

MODEL_KEYS = ("input_ids", "token_type_ids", "attention_mask")  # what the encoder reads


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    """Ids of BERT's special tokens in the vocabulary."""

    cls: int
    sep: int
    pad: int = 0


def truncate_pair_lengths(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
    """Lengths after longest-first truncation to `len_a + len_b <= budget`.

    google-research/bert's `_truncate_seq_pair` pops one token at a time from the end of the
    longer sequence (the second one on a tie); this is its closed form.
    """
    if len_a + len_b <= budget:
        return len_a, len_b
    if len_a <= len_b and 2 * len_a <= budget:
        return len_a, budget - len_a
    if len_b < len_a and 2 * len_b <= budget:
        return budget - len_b, len_b
    return (budget + 1) // 2, budget // 2  # both cut; ties pop from b, so a keeps the odd one


def encode_texts(
    encode: Callable[[list[str]], list[list[int]]],
    special: SpecialIds,
    texts: Sequence[str],
    text_pairs: Sequence[str] | None,
    max_seq_length: int,
    pad_to: int | None = None,
) -> dict[str, np.ndarray]:
    """Model inputs of `texts` (and `text_pairs`): input_ids, token_type_ids, attention_mask.

    Args:
      encode: texts -> WordPiece ids *without* special tokens (e.g. tokenizer.encode_batch).
      special: the [CLS]/[SEP]/[PAD] ids.
      texts, text_pairs: first and (for pair tasks) second texts, one per row.
      max_seq_length: tokens per row after truncation, specials included.
      pad_to: columns of the returned arrays (default max_seq_length); must hold every row.

    Returns int32 arrays [N, pad_to].
    """
    is_pair = text_pairs is not None
    if is_pair and len(text_pairs) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(text_pairs)} text pairs")
    min_length = 3 if is_pair else 2
    if max_seq_length < min_length + 1:
        raise ValueError(f"max_seq_length={max_seq_length} is too short for BERT inputs")
    ids_a = encode(list(texts))
    ids_b = encode(list(text_pairs)) if is_pair else None
    rows = []
    segments = []
    for i, a in enumerate(ids_a):
        if ids_b is None:
            a = a[: max_seq_length - 2]
            rows.append([special.cls, *a, special.sep])
            segments.append(len(rows[-1]))
        else:
            b = ids_b[i]
            la, lb = truncate_pair_lengths(len(a), len(b), max_seq_length - 3)
            rows.append([special.cls, *a[:la], special.sep, *b[:lb], special.sep])
            segments.append(la + 2)
    width = max_seq_length if pad_to is None else int(pad_to)
    longest = max((len(r) for r in rows), default=0)
    if longest > width:
        raise ValueError(f"pad_to={width} is shorter than the longest row ({longest} tokens)")
    n = len(rows)
    input_ids = np.full((n, width), special.pad, dtype=np.int32)
    token_type_ids = np.zeros((n, width), dtype=np.int32)
    attention_mask = np.zeros((n, width), dtype=np.int32)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = row
        token_type_ids[i, segments[i] : len(row)] = 1
        attention_mask[i, : len(row)] = 1
    return {
        "input_ids": input_ids,
        "token_type_ids": token_type_ids,
        "attention_mask": attention_mask,
    }


def featurize(
    examples: Sequence[Any],
    encode: Callable[[list[str]], list[list[int]]],
    special: SpecialIds,
    max_seq_length: int,
    regression: bool,
) -> dict[str, np.ndarray]:
    """Turns example records (`bertjax.data.records.Example`) into fixed-length model inputs.

    `[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]`, longest-first truncation, right padding with
    [PAD]. `encode` maps texts to WordPiece ids *without* special tokens.

    Returns numpy arrays: input_ids / token_type_ids / attention_mask [N, max_seq_length] int32,
    labels [N] (float32 for regression, int32 otherwise; 0 where unlabelled; multi-label:
    float32 [N, C] multi-hot), has_label [N] bool,
    index [N] int64.
    """
    is_pair = any(e.text_b is not None for e in examples)
    inputs = encode_texts(
        encode,
        special,
        [e.text_a for e in examples],
        [e.text_b or "" for e in examples] if is_pair else None,
        max_seq_length,
    )
    has_label = np.array([e.label is not None for e in examples], dtype=bool)
    label_dtype = np.float32 if regression else np.int32
    if any(isinstance(e.label, tuple) for e in examples):  # multi-label: multi-hot rows
        width = len(next(e.label for e in examples if e.label is not None))
        labels = np.array(
            [e.label if e.label is not None else (0.0,) * width for e in examples], np.float32
        ).reshape(len(examples), width)
    else:
        labels = np.array([0 if e.label is None else e.label for e in examples], label_dtype)
    return {
        **inputs,
        "labels": labels,
        "has_label": has_label,
        "index": np.array([e.index for e in examples], dtype=np.int64),
    }
