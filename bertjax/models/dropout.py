"""Inverted dropout: the keep mask (16 random bits per coin) and the `Dropout` layer."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def keep_mask(rng: Array, shape: tuple[int, ...], rate: float) -> tuple[Array | None, float]:
    """(keep [shape] bool, scale): each element kept with probability ~ 1 - rate.

    Each coin is 16 random bits (two per 32-bit word of the generator) compared with
    round(rate * 2^16): half the threefry work of `nn.Dropout`'s, 3.1 instead of 6.9 ms per
    1M-element mask on a 2-core Xeon, +5% on the bert_cpu train step. The drop probability is
    then round(rate * 2^16) / 2^16 (0.1 -> 0.100006), and `scale` is the inverse of the exact
    keep probability, so the expectation is unchanged. keep is None when nothing is dropped
    (a rate under 2^-17); a rate of 1 keeps nothing (scale 0).
    """
    threshold = min(round(rate * 2**16), 2**16)
    if threshold == 0:
        return None, 1.0
    if threshold == 2**16:
        return jnp.zeros(shape, bool), 0.0
    n = shape[-1]
    words = jax.random.bits(rng, (*shape[:-1], (n + 1) // 2))
    low, high = words & 0xFFFF, words >> 16
    keep = jnp.concatenate([low >= threshold, high >= threshold], axis=-1)[..., :n]
    return keep, 1.0 / (1.0 - threshold / 2**16)


def apply_keep(keep: Array, scale: float, x: Array) -> Array:
    """x with the dropped elements zeroed and the kept ones multiplied by `scale`."""
    return jnp.where(keep, x * scale, 0).astype(x.dtype)


class Dropout(nn.Module):
    """Inverted dropout (the "dropout" RNG stream); identity when `deterministic` or rate 0."""

    rate: float

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        if deterministic or self.rate == 0.0:
            return x
        keep, scale = keep_mask(self.make_rng("dropout"), x.shape, self.rate)
        if keep is None:
            return x
        return apply_keep(keep, scale, x)
