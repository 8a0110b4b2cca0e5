"""The model's matmuls: dense layers (x W + b), the tied output head (x E^T), attention core.

On GPU and TPU these are plain `dot_general`s: the compilers pick good kernels for any operand
layout. XLA:CPU (jax 0.10) is different for bfloat16: it hands a bf16 x bf16 -> f32 dot to
YNNPACK, whose kernels use AMX / AVX512-BF16, ONLY when the dot is in the canonical layout
A[M, K] @ B[K, N] (A contracted on its last axis, B on its first). Every other bf16 dot -
including a bf16 result, and the transposed operands that autodiff produces for the backward
pass (dX = dY W^T, dW = X^T dY) - is upcast to float32 and runs 3-5x slower (measured on a
2-core Sapphire Rapids: 4096x256x1024 bf16->f32 canonical 730 GFLOP/s; the same with a bf16
result or a transposed operand 130-190; float32 190-250).

So on a CPU with bf16 compute, `linear`, `tied_logits` and `attention` are `custom_vjp`s
whose forward and backward matmuls are all canonical, with the few transposes they need made
explicit by `materialized_transpose` (a transpose XLA's simplifier cannot fold back into the
dot). Elsewhere `linear` and `tied_logits` are the plain formulas (and the models call
`jax.nn.dot_product_attention`). Both paths round the inputs to the compute dtype and
accumulate in float32; they differ only in where results are rounded: the CPU path adds the
bias in float32 before rounding (the plain one in bf16, as `flax.linen.DenseGeneral`), returns
weight gradients from a float32 accumulator without a bf16 rounding, and rounds the float32
logits' gradient to bf16 before the tied head's backward matmuls.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array


def use_canonical_matmuls(dtype: jnp.dtype) -> bool:
    """Whether matmuls in `dtype` take the canonical-layout path: bf16 compute on XLA:CPU."""
    return jnp.dtype(dtype) == jnp.bfloat16 and jax.default_backend() == "cpu"


def materialized_transpose(a: Array, axes: tuple[int, ...] | None = None) -> Array:
    """`jnp.transpose(a, axes)` (default: swap the last two axes) as a real row-major copy.

    A plain transpose feeding a dot is folded into the dot's dimension numbers (a
    non-canonical dot, see the module docstring); routed through a trailing unit axis it is
    not folded, and XLA writes it out. `tests/test_matmul.py` checks that the compiled HLO
    keeps every bf16 dot on the fast path, so a compiler that learns to see through this
    shows up there.
    """
    if axes is None:
        axes = (*range(a.ndim - 2), a.ndim - 1, a.ndim - 2)
    return jnp.transpose(a[..., None], (*axes, a.ndim))[..., 0]


def _dot_f32(a: Array, b: Array) -> Array:
    """a[M, K] @ b[K, N], accumulated and returned in float32."""
    return jnp.dot(a, b, preferred_element_type=jnp.float32)


def _two_rows_at_least(x: Array) -> Array:
    """x[M, K] with its row repeated when M = 1: XLA:CPU runs a bf16 matrix-vector product as
    float32 (converting the matrix), a bf16 matrix times two columns on YNNPACK's bf16 kernels
    (GPT-2's 3072 x 768 weights: 0.19 against 0.26 ms float32 and 0.63 ms bf16 matrix-vector;
    its 50,257 x 768 table: 4.8 against 6.8 ms)."""
    return jnp.concatenate([x, x]) if x.shape[0] == 1 else x


def _column_sums(g: Array) -> Array:
    """g[M, N] summed over M in float32 (a bias gradient)."""
    return jnp.sum(g.astype(jnp.float32), axis=0)


# ------------------------------------------------------------------------------------- linear


@jax.custom_vjp
def _canonical_linear(x: Array, kernel: Array, bias: Array) -> Array:
    """x[M, K] @ kernel[K, N] + bias[N], in x's dtype; kernel and bias in any float dtype."""
    return _canonical_linear_fwd(x, kernel, bias)[0]


def _canonical_linear_fwd(x: Array, kernel: Array, bias: Array) -> tuple[Array, tuple]:
    w = kernel.astype(x.dtype)
    y = (_dot_f32(x, w) + bias.astype(jnp.float32)).astype(x.dtype)
    # The parameters ride along only for their dtypes (residuals must be arrays); they are
    # alive anyway.
    return y, (x, w, kernel, bias)


def _canonical_linear_bwd(residuals: tuple, g: Array) -> tuple[Array, Array, Array]:
    x, w, kernel, bias = residuals
    g = g.astype(x.dtype)
    dx = _dot_f32(g, materialized_transpose(w)).astype(x.dtype)
    dkernel = _dot_f32(materialized_transpose(x), g).astype(kernel.dtype)
    dbias = _column_sums(g).astype(bias.dtype)
    return dx, dkernel, dbias


_canonical_linear.defvjp(_canonical_linear_fwd, _canonical_linear_bwd)


def linear(x: Array, kernel: Array, bias: Array | None, dtype: jnp.dtype) -> Array:
    """x[..., K] @ kernel[K, N] (+ bias[N]) in the compute `dtype`; the result in `dtype`.

    `kernel` and `bias` are the stored parameters (any float dtype); their gradients come back
    in that dtype.
    """
    x = x.astype(dtype)
    lead = x.shape[:-1]
    n = kernel.shape[-1]
    if use_canonical_matmuls(dtype):
        if bias is None:
            bias = jnp.zeros((n,), jnp.float32)
        y = _canonical_linear(x.reshape(-1, x.shape[-1]), kernel, bias)
        return y.reshape(*lead, n)
    y = jnp.dot(x, kernel.astype(dtype))
    return y if bias is None else y + bias.astype(dtype)


# ------------------------------------------------------------- linear, decode kernel layout

# At most this many rows (tokens) count as "a few": a decode step's batch. For them XLA:CPU's
# fastest product is the weight-major one, (W^T x^T)^T: measured on a 2-core Sapphire Rapids,
# 32 rows against GPT-2's 768x3072 weights, bf16 0.19-0.25 ms against 0.40 for x W and float32
# 0.9-1.2 ms against 1.4-1.9; for a prompt block of 1024 rows it is slower than x W.
_FEW_ROWS = 128


def linear_decode(x: Array, kernel_t: Array, bias: Array, dtype: jnp.dtype) -> Array:
    """x[..., K] @ kernel_t[N, K]^T + bias[N] in the compute `dtype`, for inference.

    The kernel in the decode layout (`layers.Dense(transposed=True)`): each output's weights
    contiguous, the layout in which a decode step's few rows multiply fastest on a CPU, as
    (W^T x^T)^T. A prompt block (many rows) in bf16 multiplies the kernel transposed back, x W:
    XLA:CPU upcasts a bf16 x W^T to float32 (21 against 7 ms for GPT-2's 1024 x 768 x 3072);
    in float32, x W^T as it stands. Bias added in float32. No custom gradient: this is for
    decoding, not training.
    """
    x = x.astype(dtype)
    w = kernel_t.astype(dtype)
    lead, k = x.shape[:-1], x.shape[-1]
    n = w.shape[0]
    x2 = x.reshape(-1, k)
    if jax.default_backend() != "cpu":
        y = jnp.dot(x2, w.T) + bias.astype(dtype)
        return y.reshape(*lead, n)
    if x2.shape[0] <= _FEW_ROWS:
        rows = x2.shape[0]
        if use_canonical_matmuls(dtype):
            x2 = _two_rows_at_least(x2)
        y = materialized_transpose(_dot_f32(w, materialized_transpose(x2)))[:rows]
    elif use_canonical_matmuls(dtype):  # bf16: x W^T is upcast to float32 unless canonical
        y = _dot_f32(x2, materialized_transpose(w))
    else:
        y = jax.lax.dot_general(x2, w, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    y = y + bias.astype(jnp.float32)
    return y.astype(dtype).reshape(*lead, n)


# -------------------------------------------------------------------------------- tied logits


def _transpose_output_is_cheaper(rows: int, vocab: int, hidden: int) -> bool:
    """For x[rows, H] @ E[V, H]^T: is (E @ x^T)^T (copies x and the [V, rows] result) cheaper
    than x @ (E^T) (copies E)? True for a few rows against a large table (decoding)."""
    return rows * (hidden + vocab) < vocab * hidden


def _canonical_tied_logits_forward(x: Array, table: Array) -> Array:
    rows, hidden = x.shape
    vocab = table.shape[0]
    if _transpose_output_is_cheaper(rows, vocab, hidden):
        if use_canonical_matmuls(x.dtype):
            x = _two_rows_at_least(x)
        return materialized_transpose(_dot_f32(table, materialized_transpose(x)))[:rows]
    return _dot_f32(x, materialized_transpose(table))


@jax.custom_vjp
def _canonical_tied_logits(x: Array, table: Array) -> Array:
    """x[M, H] @ table[V, H]^T in float32; x in the compute dtype, table in any float dtype."""
    return _canonical_tied_logits_fwd(x, table)[0]


def _canonical_tied_logits_fwd(x: Array, table: Array) -> tuple[Array, tuple]:
    e = table.astype(x.dtype)
    return _canonical_tied_logits_forward(x, e), (x, e, table)


def _canonical_tied_logits_bwd(residuals: tuple, g: Array) -> tuple[Array, Array]:
    x, e, table = residuals
    g = g.astype(x.dtype)
    dx = _dot_f32(g, e).astype(x.dtype)  # [M, V] @ [V, H]: canonical as it stands
    dtable = materialized_transpose(_dot_f32(materialized_transpose(x), g))  # ([H,M] @ [M,V])^T
    return dx, dtable.astype(table.dtype)


_canonical_tied_logits.defvjp(_canonical_tied_logits_fwd, _canonical_tied_logits_bwd)


def tied_logits(x: Array, table: Array, dtype: jnp.dtype) -> Array:
    """x[..., H] @ table[V, H]^T: inputs in the compute `dtype`, logits in float32."""
    x = x.astype(dtype)
    rows = math.prod(x.shape[:-1])
    few_rows_on_cpu = (
        jax.default_backend() == "cpu"
        and rows <= _FEW_ROWS
        and _transpose_output_is_cheaper(rows, *table.shape)
    )
    # A decode step's few rows on a CPU take the table-major product E x^T in float32 too: as
    # fast there as x E^T, and its [V, rows] result is what `generate.first_argmax` reads
    # (reading [rows, V] would transpose the whole logits array, ~4 ms for GPT-2 at 32 rows).
    if use_canonical_matmuls(dtype) or few_rows_on_cpu:
        lead = x.shape[:-1]
        logits = _canonical_tied_logits(x.reshape(-1, x.shape[-1]), table)
        return logits.reshape(*lead, table.shape[0])
    return jnp.einsum("...h,vh->...v", x, table.astype(dtype), preferred_element_type=jnp.float32)


# ------------------------------------------------------------------------------ attention core

_BTND_TO_BNTD = (0, 2, 1, 3)  # [B, T, N, D] <-> [B, N, T, D] (its own inverse)


def _batched_dot_f32(a: Array, b: Array) -> Array:
    """a[B, N, T, K] @ b[B, N, K, S] per (B, N), accumulated and returned in float32."""
    return jnp.einsum("bntk,bnks->bnts", a, b, preferred_element_type=jnp.float32)


def _attention_probs(q: Array, kt: Array, mask: Array | None) -> Array:
    """softmax(q kt / sqrt(d) masked) in float32; q [B,N,T,D], kt [B,N,D,S]."""
    scores = _batched_dot_f32(q, kt) * (q.shape[-1] ** -0.5)
    if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(scores, axis=-1)


@jax.custom_vjp
def _canonical_attention(q: Array, k: Array, v: Array, mask: Array | None) -> Array:
    return _canonical_attention_fwd(q, k, v, mask)[0]


def _canonical_attention_fwd(
    q: Array, k: Array, v: Array, mask: Array | None
) -> tuple[Array, tuple]:
    qh = materialized_transpose(q, _BTND_TO_BNTD)
    kh = materialized_transpose(k, _BTND_TO_BNTD)
    vh = materialized_transpose(v, _BTND_TO_BNTD)
    probs = _attention_probs(qh, materialized_transpose(kh), mask)  # float32, kept for the vjp
    out = _batched_dot_f32(probs.astype(q.dtype), vh).astype(q.dtype)
    return materialized_transpose(out, _BTND_TO_BNTD), (qh, kh, vh, probs, mask)


def _canonical_attention_bwd(residuals: tuple, g: Array) -> tuple:
    qh, kh, vh, probs, mask = residuals
    gh = materialized_transpose(g.astype(qh.dtype), _BTND_TO_BNTD)  # [B, N, T, D]
    dprobs = _batched_dot_f32(gh, materialized_transpose(vh))  # [B, N, T, S]
    dv = _batched_dot_f32(materialized_transpose(probs.astype(qh.dtype)), gh)  # [B, N, S, D]
    dscores = probs * (dprobs - jnp.sum(dprobs * probs, axis=-1, keepdims=True))
    if mask is not None:
        # A masked score is a constant: no gradient. (Where a row has a key left, its masked
        # probabilities are 0 anyway; a row with every key masked has uniform probabilities,
        # which depend on neither q nor k.)
        dscores = jnp.where(mask, dscores, 0.0)
    dscores = (dscores * (qh.shape[-1] ** -0.5)).astype(qh.dtype)
    dq = _batched_dot_f32(dscores, kh)
    dk = _batched_dot_f32(materialized_transpose(dscores), qh)
    grads = zip((dq, dk, dv), (qh.dtype, kh.dtype, vh.dtype), strict=True)
    back = [materialized_transpose(d.astype(dtype), _BTND_TO_BNTD) for d, dtype in grads]
    return (*back, None)  # a boolean mask has no cotangent


_canonical_attention.defvjp(_canonical_attention_fwd, _canonical_attention_bwd)


def attention(q: Array, k: Array, v: Array, mask: Array | None) -> Array:
    """softmax(Q K^T / sqrt(d), masked) V on XLA:CPU's fast bf16 path; q,k,v [B, T, N, D].

    `mask`: boolean, broadcastable to [B, N, T, S] (True = may attend), or None. Scores and
    softmax in float32, the probabilities rounded to the compute dtype before the PV matmul,
    as `jax.nn.dot_product_attention`'s XLA implementation. No dropout on the probabilities.
    """
    return _canonical_attention(q, k, v, mask)
