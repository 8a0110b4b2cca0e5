"""Backend-specific kernels of the model's matmuls and element-wise ops, chosen once by config.

`ModelConfig.kernels` names the set:

* "xla": the plain formulas (`jnp.dot`, `jax.nn.gelu`, ...); XLA picks the kernels. What GPU
  and TPU run.
* "cpu_bf16": XLA:CPU's fast layouts (`cpu_bf16.py`): every bf16 matmul of the forward and
  backward pass in the canonical layout that XLA:CPU hands to YNNPACK's AMX / AVX512-BF16
  kernels, the decode layouts of a few rows, GELU in float32, a float32 KV cache.
* "auto" (the default): "cpu_bf16" on a CPU, "xla" elsewhere. On a CPU the canonical
  `custom_vjp` matmuls are taken for bf16 compute only (in float32 XLA:CPU's own dots are as
  fast), the decode layouts and the float32 GELU for every dtype.

The compute dtype is chosen separately (`ModelConfig.dtype`, "auto" =
`cpu_features.preferred_compute_dtype`: bf16 on accelerators and on a CPU with AMX-BF16,
float32 elsewhere). The model files call only the functions below.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from bertjax.kernels import cpu_bf16

Array = jax.Array
KERNELS = ("auto", "xla", "cpu_bf16")


def check(kernels: str) -> str:
    """`kernels` if it names a kernel set; a ValueError listing the names otherwise."""
    if kernels not in KERNELS:
        raise ValueError(f"kernels={kernels!r}; expected one of {KERNELS}")
    return kernels


def resolve(kernels: str) -> str:
    """The kernel set that runs here: "auto" -> "cpu_bf16" on a CPU backend, else "xla"."""
    if check(kernels) != "auto":
        return kernels
    return "cpu_bf16" if jax.default_backend() == "cpu" else "xla"


def canonical_matmuls(kernels: str, dtype: jnp.dtype) -> bool:
    """Whether training matmuls take the canonical-layout `custom_vjp`s (cpu_bf16.py).

    Forced by kernels="cpu_bf16" for any dtype; "auto" takes them for bf16 compute on a CPU
    only: XLA:CPU upcasts every non-canonical bf16 dot to float32, while its float32 dots are
    fast in any layout.
    """
    if check(kernels) == "auto":
        return resolve(kernels) == "cpu_bf16" and jnp.dtype(dtype) == jnp.bfloat16
    return kernels == "cpu_bf16"


def linear(
    x: Array, kernel: Array, bias: Array | None, dtype: jnp.dtype, kernels: str = "auto"
) -> Array:
    """x[..., K] @ kernel[K, N] (+ bias[N]) in the compute `dtype`; the result in `dtype`.

    `kernel` and `bias` are the stored parameters (any float dtype); their gradients come back
    in that dtype.
    """
    if canonical_matmuls(kernels, dtype):
        return cpu_bf16.linear(x, kernel, bias, dtype)
    x = x.astype(dtype)
    y = jnp.dot(x, kernel.astype(dtype))
    return y if bias is None else y + bias.astype(dtype)


def linear_decode(
    x: Array, kernel_t: Array, bias: Array, dtype: jnp.dtype, kernels: str = "auto"
) -> Array:
    """x[..., K] @ kernel_t[N, K]^T + bias[N] for inference: the decode layout of the kernel
    (`layers.Dense(transposed=True)`). No custom gradient."""
    if resolve(kernels) == "cpu_bf16":
        return cpu_bf16.linear_decode(x, kernel_t, bias, dtype)
    x, w = x.astype(dtype), kernel_t.astype(dtype)
    return jnp.einsum("...k,nk->...n", x, w) + bias.astype(dtype)


def tied_logits(x: Array, table: Array, dtype: jnp.dtype, kernels: str = "auto") -> Array:
    """x[..., H] @ table[V, H]^T: inputs in the compute `dtype`, logits in float32."""
    rows = math.prod(x.shape[:-1])
    # A decode step's few rows on a CPU take the table-major product E x^T in float32 too: as
    # fast there as x E^T, and its [V, rows] result is what `generate.first_argmax` reads
    # (reading [rows, V] would transpose the whole logits array, ~4 ms for GPT-2 at 32 rows).
    few_rows_on_cpu = (
        resolve(kernels) == "cpu_bf16"
        and rows <= cpu_bf16.FEW_ROWS
        and cpu_bf16.transpose_output_is_cheaper(rows, *table.shape)
    )
    if canonical_matmuls(kernels, dtype) or few_rows_on_cpu:
        return cpu_bf16.tied_logits(x, table, dtype)
    x = x.astype(dtype)
    return jnp.einsum("...h,vh->...v", x, table.astype(dtype), preferred_element_type=jnp.float32)


# On a CPU the two GELUs are computed in float32 whatever x's dtype: there jax.nn.gelu in bf16
# is 2.5-3.5x slower (forward and gradient; 6% of the bert_cpu train step), and the erf form is
# faster than jax's erfc form in float32 too. With "xla", jax.nn.gelu, which XLA fuses in
# the compute dtype (float32 intermediates on an accelerator would double the GELU's saved
# activations).
def gelu(x: Array, approximate: bool, kernels: str = "auto") -> Array:
    """GELU: exact x Phi(x) (BERT) or, `approximate`, GPT-2's tanh form ("gelu_new")."""
    if resolve(kernels) != "cpu_bf16":
        return jax.nn.gelu(x, approximate=approximate)
    x32 = x.astype(jnp.float32)
    if approximate:
        inner = math.sqrt(2 / math.pi) * (x32 + 0.044715 * x32**3)
        return (0.5 * x32 * (1.0 + jnp.tanh(inner))).astype(x.dtype)
    return (x32 * 0.5 * (1.0 + lax.erf(x32 * (1 / math.sqrt(2))))).astype(x.dtype)


def cache_dtype(dtype: jnp.dtype, kernels: str = "auto") -> jnp.dtype:
    """The dtype of a decoder's KV cache for compute `dtype`.

    XLA:CPU computes a bf16 attention-over-cache product (a batched matrix-vector product) on
    float32 copies of its operands: a bf16 cache would be converted whole, in every layer at
    every step (~40 of a 75 ms GPT-2 step at batch 32). So float32 with "cpu_bf16".
    """
    return jnp.dtype(jnp.float32) if resolve(kernels) == "cpu_bf16" else jnp.dtype(dtype)


@jax.custom_vjp
def add_bias(x: Array, bias: Array) -> Array:
    """x + bias over the last axis, whose gradient for `bias` is a matmul with ones.

    Autodiff would sum the incoming gradient over the leading axes with a reduce; for the MLM
    bias ([B*P, 30522] -> [30522]) XLA:CPU's column reduction takes ~140 ms where the same sum
    as a matmul takes ~6 ms (measured on this project's 2-core Xeon, jax 0.10.2); on GPU and
    TPU the two cost about the same, so every backend takes it.
    """
    return x + bias.astype(x.dtype)


def _add_bias_fwd(x: Array, bias: Array) -> tuple[Array, Array]:
    return add_bias(x, bias), bias


def _add_bias_bwd(bias: Array, g: Array) -> tuple[Array, Array]:
    rows = g.reshape(-1, g.shape[-1])
    dbias = jnp.ones((rows.shape[0],), rows.dtype) @ rows
    return g, dbias.astype(bias.dtype)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)
