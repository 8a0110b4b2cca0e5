"""Fixed-size batches for offline prediction: every call of the jitted forward pass sees the
same shape (the last batch is padded with zero rows), so a model compiles once per run."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np


@functools.lru_cache(maxsize=16)
def jitted(forward: Callable[..., Any], module: Any) -> Callable[..., Any]:
    """`jax.jit` of `forward(module, params, batch)` with the module bound, cached per module."""
    import jax

    return jax.jit(functools.partial(forward, module))


def pad_rows(batch: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    """Each [n, T] array of `batch` with zero rows appended up to `batch_size` rows."""
    return {
        k: v
        if len(v) == batch_size
        else np.concatenate([v, np.zeros((batch_size - len(v), *v.shape[1:]), v.dtype)])
        for k, v in batch.items()
    }


def fixed_batches(
    feats: dict[str, np.ndarray], keys: Sequence[str], batch_size: int
) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """(the `keys` of consecutive `batch_size` rows of `feats`, padded; how many rows are real)."""
    n = len(feats[keys[0]])
    for lo in range(0, n, batch_size):
        hi = min(lo + batch_size, n)
        yield pad_rows({k: feats[k][lo:hi] for k in keys}, batch_size), hi - lo
