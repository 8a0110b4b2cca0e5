"""The (batch, length) bucket grid and the batcher's packing under a token budget."""

import asyncio

import numpy as np
import pytest

from bertjax.serve.backend import Row
from bertjax.serve.batcher import Batcher
from bertjax.serve.buckets import BucketGrid


def test_grid_lengths_and_batches_double_up_to_the_limits():
    grid = BucketGrid.build(max_seq_length=100, max_batch_size=12, max_batch_tokens=400)
    assert grid.lengths == (16, 32, 64, 100)
    assert grid.batch_sizes == (1, 2, 4, 8, 12)
    assert grid.bucket_for(3, 17) == (4, 32)
    assert grid.bucket_for(1, 100) == (1, 100)  # one row always fits, whatever its length
    assert not grid.fits(5, 100)  # 5 x 100 > 400 tokens
    assert not grid.fits(13, 5)  # more rows than max_batch_size
    assert not grid.fits(1, 101)


def test_every_batch_that_fits_has_a_compiled_shape():
    grid = BucketGrid.build(max_seq_length=128, max_batch_size=32, max_batch_tokens=1000)
    shapes = set(grid.shapes())
    for rows in range(1, 40):
        for longest in range(1, 140):
            if grid.fits(rows, longest):
                assert grid.bucket_for(rows, longest) in shapes, (rows, longest)
    # And no shape is compiled that no batch can reach.
    reached = {
        grid.bucket_for(r, n) for r in range(1, 40) for n in range(1, 140) if grid.fits(r, n)
    }
    assert reached == shapes


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(max_seq_length=0, max_batch_size=1, max_batch_tokens=8), "max_seq_length"),
        (dict(max_seq_length=64, max_batch_size=4, max_batch_tokens=32), "max_batch_tokens"),
    ],
)
def test_grid_rejects_bad_limits_naming_them(kwargs, key):
    with pytest.raises(ValueError, match=key):
        BucketGrid.build(**kwargs)


def _row(n: int) -> Row:
    return Row(np.arange(n, dtype=np.int32), np.zeros(n, np.int32))


def test_batcher_groups_queued_rows_by_the_oldest_rows_length_bucket():
    grid = BucketGrid.build(max_seq_length=64, max_batch_size=8, max_batch_tokens=128)
    batches = []

    def run(rows, bucket):
        batches.append(([len(r) for r in rows], bucket))
        return [{"n": len(r)} for r in rows]

    async def main():
        batcher = Batcher(run, grid)
        batcher.start()
        # Submitted before the collector runs: they queue together.
        futures = batcher.submit([_row(n) for n in (5, 10, 20, 30, 60, 3, 12, 40)])
        dropped = batcher.submit([_row(7)])
        dropped[0].cancel()  # its request went away: never run
        results = await asyncio.gather(*futures)
        await batcher.stop()
        return results

    results = asyncio.run(main())
    assert [r.outputs["n"] for r in results] == [5, 10, 20, 30, 60, 3, 12, 40]
    # The oldest row (5) sets the length bucket (16): the short rows go with it, the longer
    # ones wait for their own batch, oldest first: (20, 30) at 32, then 60 with 40 at 64.
    assert batches == [([5, 10, 3, 12], (4, 16)), ([20, 30], (2, 32)), ([60, 40], (2, 64))]
    assert all(r.queue_s >= 0 and r.inference_s >= 0 for r in results)


def test_batcher_passes_a_batch_error_to_its_requests_and_keeps_going():
    grid = BucketGrid.build(max_seq_length=32, max_batch_size=4, max_batch_tokens=128)
    calls = []

    def run(rows, bucket):
        calls.append(len(rows))
        if len(calls) == 1:
            raise RuntimeError("device error")
        return [{} for _ in rows]

    async def main():
        batcher = Batcher(run, grid)
        batcher.start()
        first = batcher.submit([_row(4)])
        with pytest.raises(RuntimeError, match="device error"):
            await first[0]
        second = await asyncio.gather(*batcher.submit([_row(4)]))
        await batcher.stop()
        return second

    assert len(asyncio.run(main())) == 1
