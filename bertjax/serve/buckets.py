"""The (batch, length) bucket grid: every shape the server may run, all compiled at start-up.

A batch of rows runs at the smallest bucket that holds it: the smallest length bucket at least
as long as its longest row and the smallest batch bucket at least its number of rows. Length
buckets double from `min_length` up to the run's `max_seq_length` (which is always one); batch
buckets double from 1 up to `max_batch_size` (always one). A (batch, length) pair is in the grid
when it fits the token budget (`batch * length <= max_batch_tokens`), and the batcher never
forms a batch outside it, so no request waits for a compilation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence


def _doubling(start: int, stop: int) -> list[int]:
    """start, 2*start, ... below stop, then stop itself."""
    values = []
    value = start
    while value < stop:
        values.append(value)
        value *= 2
    values.append(stop)
    return values


@dataclasses.dataclass(frozen=True)
class BucketGrid:
    """Batch sizes x sequence lengths the server compiles, bounded by a token budget."""

    batch_sizes: tuple[int, ...]
    lengths: tuple[int, ...]
    max_batch_tokens: int

    @classmethod
    def build(
        cls,
        *,
        max_seq_length: int,
        max_batch_size: int,
        max_batch_tokens: int,
        min_length: int = 16,
    ) -> BucketGrid:
        """The grid for a model of `max_seq_length` positions and the batching limits."""
        for name, value in (
            ("max_seq_length", max_seq_length),
            ("max_batch_size", max_batch_size),
            ("max_batch_tokens", max_batch_tokens),
            ("min_length", min_length),
        ):
            if value < 1:
                raise ValueError(f"{name}={value} must be >= 1")
        if max_batch_tokens < max_seq_length:
            raise ValueError(
                f"max_batch_tokens={max_batch_tokens} is below max_seq_length={max_seq_length}: "
                "a single text of the longest length would never fit a batch"
            )
        return cls(
            batch_sizes=tuple(_doubling(1, max_batch_size)),
            lengths=tuple(_doubling(min(min_length, max_seq_length), max_seq_length)),
            max_batch_tokens=max_batch_tokens,
        )

    @property
    def max_length(self) -> int:
        return self.lengths[-1]

    @property
    def max_batch_size(self) -> int:
        return self.batch_sizes[-1]

    def length_bucket(self, length: int) -> int:
        """The smallest length bucket >= length (ValueError beyond the largest)."""
        for bucket in self.lengths:
            if length <= bucket:
                return bucket
        raise ValueError(f"length {length} exceeds the largest bucket {self.max_length}")

    def batch_bucket(self, rows: int) -> int:
        """The smallest batch bucket >= rows (ValueError beyond the largest)."""
        for bucket in self.batch_sizes:
            if rows <= bucket:
                return bucket
        raise ValueError(f"{rows} rows exceed the largest batch bucket {self.max_batch_size}")

    def fits(self, rows: int, longest: int) -> bool:
        """Whether `rows` rows with the longest of `longest` tokens form a batch of the grid.

        The budget counts the rows actually sent (rows x length bucket); the batch bucket may
        round the rows up, and that padded shape is compiled as long as one real row fits it.
        """
        if rows > self.max_batch_size or longest > self.max_length:
            return False
        return rows == 1 or rows * self.length_bucket(longest) <= self.max_batch_tokens

    def bucket_for(self, rows: int, longest: int) -> tuple[int, int]:
        """(batch bucket, length bucket) of a batch that `fits`."""
        if not self.fits(rows, longest):
            raise ValueError(f"a batch of {rows} rows x {longest} tokens is outside the grid")
        return self.batch_bucket(rows), self.length_bucket(longest)

    def shapes(self) -> list[tuple[int, int]]:
        """Every (batch, length) bucket `bucket_for` can return, smallest first."""
        shapes = []
        for length in self.lengths:
            max_rows = max(1, self.max_batch_tokens // length)
            for batch in self.batch_sizes:
                # The bucket of the largest row count that fits this length.
                if batch <= self.batch_bucket(min(max_rows, self.max_batch_size)):
                    shapes.append((batch, length))
        return shapes

    def select(self, lengths: Sequence[int]) -> tuple[list[int], tuple[int, int]]:
        """The queued rows (by index, oldest first) of the next batch and its bucket: the
        oldest row, plus the next rows no longer than its length bucket while they fit.

        Rows longer than the oldest row's bucket wait for a batch of their own (they are soon
        the oldest), so a batch is padded to at most one bucket above its rows: with first-in
        first-out batches one long row would pad every short row of its batch to its length.
        `lengths` is not empty.
        """
        bucket = self.length_bucket(lengths[0])
        chosen: list[int] = []
        for i, length in enumerate(lengths):
            if length <= bucket and self.fits(len(chosen) + 1, bucket):
                chosen.append(i)
        return chosen, self.bucket_for(len(chosen), max(lengths[i] for i in chosen))

    def is_full(self, lengths: Sequence[int]) -> bool:
        """Whether the queued rows already fill the next batch (no point waiting for more)."""
        bucket = self.length_bucket(lengths[0])
        rows = sum(1 for length in lengths if length <= bucket)
        return rows >= self.max_batch_size or not self.fits(rows + 1, bucket)

    def fits_one(self, length: int) -> bool:
        """Whether a row of `length` tokens can be served at all."""
        return self.fits(1, length)

    def to_dict(self) -> dict:
        return {
            "packed": False,
            "batch_sizes": list(self.batch_sizes),
            "lengths": list(self.lengths),
            "max_batch_tokens": self.max_batch_tokens,
            "shapes": [list(s) for s in self.shapes()],
        }
