"""Fine-tuning batches: one epoch iterator and padded eval batches over featurised examples.

Every example once per epoch in the order `permutation(seed, epoch)`; the last batch of an epoch
(and of an eval set) is topped up with padding rows of weight 0, so nothing is dropped and every
host yields batches of the same size. Each host takes its slice of every global batch. Used by
every sequence-level fine-tuning task (GLUE, the user's own files).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bertjax.data.features import MODEL_KEYS

BATCH_KEYS = (*MODEL_KEYS, "labels")  # what a fine-tuning batch carries, plus "weights"


def _host_rows(
    features: dict[str, np.ndarray],
    rows: np.ndarray,
    global_batch_size: int,
    process_index: int,
    process_count: int,
) -> dict[str, np.ndarray]:
    """This host's slice of one global batch made of `rows` (-1 = padding, weight 0)."""
    local = global_batch_size // process_count
    padded = np.full(global_batch_size, -1, dtype=np.int64)
    padded[: len(rows)] = rows
    mine = padded[process_index * local : (process_index + 1) * local]
    real = mine >= 0
    take = np.where(real, mine, 0)
    batch = {key: features[key][take] for key in BATCH_KEYS}
    for key in BATCH_KEYS:
        batch[key][~real] = 0
    batch["weights"] = real.astype(np.float32)
    return batch


class TrainIterator:
    """Endless training batches for one host: a fresh shuffle every epoch, nothing dropped.

    Epoch `e` visits every example once in the order `permutation(seed, e)`; its last batch is
    topped up with padding rows of weight 0 (so steps_per_epoch = ceil(N / batch), as
    `transformers`' Trainer). The position (epoch, batch) is the whole state, so a resumed run
    continues with exactly the batches an uninterrupted one would have seen.
    """

    def __init__(
        self,
        features: dict[str, np.ndarray],
        global_batch_size: int,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
    ):
        if global_batch_size % process_count:
            raise ValueError(
                f"batch size {global_batch_size} is not divisible by {process_count} processes"
            )
        self._features = features
        self._num = len(features["labels"])
        self._batch = global_batch_size
        self._seed = seed
        self._process = (process_index, process_count)
        self.steps_per_epoch = math.ceil(self._num / global_batch_size)
        self._epoch, self._step = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self._seed, epoch]).permutation(self._num)

    def __iter__(self) -> TrainIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rows = self._order[self._step * self._batch : (self._step + 1) * self._batch]
        batch = _host_rows(self._features, rows, self._batch, *self._process)
        self._step += 1
        if self._step == self.steps_per_epoch:
            self._epoch, self._step = self._epoch + 1, 0
            self._order = self._permutation(self._epoch)
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"epoch": self._epoch, "step": self._step, "num_examples": self._num}

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("num_examples", self._num) != self._num:
            raise ValueError(
                f"checkpointed fine-tuning iterator saw {state['num_examples']} training examples, "
                f"the data now has {self._num}: the training set changed since the checkpoint"
            )
        self._epoch, self._step = int(state["epoch"]), int(state["step"])
        self._order = self._permutation(self._epoch)


def eval_batches(
    features: dict[str, np.ndarray],
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
):
    """This host's eval batches in file order; the last one padded with weight-0 rows."""
    num = len(features["labels"])
    for start in range(0, num, global_batch_size):
        rows = np.arange(start, min(start + global_batch_size, num))
        yield _host_rows(features, rows, global_batch_size, process_index, process_count)
