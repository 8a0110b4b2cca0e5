"""Packed serving batches: the rows of concurrent requests laid back to back in token rows.

A padded batch (`bertjax.serve.buckets.BucketGrid`) pads every row to its length bucket and
the row count to a doubling batch bucket: SST-2 sentences (25 tokens on average with
[CLS]/[SEP]) in 32- and 64-token buckets spend ~1.4x their real tokens, and a batch of 9 rows
runs as 16. For classifiers and encoders, whose outputs are one vector per input, the server
can instead pack a batch's inputs, longest first, into as few token rows as hold them (the
packed fine-tuning batches of `bertjax.data.example_packing`, applied to requests):

    input_ids       [CLS] a a [SEP] [CLS] b [SEP] [PAD] ...
    segment_ids       1   1 1   1     2   2   2     0
    positions         0   1 2   3     0   1   2     0
    cls_index       [0, 4]          (flat index row * length + column of each input's [CLS])

Attention stays within a segment and positions restart at each [CLS], so each input's outputs
equal `model.apply` on that text alone (up to float rounding).

The grid of packed shapes is every (rows, length) with rows x length within the token budget,
both on ladders whose steps are at most a quarter: rows 1..8, 10, 12, 15, ...; row lengths in
multiples of the smallest bucket (16: 16, 32, ..., 128, 160, 192, 240, ...). Rounding a
packing up to a compiled shape then adds at most ~25% in each direction, where doubling
buckets add up to 2x. Rows are at least 128 tokens long when the budget allows, even for a
run fine-tuned at 64: positions restart in each input, so a row may hold more tokens than
one input may, and short inputs pack better into longer rows (attention over a row of 128
costs all-MiniLM-L6-v2 ~10% more per token than over 16). Each shape also fixes the number of
inputs a batch may hold (`max_examples`: the batch-size limit), padded with inputs that read
token 0 and are discarded. Every shape is compiled at start-up, so packing adds no
compilation on the request path.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

from bertjax.serve.buckets import BucketGrid

# Packed rows hold at least this many tokens (within the budget), whatever the longest input.
MIN_LONGEST_ROW = 128


def row_ladder(limit: int) -> list[int]:
    """Row counts 1, 2, ..., 8, 10, 12, 15, 18, ... (each step at most a quarter), then limit:
    a batch runs at most ~25% more rows than it fills, where doubling buckets waste up to 2x."""
    values = []
    value = 1
    while value < limit:
        values.append(value)
        value += max(1, value // 4)
    values.append(limit)
    return values


def length_ladder(step: int, longest: int) -> list[int]:
    """Row lengths step, 2*step, ... each step at most a quarter of the length (in multiples
    of `step`, at least one), then `longest`: 16, 32, ..., 128, 160, 192, 240, ... for 16."""
    values = []
    value = step
    while value < longest:
        values.append(value)
        value += max(step, value // 4 // step * step)
    values.append(longest)
    return values


@dataclasses.dataclass(frozen=True)
class PackPlan:
    """Where each input of a batch goes: `bucket` (rows, length) and, per input, its row and
    first column; `examples` is the input capacity of the compiled shape (>= n)."""

    bucket: tuple[int, int]
    row: np.ndarray  # int64 [n]
    start: np.ndarray  # int64 [n]
    examples: int

    @property
    def size(self) -> int:
        return int(self.bucket[0] * self.bucket[1])


def pack(lengths: Sequence[int], length: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, start) of each input when inputs are placed longest first into the first row of
    `length` tokens with room for them (first-fit decreasing; ties keep the queue order).

    Plain Python, not `bertjax.data.packing.first_fit`'s numpy scan: a batch has tens of
    inputs, where numpy's per-call overhead dominates, and this runs on the event loop."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    used: list[int] = []  # tokens taken in each row so far
    row = np.empty(len(lengths), np.int64)
    start = np.empty(len(lengths), np.int64)
    for i in order:
        n = lengths[i]
        r = next((r for r, taken in enumerate(used) if taken + n <= length), len(used))
        if r == len(used):
            used.append(0)
        row[i], start[i] = r, used[r]
        used[r] += n
    return row, start


@dataclasses.dataclass(frozen=True)
class PackedGrid:
    """(rows, length) shapes of packed batches of at most `max_examples` inputs, bounded by a
    token budget; the same interface as `BucketGrid` for the batcher (`select`, `is_full`).

    `lengths` are the row lengths; an input holds at most `max_input_length` tokens (the
    run's max_seq_length), which may be less than the longest row."""

    lengths: tuple[int, ...]
    max_input_length: int
    max_examples: int  # inputs per batch; also its most rows (a row holds at least one)
    max_batch_tokens: int

    @classmethod
    def build(
        cls,
        *,
        max_seq_length: int,
        max_batch_size: int,
        max_batch_tokens: int,
        min_length: int = 16,
    ) -> PackedGrid:
        """The packed grid for a model of `max_seq_length` positions and the batching limits
        (`max_batch_size` counts inputs; a batch has at most that many rows too). Row lengths
        step by `min_length` (at least; see `length_ladder`)."""
        BucketGrid.build(  # validates the limits, naming them
            max_seq_length=max_seq_length,
            max_batch_size=max_batch_size,
            max_batch_tokens=max_batch_tokens,
            min_length=min_length,
        )
        longest_row = max(max_seq_length, min(MIN_LONGEST_ROW, max_batch_tokens))
        step = min(min_length, longest_row)
        return cls(
            tuple(length_ladder(step, longest_row)), max_seq_length, max_batch_size,
            max_batch_tokens,
        )  # fmt: skip

    @functools.cached_property
    def _ladders(self) -> dict[int, list[int]]:
        # Computed once: `plan` reads them for every candidate batch, on the event loop.
        return {n: row_ladder(max(1, min(self.max_examples, self.max_batch_tokens // n)))
                for n in self.lengths}  # fmt: skip

    def rows_at(self, length: int) -> list[int]:
        """The row counts compiled at `length`."""
        return self._ladders[length]

    def shapes(self) -> list[tuple[int, int]]:
        """Every (rows, length) a plan can return, smallest length first."""
        return [(rows, length) for length in self.lengths for rows in self.rows_at(length)]

    def plan(self, lengths: Sequence[int]) -> PackPlan | None:
        """The cheapest shape (fewest token slots, then the shorter rows) that holds inputs of
        these lengths, and where each goes; None when no shape does."""
        if not lengths or len(lengths) > self.max_examples:
            return None
        total, longest = sum(lengths), max(lengths)
        if longest > self.max_input_length:
            return None
        best: PackPlan | None = None
        for length in self.lengths:
            # Rows at this length can beat the best plan only if the fewest rows the tokens
            # could fill (total / length, rounded up the ladder) cost fewer slots: skip the
            # packing otherwise. It runs on the event loop, once per candidate batch.
            least = -(-total // length)
            ladder = [r for r in self.rows_at(length) if r >= least]
            if length < longest or not ladder or (best and ladder[0] * length >= best.size):
                continue
            row, start = pack(lengths, length)
            needed = int(row.max()) + 1
            ladder = [r for r in ladder if r >= needed]
            if ladder and (best is None or ladder[0] * length < best.size):
                best = PackPlan((ladder[0], length), row, start, self.max_examples)
        return best

    def select(self, lengths: Sequence[int]) -> tuple[list[int], PackPlan]:
        """The queued inputs (by index, oldest first) of the next batch and its plan: the
        longest prefix of the queue that one shape holds. `lengths` is not empty.

        First-fit decreasing is not monotone in the prefix (one more input can need fewer
        rows), so the prefix shrinks one input at a time from the most the token budget
        allows rather than by bisection."""
        count, tokens = 0, 0
        for length in lengths[: self.max_examples]:
            if tokens + length > self.max_batch_tokens and count:
                break
            count, tokens = count + 1, tokens + length
        while count > 1 and self.plan(lengths[:count]) is None:
            count -= 1
        plan = self.plan(lengths[:count])
        if plan is None:
            raise ValueError(f"an input of {lengths[0]} tokens exceeds the largest bucket")
        return list(range(count)), plan

    def is_full(self, lengths: Sequence[int]) -> bool:
        """Whether the queued inputs already fill a batch: not even a [CLS] [SEP] input more
        would fit (no point waiting for more)."""
        if len(lengths) >= self.max_examples:
            return True
        return self.plan([*lengths, 2]) is None

    def fits_one(self, length: int) -> bool:
        """Whether an input of `length` tokens can be served at all."""
        return 1 <= length <= self.max_input_length

    def to_dict(self) -> dict:
        return {
            "packed": True,
            "lengths": list(self.lengths),
            "max_input_length": self.max_input_length,
            "max_examples": self.max_examples,
            "max_batch_tokens": self.max_batch_tokens,
            "shapes": [list(s) for s in self.shapes()],
        }
