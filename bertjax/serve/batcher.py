"""Dynamic batching: rows of concurrent requests packed under a token budget, one model thread.

Request handlers `submit` their rows and await the results. One asyncio task (the collector)
asks the grid which queued rows form the next batch (`BucketGrid.select`: the oldest row and
the rows no longer than its length bucket, padded to a (batch, length) bucket;
`PackedGrid.select`: the oldest rows that one packed shape holds), optionally waiting up to
`max_wait_ms` from the oldest row's arrival for more, and hands the batch and its bucket or
packing plan to a single worker thread that runs the compiled function of that shape. While
that thread computes, new rows queue up and form the next batch: under load batches grow by
themselves, and an idle server runs a lone request at once. Rows whose request has gone
(client disconnected, timed out) are dropped before their batch is formed.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

from bertjax.serve.backend import Row
from bertjax.serve.buckets import BucketGrid
from bertjax.serve.row_packing import PackedGrid, PackPlan


@dataclasses.dataclass
class BatchStats:
    """What one batch cost, as the metrics and response headers report it."""

    rows: int
    real_tokens: int
    bucket: tuple[int, int]
    inference_s: float


@dataclasses.dataclass
class RowResult:
    """A row's outputs and its times: queued (arrival to batch start) and in the model."""

    outputs: dict[str, Any]
    queue_s: float
    inference_s: float


@dataclasses.dataclass
class _Pending:
    row: Row
    future: asyncio.Future
    arrived: float


def _bucket(plan: tuple[int, int] | PackPlan) -> tuple[int, int]:
    """The (rows, length) a batch ran at: a padded bucket, or a packed plan's."""
    return plan.bucket if isinstance(plan, PackPlan) else plan


class Batcher:
    """Packs rows of concurrent requests into bucketed batches run by one worker thread.

    Args:
      run_fn: (rows, bucket or plan) -> per-row outputs; runs on the worker thread (a
        backend's `run`).
      grid: the padded buckets or the packed shapes; every batch formed fits it.
      max_wait_ms: how long a batch that is not full may wait for more rows (0: run at once).
      on_batch: called on the event loop after each batch (metrics).
    """

    def __init__(
        self,
        run_fn: Callable[[Sequence[Row], tuple[int, int] | PackPlan], list[dict[str, Any]]],
        grid: BucketGrid | PackedGrid,
        *,
        max_wait_ms: float = 0.0,
        on_batch: Callable[[BatchStats], None] | None = None,
    ):
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms={max_wait_ms} must be >= 0")
        self._run_fn = run_fn
        self.grid = grid
        self._max_wait_s = max_wait_ms / 1000.0
        self._on_batch = on_batch
        self._pending: collections.deque[_Pending] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closing = False
        # One thread: batches run one after another, as on one accelerator.
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="bertjax-model")

    @property
    def queue_depth(self) -> int:
        """Rows waiting for a batch."""
        return len(self._pending)

    def start(self) -> None:
        """Starts the collector on the running event loop."""
        if self._task is not None:
            raise RuntimeError("the batcher is already running")
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task = asyncio.get_running_loop().create_task(self._collect(), name="batcher")

    async def stop(self) -> None:
        """Runs every row already queued, then stops the collector and the worker thread."""
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None
        self._worker.shutdown(wait=True)

    def submit(self, rows: Sequence[Row]) -> list[asyncio.Future]:
        """Queues rows; each future resolves to a `RowResult` (or the batch's exception).

        Cancel a future to drop its row if its batch has not been formed yet.
        """
        if self._closing or self._task is None:
            raise RuntimeError("the batcher is not running")
        for row in rows:
            if not self.grid.fits_one(len(row)):
                raise ValueError(f"a row of {len(row)} tokens exceeds the largest bucket")
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        futures = []
        for row in rows:
            future = loop.create_future()
            self._pending.append(_Pending(row, future, now))
            futures.append(future)
        self._wakeup.set()
        return futures

    # -- the collector --------------------------------------------------------------------------

    def _drop_gone(self) -> None:
        while self._pending and self._pending[0].future.done():
            self._pending.popleft()

    def _live(self) -> list[_Pending]:
        """The queued rows whose request is still waiting, oldest first."""
        self._pending = collections.deque(p for p in self._pending if not p.future.done())
        return list(self._pending)

    def _take_batch(self) -> tuple[list[_Pending], tuple[int, int] | PackPlan | None]:
        """The next batch, as the grid selects it from the queue, and its bucket or plan."""
        live = self._live()
        if not live:
            return [], None
        try:
            chosen, plan = self.grid.select([len(p.row) for p in live])
        except ValueError as e:  # `submit` refuses such rows; never let one stop the collector
            live[0].future.set_exception(e)
            self._pending.popleft()
            return [], None
        taken = set(chosen)
        self._pending = collections.deque(p for i, p in enumerate(live) if i not in taken)
        return [live[i] for i in chosen], plan

    def _is_full(self) -> bool:
        """Whether the queued rows already fill the next batch (no point waiting for more)."""
        live = self._live()
        return bool(live) and self.grid.is_full([len(p.row) for p in live])

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._drop_gone()
            if not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self._max_wait_s > 0 and not self._closing:
                deadline = self._pending[0].arrived + self._max_wait_s
                while not self._is_full() and (remaining := deadline - time.perf_counter()) > 0:
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), remaining)
                    except TimeoutError:
                        break
            batch, plan = self._take_batch()
            if not batch:
                continue
            started = time.perf_counter()
            try:
                outputs = await loop.run_in_executor(
                    self._worker, self._run_fn, [p.row for p in batch], plan
                )
            except Exception as e:  # noqa: BLE001 - the error goes to every request of the batch
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(e)
                continue
            inference_s = time.perf_counter() - started
            for p, out in zip(batch, outputs, strict=True):
                if not p.future.done():
                    p.future.set_result(RowResult(out, started - p.arrived, inference_s))
            if self._on_batch is not None:
                self._on_batch(
                    BatchStats(
                        len(batch), sum(len(p.row) for p in batch), _bucket(plan), inference_s
                    )
                )
