"""Packed serving batches: the shapes, the cheapest plan, the batcher's selection, and a
packed input's outputs equal to the model on that text alone."""

import asyncio

import numpy as np
import pytest
from serve_util import model_alone, random_text, tiny_backend

from bertjax.data.example_packing import first_fit_decreasing
from bertjax.serve.backend import Row
from bertjax.serve.batcher import Batcher
from bertjax.serve.row_packing import PackedGrid, PackPlan, length_ladder, pack, row_ladder


def test_row_ladder_is_fine_then_steps_by_at_most_a_quarter():
    assert row_ladder(16) == [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 16]
    assert row_ladder(1) == [1]
    ladder = row_ladder(200)
    assert ladder[-1] == 200 and ladder == sorted(set(ladder))
    assert all(b <= max(a + 1, a * 1.25) for a, b in zip(ladder, ladder[1:], strict=False))


def test_length_ladder_steps_by_multiples_of_the_step_and_at_most_a_quarter():
    assert length_ladder(16, 128) == [16, 32, 48, 64, 80, 96, 112, 128]
    ladder = length_ladder(16, 512)
    assert ladder[7:] == [128, 160, 192, 240, 288, 352, 432, 512]
    assert all(n % 16 == 0 for n in ladder)
    assert all(b - a <= max(16, a / 4) for a, b in zip(ladder, ladder[1:], strict=False))
    assert length_ladder(16, 100)[-2:] == [96, 100]  # ends at the longest row exactly
    assert length_ladder(16, 16) == [16]


def test_rows_are_at_least_128_tokens_long_within_the_budget():
    grid = PackedGrid.build(max_seq_length=64, max_batch_size=16, max_batch_tokens=1024)
    assert grid.lengths == (16, 32, 48, 64, 80, 96, 112, 128) and grid.max_input_length == 64
    assert grid.plan([40, 40, 40]).bucket == (1, 128)  # three inputs of 40 share a row
    assert grid.plan([65]) is None and not grid.fits_one(65) and grid.fits_one(64)
    small = PackedGrid.build(max_seq_length=32, max_batch_size=4, max_batch_tokens=64)
    assert small.lengths[-1] == 64  # the budget caps the rows
    long = PackedGrid.build(max_seq_length=512, max_batch_size=32, max_batch_tokens=4096)
    assert long.lengths[-1] == 512 and long.rows_at(512) == [1, 2, 3, 4, 5, 6, 7, 8]


def test_pack_places_inputs_as_first_fit_decreasing_does():
    """The server's pure-Python packing gives the rows of the fine-tuning packer's."""
    rng = np.random.default_rng(1)
    for _ in range(500):
        lengths = rng.integers(1, 65, size=rng.integers(1, 40))
        row, start = pack([int(n) for n in lengths], 64)
        np.testing.assert_array_equal(row, first_fit_decreasing(lengths, 64))
        _check_layout(lengths, PackPlan((int(row.max()) + 1, 64), row, start, len(lengths)))


def _check_layout(lengths, plan):
    rows, length = plan.bucket
    used = np.zeros((rows, length), bool)
    for n, r, start in zip(lengths, plan.row, plan.start, strict=True):
        assert 0 <= r < rows and 0 <= start and start + n <= length
        assert not used[r, start : start + n].any(), "two inputs share a token slot"
        used[r, start : start + n] = True


def test_every_plan_is_a_compiled_shape_the_cheapest_one_and_without_overlap():
    grid = PackedGrid.build(max_seq_length=64, max_batch_size=16, max_batch_tokens=512)
    shapes = set(grid.shapes())
    rng = np.random.default_rng(0)
    for _ in range(300):
        lengths = [int(n) for n in rng.integers(2, 65, size=rng.integers(1, 17))]
        plan = grid.plan(lengths)
        if plan is None:  # only when even the largest rows cannot hold them
            assert all(pack(lengths, n)[0].max() + 1 > grid.rows_at(n)[-1] for n in grid.lengths
                       if n >= max(lengths))  # fmt: skip
            continue
        assert plan.bucket in shapes and plan.examples == 16
        _check_layout(lengths, plan)
        for rows, length in shapes:  # no smaller shape holds them
            if rows * length < plan.size and length >= max(lengths):
                assert pack(lengths, length)[0].max() + 1 > rows, (lengths, rows, length)


def test_plan_refuses_what_no_shape_holds():
    grid = PackedGrid.build(max_seq_length=32, max_batch_size=4, max_batch_tokens=64)
    assert grid.shapes() == [(1, 16), (2, 16), (3, 16), (4, 16), (1, 32), (2, 32), (1, 48),
                             (1, 64)]  # fmt: skip
    assert grid.plan([5] * 5) is None  # more inputs than a batch holds
    assert grid.plan([33]) is None  # longer than an input may be (a row of 64 is not enough)
    assert grid.plan([30, 30, 30]) is None  # 3 rows of 32 exceed 64 tokens
    assert grid.plan([30, 30]).bucket == (2, 32)  # ties with (1, 64): the shorter rows
    assert grid.plan([10, 5, 15]).bucket == (2, 16)  # 10 + 5 share a row of 16
    assert grid.plan([20, 20]).bucket == (1, 48)  # one row, longer than an input


def test_select_takes_the_longest_prefix_that_one_shape_holds():
    grid = PackedGrid.build(max_seq_length=32, max_batch_size=4, max_batch_tokens=64)
    chosen, plan = grid.select([30, 30, 30, 5])
    assert chosen == [0, 1] and plan.bucket == (2, 32)
    assert grid.is_full([30, 30, 30]) and not grid.is_full([30, 5])
    assert grid.select([3, 4, 5, 6, 7, 8])[0] == [0, 1, 2, 3]  # max_batch_size inputs
    assert grid.is_full([3, 4, 5, 6])


def _row(n: int) -> Row:
    return Row(np.arange(n, dtype=np.int32), np.zeros(n, np.int32))


def test_batcher_runs_packed_batches_oldest_first():
    grid = PackedGrid.build(max_seq_length=32, max_batch_size=4, max_batch_tokens=64)
    batches = []

    def run(rows, plan):
        assert isinstance(plan, PackPlan) and len(plan.row) == len(rows)
        batches.append(([len(r) for r in rows], plan.bucket))
        return [{"n": len(r)} for r in rows]

    async def main():
        batcher = Batcher(run, grid)
        batcher.start()
        futures = batcher.submit([_row(n) for n in (30, 5, 30, 10, 12, 3, 4)])
        gone = batcher.submit([_row(7)])
        gone[0].cancel()
        results = await asyncio.gather(*futures)
        await batcher.stop()
        return results

    results = asyncio.run(main())
    assert [r.outputs["n"] for r in results] == [30, 5, 30, 10, 12, 3, 4]
    # 30 + 5 + 30 exceed the 64-token budget, so the second 30 waits and 30 + 5 share a row
    # of 48; then 30 with 10 + 12 + 3 beside it (four inputs, the batch limit); then the 4.
    assert batches == [([30, 5], (1, 48)), ([30, 10, 12, 3], (2, 32)), ([4], (1, 16))]


def test_a_full_packed_batch_runs_without_waiting_out_max_wait_ms():
    grid = PackedGrid.build(max_seq_length=32, max_batch_size=4, max_batch_tokens=64)

    async def main(lengths):
        batcher = Batcher(lambda rows, plan: [{} for _ in rows], grid, max_wait_ms=60_000)
        batcher.start()
        results = await asyncio.wait_for(
            asyncio.gather(*batcher.submit([_row(n) for n in lengths])), 30
        )
        await batcher.stop()
        return results

    # Four inputs (max_batch_size), or 31 + 32 tokens filling the 64 the budget allows (not
    # even a [CLS] [SEP] input fits beside them): the batch runs at once instead of waiting
    # a minute for company.
    assert len(asyncio.run(main([3, 4, 5, 6]))) == 4
    assert len(asyncio.run(main([31, 32]))) == 2


@pytest.fixture(scope="module")
def backend():
    return tiny_backend(num_labels=3, max_seq_length=64)


def test_packed_outputs_equal_model_apply_on_each_text_alone(backend):
    grid = PackedGrid.build(max_seq_length=64, max_batch_size=8, max_batch_tokens=256)
    rng = np.random.default_rng(3)
    texts = [random_text(rng, 14) for _ in range(8)]
    pairs = [None, random_text(rng, 8), None, None, random_text(rng, 4), None, None, None]
    rows = backend.featurize(texts, pairs, truncate=False)
    plans = [grid.plan([len(r) for r in rows[:k]]) for k in (1, 3, 8)]
    # And every input in rows of 128 tokens: twice the model's 64 positions.
    row, start = pack([len(r) for r in rows], 128)
    plans.append(PackPlan((int(row.max()) + 1, 128), row, start, 8))
    assert len({p.bucket for p in plans}) == 4 and max(p.bucket[0] for p in plans) > 1
    assert any(np.bincount(p.row).max() > 1 for p in plans), "some row should hold two inputs"
    assert np.bincount(row).max() > 2
    backend.compile([p.bucket for p in plans], examples=8)
    expected = [model_alone(backend, r) for r in rows]
    for k, plan in zip((1, 3, 8, 8), plans, strict=True):
        for got, want in zip(backend.run(rows[:k], plan), expected[:k], strict=True):
            for key in want:
                np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_packed_runs_refuse_uncompiled_shapes_and_rows_with_their_own_padding(backend):
    rows = backend.featurize(["the movie"], truncate=False)
    plan = PackPlan((3, 16), np.array([0]), np.array([0]), 5)
    with pytest.raises(RuntimeError, match=r"bucket \(3, 16\) packed for 5 inputs was not"):
        backend.run(rows, plan)
    backend.compile([(3, 16)], examples=5)
    padded = Row(rows[0].input_ids, rows[0].token_type_ids, np.ones(len(rows[0]), np.int32))
    with pytest.raises(ValueError, match="not packed"):
        backend.run([padded], plan)
