"""The one epoch batcher: which rows each step takes, and the batches of fine-tuning.

`EpochOrder` is shared by every trainer that walks a fixed set of rows epoch by epoch
(fine-tuning examples, the causal LM's packed rows): epoch `e` visits the rows in the order
`np.random.default_rng([seed, e]).permutation(N)`; each step takes the next global batch of it
and each host its contiguous slice. With `pad_last` the last batch of an epoch is topped up with
padding rows (index -1, weight 0), so nothing is dropped (steps_per_epoch = ceil(N / batch), as
transformers' Trainer); without it the rows of an incomplete last batch wait for the next epoch's
shuffle (steps_per_epoch = N // batch, as packed LM corpora are). The position (epoch, step) is
the whole state, so a resumed run continues with exactly the batches an uninterrupted one would
have seen. `eval_rows` is the finite, in-order counterpart for eval sets.

`TrainIterator` and `eval_batches` turn those rows into fine-tuning batches (the featurised
arrays of `bertjax.data.features`, plus `weights`), padded rows or, given an `ExamplePacker`,
packed ones (`bertjax.data.example_packing`: each host packs from the global batch's rows, so
that every host builds the same shape).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from bertjax.data.example_packing import ExamplePacker
from bertjax.data.features import MODEL_KEYS

BATCH_KEYS = (*MODEL_KEYS, "labels")  # what a fine-tuning batch carries, plus "weights"


class EpochOrder:
    """This host's row indices for every step of an endless, epoch-permuted walk over N rows."""

    def __init__(
        self,
        num_rows: int,
        global_batch_size: int,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
        *,
        pad_last: bool = True,
    ):
        if global_batch_size % process_count:
            raise ValueError(
                f"batch size {global_batch_size} is not divisible by {process_count} processes"
            )
        self.num_rows = num_rows
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // process_count
        self.seed = seed
        self.process_index = process_index
        self.pad_last = pad_last
        if pad_last:
            self.steps_per_epoch = math.ceil(num_rows / global_batch_size)
        else:
            self.steps_per_epoch = num_rows // global_batch_size
        self.epoch, self.step = 0, 0
        self._perm_epoch, self._perm = -1, np.empty(0, np.int64)

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)
            self._perm_epoch = epoch
        return self._perm

    def next_rows(self) -> np.ndarray:
        """This host's rows of the next global batch (int64; -1 = a padding row)."""
        start = self.step * self.global_batch_size + self.process_index * self.local_batch_size
        mine = np.full(self.local_batch_size, -1, dtype=np.int64)
        rows = self.permutation(self.epoch)[start : start + self.local_batch_size]
        mine[: len(rows)] = rows
        self.step += 1
        if self.step == self.steps_per_epoch:
            self.epoch, self.step = self.epoch + 1, 0
        return mine

    def get_state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "step": self.step}

    def set_state(self, epoch: int, step: int) -> None:
        self.epoch, self.step = int(epoch), int(step)


def eval_rows(
    num_rows: int,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    *,
    max_batches: int = 0,
    exact_batches: bool = False,
) -> Iterator[np.ndarray]:
    """This host's rows (int64; -1 = padding) of every global eval batch, in order.

    `max_batches` > 0 keeps only the first ones; `exact_batches` yields exactly `max_batches`
    (all-padding batches after the data), for hosts that must agree on a count without talking.
    """
    local = global_batch_size // process_count
    count = -(-num_rows // global_batch_size)
    if max_batches > 0:
        count = max_batches if exact_batches else min(count, max_batches)
    for b in range(count):
        idx = b * global_batch_size + process_index * local + np.arange(local)
        yield np.where(idx < num_rows, idx, -1).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Fine-tuning batches
# ---------------------------------------------------------------------------------------------


def take_rows(
    features: dict[str, np.ndarray], mine: np.ndarray, keys: tuple[str, ...] = BATCH_KEYS
) -> dict[str, np.ndarray]:
    """A fine-tuning batch of rows `mine` (-1 = padding: zeros, weight 0) with `keys`
    (token-level tasks carry other label keys, e.g. start/end positions or per-token tags)."""
    real = mine >= 0
    take = np.where(real, mine, 0)
    batch = {key: features[key][take] for key in keys}
    for key in keys:
        batch[key][~real] = 0
    batch["weights"] = real.astype(np.float32)
    return batch


class TrainIterator:
    """Endless fine-tuning batches for one host (`EpochOrder` with a padded last batch);
    packed by `packer` when given."""

    def __init__(
        self,
        features: dict[str, np.ndarray],
        global_batch_size: int,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
        keys: tuple[str, ...] = BATCH_KEYS,
        packer: ExamplePacker | None = None,
    ):
        self._features = features
        self._keys = keys
        self._num = len(features[keys[0]])
        self._packer = packer
        self._host = (process_index, process_count)
        if packer is None:
            self._order = EpochOrder(
                self._num, global_batch_size, seed, process_index, process_count, pad_last=True
            )
        else:  # the global batch's rows: the packer needs every host's examples to agree
            self._order = EpochOrder(self._num, global_batch_size, seed, pad_last=True)
        self.steps_per_epoch = self._order.steps_per_epoch

    def __iter__(self) -> TrainIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rows = self._order.next_rows()
        if self._packer is None:
            return take_rows(self._features, rows, self._keys)
        return self._packer.pack(rows, self._keys, *self._host)

    def get_state(self) -> dict[str, Any]:
        return {**self._order.get_state(), "num_examples": self._num}

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("num_examples", self._num) != self._num:
            raise ValueError(
                f"checkpointed fine-tuning iterator saw {state['num_examples']} training "
                f"examples, the data now has {self._num}: the training set changed since the "
                "checkpoint"
            )
        self._order.set_state(state["epoch"], state["step"])


def eval_batches(
    features: dict[str, np.ndarray],
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    keys: tuple[str, ...] = BATCH_KEYS,
    packer: ExamplePacker | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """This host's eval batches in file order; the last one padded with weight-0 rows (packed
    by `packer` when given)."""
    num = len(features[keys[0]])
    if packer is not None:
        for rows in eval_rows(num, global_batch_size):
            yield packer.pack(rows, keys, process_index, process_count)
        return
    for mine in eval_rows(num, global_batch_size, process_index, process_count):
        yield take_rows(features, mine, keys)
