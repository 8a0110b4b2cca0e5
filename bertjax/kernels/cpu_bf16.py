"""XLA:CPU's fast bf16 layouts: dense layers (x W + b), the tied output head (x E^T), and the
layout helpers the attention core (`bertjax/models/attention.py`) and decoding use.

On GPU and TPU matmuls are plain `dot_general`s: the compilers pick good kernels for any operand
layout. XLA:CPU (jax 0.10) is different for bfloat16: it hands a bf16 x bf16 -> f32 dot to
YNNPACK, whose kernels use AMX / AVX512-BF16, ONLY when the dot is in the canonical layout
A[M, K] @ B[K, N] (A contracted on its last axis, B on its first). Every other bf16 dot -
including a bf16 result, and the transposed operands that autodiff produces for the backward
pass (dX = dY W^T, dW = X^T dY) - is upcast to float32 and runs 3-5x slower (measured on a
2-core Sapphire Rapids: 4096x256x1024 bf16->f32 canonical 730 GFLOP/s; the same with a bf16
result or a transposed operand 130-190; float32 190-250).

So with the "cpu_bf16" kernels (`bertjax.kernels`: chosen by "auto" for bf16 compute on a
CPU), `linear`, `tied_logits` and the attention core are `custom_vjp`s whose forward and
backward matmuls are all canonical, with the few transposes they need made explicit by
`materialized_transpose` (a transpose XLA's simplifier cannot fold back into the dot). The
"xla" kernels are the plain formulas (`bertjax.kernels`). Both paths round the inputs to the
compute dtype and accumulate in float32; they differ only in where results are rounded: the
CPU path adds the bias in float32 before rounding (the plain one in bf16, as
`flax.linen.DenseGeneral`), returns weight gradients from a float32 accumulator without a
bf16 rounding, and rounds the float32 logits' gradient to bf16 before the tied head's
backward matmuls.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _is_bf16(dtype: jnp.dtype) -> bool:
    return jnp.dtype(dtype) == jnp.bfloat16


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
    """x[..., K] @ kernel[K, N] (+ bias[N]) in the compute `dtype`, every matmul canonical.

    `kernel` and `bias` are the stored parameters (any float dtype); their gradients come back
    in that dtype.
    """
    x = x.astype(dtype)
    lead = x.shape[:-1]
    n = kernel.shape[-1]
    if bias is None:
        bias = jnp.zeros((n,), jnp.float32)
    y = _canonical_linear(x.reshape(-1, x.shape[-1]), kernel, bias)
    return y.reshape(*lead, n)


# ------------------------------------------------------------- linear, decode kernel layout

# At most this many rows (tokens) count as "a few": a decode step's batch. For them XLA:CPU's
# fastest product is the weight-major one, (W^T x^T)^T: measured on a 2-core Sapphire Rapids,
# 32 rows against GPT-2's 768x3072 weights, bf16 0.19-0.25 ms against 0.40 for x W and float32
# 0.9-1.2 ms against 1.4-1.9; for a prompt block of 1024 rows it is slower than x W.
FEW_ROWS = 128


def linear_decode(x: Array, kernel_t: Array, bias: Array, dtype: jnp.dtype) -> Array:
    """x[..., K] @ kernel_t[N, K]^T + bias[N] in the compute `dtype`, for inference on a CPU.

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
    if x2.shape[0] <= FEW_ROWS:
        rows = x2.shape[0]
        if _is_bf16(dtype):
            x2 = _two_rows_at_least(x2)
        y = materialized_transpose(_dot_f32(w, materialized_transpose(x2)))[:rows]
    elif _is_bf16(dtype):  # bf16: x W^T is upcast to float32 unless canonical
        y = _dot_f32(x2, materialized_transpose(w))
    else:
        y = jax.lax.dot_general(x2, w, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    y = y + bias.astype(jnp.float32)
    return y.astype(dtype).reshape(*lead, n)


# -------------------------------------------------------------------------------- tied logits


def transpose_output_is_cheaper(rows: int, vocab: int, hidden: int) -> bool:
    """For x[rows, H] @ E[V, H]^T: is (E @ x^T)^T (copies x and the [V, rows] result) cheaper
    than x @ (E^T) (copies E)? True for a few rows against a large table (decoding)."""
    return rows * (hidden + vocab) < vocab * hidden


def _canonical_tied_logits_forward(x: Array, table: Array) -> Array:
    rows, hidden = x.shape
    vocab = table.shape[0]
    if transpose_output_is_cheaper(rows, vocab, hidden):
        if _is_bf16(x.dtype):
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
    """x[..., H] @ table[V, H]^T, every matmul canonical: inputs in `dtype`, logits float32.

    A few rows against a large table (a decode step) take the table-major product E x^T,
    whose [V, rows] result is what `generate.first_argmax` reads.
    """
    x = x.astype(dtype)
    lead = x.shape[:-1]
    logits = _canonical_tied_logits(x.reshape(-1, x.shape[-1]), table)
    return logits.reshape(*lead, table.shape[0])
