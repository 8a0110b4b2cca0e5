"""Token attributions of a scalar score with respect to the embedding output.

`score_fn(embeddings [S, T, H], aux) -> [S]` is the target (a class logit, a token's
log-probability, ... see `bertjax.explain.targets`) computed from the embedding output, rows
independent (the masks are broadcast to S rows); `aux` is a pytree of arrays (params, batch,
target index), so that one `score_fn` compiles once and serves every input of its shape.
Every method returns one score per token (summed over the hidden dimension, as captum and LIT
report them):

* `integrated_gradients`: (x - x') * integral_0^1 dF(x' + a (x - x'))/dx da, the integral by
  Gauss-Legendre (captum's default) or the trapezoid rule (LIT's), the interpolation points
  batched under jit; with the completeness delta sum(attributions) - (F(x) - F(x')).
* `grad_x_input`: x * dF/dx (captum's LayerGradientXActivation on the embeddings).
* `grad_norm`: ||dF/dx||_2 per token (LIT's gradient norm; unsigned).
* `occlusion`: F(x) - F(x with token t's embedding replaced by the baseline's), one row per token.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

ScoreFn = Callable[[jax.Array, Any], jax.Array]
METHODS = ("integrated_gradients", "grad_x_input", "grad_norm", "occlusion")
RULES = ("gauss_legendre", "trapezoid")


def quadrature(rule: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Points in [0, 1] and weights (summing to 1) of an integration rule with `steps` points.

    gauss_legendre: numpy's Legendre nodes mapped from [-1, 1] (captum's "gausslegendre");
    trapezoid: `steps` equally spaced points, the two ends weighted half (captum's
    "riemann_trapezoid", LIT's integrated gradients).
    """
    if rule not in RULES:
        raise ValueError(f"unknown integration rule {rule!r}; expected one of {list(RULES)}")
    if rule == "gauss_legendre":
        if steps < 1:
            raise ValueError(f"steps={steps}: Gauss-Legendre needs at least 1 point")
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return (nodes + 1.0) / 2.0, weights / 2.0
    if steps < 2:
        raise ValueError(f"steps={steps}: the trapezoid rule needs at least 2 points")
    weights = np.full(steps, 1.0 / (steps - 1))
    weights[[0, -1]] /= 2.0
    return np.linspace(0.0, 1.0, steps), weights


@functools.lru_cache(maxsize=16)
def _grad_fn(score_fn: ScoreFn) -> Callable[[jax.Array, Any], tuple[jax.Array, jax.Array]]:
    """(d scores / d embeddings [S, T, H], scores [S]) under jit (rows are independent)."""

    def total(e: jax.Array, aux: Any) -> tuple[jax.Array, jax.Array]:
        scores = score_fn(e, aux)
        return scores.sum(), scores

    return jax.jit(jax.grad(total, has_aux=True))


@functools.lru_cache(maxsize=16)
def _jit(score_fn: ScoreFn) -> Callable[[jax.Array, Any], jax.Array]:
    return jax.jit(score_fn)


def _scores_and_grads(score_fn: ScoreFn, e: Any, aux: Any) -> tuple[np.ndarray, np.ndarray]:
    grads, scores = _grad_fn(score_fn)(jnp.asarray(e), aux)
    return np.asarray(scores), np.asarray(grads)


def scores(score_fn: ScoreFn, e: Any, aux: Any) -> np.ndarray:
    """score_fn(e, aux) [S] under jit, as float64 numpy."""
    return np.asarray(_jit(score_fn)(jnp.asarray(e), aux), np.float64)


def integrated_gradients(
    score_fn: ScoreFn,
    aux: Any,
    x: np.ndarray,
    baseline: np.ndarray,
    *,
    steps: int = 64,
    rule: str = "gauss_legendre",
    batch_size: int = 32,
) -> dict[str, Any]:
    """Integrated gradients of `score_fn` at x [T, H] from `baseline` [T, H].

    The interpolation points run in batches of `batch_size` rows (the last one padded with
    zero-weight points, so one compiled shape). Returns {"tokens" [T], "f_input", "f_baseline",
    "delta"} with delta = sum(tokens) - (f_input - f_baseline), the completeness error.
    """
    alphas, weights = quadrature(rule, steps)
    dtype = x.dtype
    diff = (x - baseline).astype(dtype)
    total = np.zeros(x.shape, np.float64)
    rows = min(batch_size, steps)
    for start in range(0, steps, rows):
        a = np.zeros(rows, dtype)
        w = np.zeros(rows, np.float64)
        chunk = alphas[start : start + rows]
        a[: len(chunk)], w[: len(chunk)] = chunk, weights[start : start + rows]
        points = baseline[None] + a[:, None, None] * diff[None]
        _, grads = _scores_and_grads(score_fn, points.astype(dtype), aux)
        total += np.einsum("s,sth->th", w, grads.astype(np.float64))
    per_token = (diff.astype(np.float64) * total).sum(-1)
    ends = scores(score_fn, np.stack([x, baseline]).astype(dtype), aux)
    f_input, f_baseline = float(ends[0]), float(ends[1])
    delta = float(per_token.sum() - (f_input - f_baseline))
    return {"tokens": per_token, "f_input": f_input, "f_baseline": f_baseline, "delta": delta}


def grad_x_input(score_fn: ScoreFn, aux: Any, x: np.ndarray) -> dict[str, Any]:
    """x * dF/dx summed over the hidden dimension: {"tokens" [T], "f_input"}."""
    values, grads = _scores_and_grads(score_fn, x[None], aux)
    per_token = (x.astype(np.float64) * grads[0].astype(np.float64)).sum(-1)
    return {"tokens": per_token, "f_input": float(values[0])}


def grad_norm(score_fn: ScoreFn, aux: Any, x: np.ndarray) -> dict[str, Any]:
    """||dF/dx||_2 per token: {"tokens" [T], "f_input"}."""
    values, grads = _scores_and_grads(score_fn, x[None], aux)
    per_token = np.linalg.norm(grads[0].astype(np.float64), axis=-1)
    return {"tokens": per_token, "f_input": float(values[0])}


def occlusion(
    score_fn: ScoreFn, aux: Any, x: np.ndarray, baseline: np.ndarray, positions: np.ndarray
) -> dict[str, Any]:
    """F(x) - F(x with the embedding at each of `positions` replaced by the baseline's).

    Tokens not in `positions` (e.g. [CLS], [SEP], padding) get 0. Returns {"tokens" [T],
    "f_input"}.
    """
    rows = np.repeat(x[None], len(positions) + 1, axis=0)
    for i, t in enumerate(positions):
        rows[i + 1, t] = baseline[t]
    values = scores(score_fn, rows, aux)
    per_token = np.zeros(x.shape[0], np.float64)
    per_token[np.asarray(positions, int)] = values[0] - values[1:]
    return {"tokens": per_token, "f_input": float(values[0])}


def normalize(scores: np.ndarray) -> np.ndarray:
    """scores / sum(|scores|) (all zeros stay zeros): comparable across inputs and methods."""
    scale = np.abs(scores).sum()
    return scores / scale if scale > 0 else np.zeros_like(scores)
