"""Sequence packing for BERT pretraining: several short instances in one row, so that padding
is not paid for.

A packed row holds up to `max_instances_per_row` whole instances back to back, each laid out
as in an unpacked row (`[CLS] A [SEP] B [SEP]`), then padding:

    input_ids      [CLS] a a [SEP] b [SEP] [CLS] a [SEP] b b [SEP] [PAD] ...
    segment_ids      1   1 1   1   1   1     2   2   2   2 2   2     0
    positions        0   1 2   3   4   5     0   1   2   3 4   5     0
    cls_positions  [0, 6, 0, 0]        next_sentence_weights [1, 1, 0, 0]

The model attends only within equal segment ids and restarts positions per instance, so each
instance gets the outputs it would get alone (tests/test_packing.py checks this); the NSP head
reads every instance's [CLS] (`cls_positions`, labels and weights [B, K]). Masking runs on the
packed rows as on unpacked ones: the budget is `masked_lm_prob` of the row's real tokens, capped
at `max_predictions_per_seq` per row.

Each batch looks at a window of `batch_size * max_instances_per_row` instances: those a
previous batch had no room for ("deferred", oldest first), then the next ones in the shuffled
order. They are placed first-fit (each into the first row with room and a free slot); those
that fit nowhere are deferred to the next batch, where they come first. Nothing is dropped, an
instance waits at most a few batches, and the iterator's state is `(epoch, index)` plus the
positions of the deferred instances, so a restored run packs the identical next batch.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bertjax.data.instances import AssembledBatch, InstanceSpans, assemble_batch


def instance_lengths(spans: InstanceSpans) -> np.ndarray:
    """Tokens of each instance in a row, special tokens included (int64[n])."""
    return spans.a_len + spans.b_len + np.where(spans.b_len > 0, 3, 2)


@dataclasses.dataclass(frozen=True)
class Placement:
    """The placed instances (`index` into the window, ascending): row, offset and slot."""

    index: np.ndarray  # int64[m]
    row: np.ndarray  # int64[m]
    offset: np.ndarray  # int64[m]
    slot: np.ndarray  # int64[m]

    @property
    def count(self) -> int:
        return len(self.index)


def first_fit(
    lengths: np.ndarray, *, num_rows: int, max_seq_length: int, max_instances_per_row: int
) -> Placement:
    """First-fit placement of a window of instances, in order, into `num_rows` rows.

    An instance that fits in no row (too little room left, or all slots taken) is skipped, to
    be deferred by the caller; the scan stops early once every row is full.
    """
    if max_instances_per_row < 1:
        raise ValueError(f"data.max_instances_per_row must be >= 1, got {max_instances_per_row}")
    used = np.zeros(num_rows, np.int64)
    count = np.zeros(num_rows, np.int64)
    placed: list[tuple[int, int, int, int]] = []
    shortest = int(lengths.min()) if len(lengths) else 0
    for i, length in enumerate(lengths.tolist()):
        if length > max_seq_length:
            raise ValueError(f"an instance of {length} tokens > max_seq_length {max_seq_length}")
        fits = np.flatnonzero((used + length <= max_seq_length) & (count < max_instances_per_row))
        if len(fits):
            r = int(fits[0])
            placed.append((i, r, int(used[r]), int(count[r])))
            used[r] += length
            count[r] += 1
            if not ((used + shortest <= max_seq_length) & (count < max_instances_per_row)).any():
                break  # no row can take even the shortest instance of the window
    table = np.array(placed, np.int64).reshape(-1, 4)  # (index, row, offset, slot) per placed
    return Placement(table[:, 0], table[:, 1], table[:, 2], table[:, 3])


@dataclasses.dataclass(frozen=True)
class PackedBatch:
    """Packed rows before masking (what `mask_batch` needs) plus the packing keys."""

    assembled: AssembledBatch  # next_sentence_labels is [B, K] here
    segment_ids: np.ndarray  # int32[B, T]
    positions: np.ndarray  # int32[B, T]
    cls_positions: np.ndarray  # int32[B, K]
    next_sentence_weights: np.ndarray  # float32[B, K]

    def extra_keys(self) -> dict[str, np.ndarray]:
        return {
            "segment_ids": self.segment_ids,
            "positions": self.positions,
            "cls_positions": self.cls_positions,
            "next_sentence_weights": self.next_sentence_weights,
        }


def assemble_packed_batch(
    tokens: np.ndarray,
    spans: InstanceSpans,
    placement: Placement,
    *,
    num_rows: int,
    max_seq_length: int,
    max_instances_per_row: int,
    cls_id: int,
    sep_id: int,
    pad_id: int,
) -> PackedBatch:
    """Rows holding the placed instances of the window `spans`, vectorised.

    Each instance is first assembled alone (`assemble_batch`), then its tokens are copied to
    their place in the packed row with one fancy-indexed assignment per array.
    """
    t, k = max_seq_length, max_instances_per_row
    alone = assemble_batch(
        tokens,
        spans.take(placement.index),
        max_seq_length=t,
        cls_id=cls_id,
        sep_id=sep_id,
        pad_id=pad_id,
    )
    pos = np.arange(t)[None, :]
    real = pos < alone.lengths[:, None]  # [n, T]: the instance's own tokens
    inst, col = np.nonzero(real)
    dest_row = placement.row[inst]
    dest_col = placement.offset[inst] + col

    def packed(values: np.ndarray, fill, dtype) -> np.ndarray:
        out = np.full((num_rows, t), fill, dtype)
        out[dest_row, dest_col] = values[inst, col]
        return out

    input_ids = packed(alone.input_ids, pad_id, np.int32)
    token_type_ids = packed(alone.token_type_ids, 0, np.int32)
    candidates = packed(alone.candidates, False, bool)
    segment_ids = np.zeros((num_rows, t), np.int32)
    segment_ids[dest_row, dest_col] = placement.slot[inst] + 1
    positions = np.zeros((num_rows, t), np.int32)
    positions[dest_row, dest_col] = col
    lengths = np.bincount(placement.row, weights=alone.lengths, minlength=num_rows).astype(np.int64)
    attention_mask = (segment_ids > 0).astype(np.int32)
    cls_positions = np.zeros((num_rows, k), np.int32)
    cls_positions[placement.row, placement.slot] = placement.offset
    labels = np.zeros((num_rows, k), np.int32)
    labels[placement.row, placement.slot] = alone.next_sentence_labels
    weights = np.zeros((num_rows, k), np.float32)
    weights[placement.row, placement.slot] = 1.0
    assembled = AssembledBatch(
        input_ids, token_type_ids, attention_mask, candidates, lengths, labels
    )
    return PackedBatch(assembled, segment_ids, positions, cls_positions, weights)
