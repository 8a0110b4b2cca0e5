"""bertjax.kernels (cpu_bf16): the canonical-layout bf16 path of XLA:CPU.

The path must (1) compute what the plain formulas compute, values and gradients, and (2) keep
every bf16 matmul of the forward AND backward pass in the layout XLA:CPU runs natively: a
compiler change that folds `materialized_transpose` back into a dot would silently make bf16
training 1.7x slower (measured on the bert_cpu benchmark row), and only the HLO shows it.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bertjax import kernels, models
from bertjax.kernels import cpu_bf16
from bertjax.models import attention

BF16, F32 = jnp.bfloat16, jnp.float32

pytestmark = pytest.mark.skipif(
    jax.default_backend() != "cpu", reason="the canonical path is XLA:CPU's"
)


def _normal(seed: int, shape: tuple[int, ...], dtype=F32) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), shape, F32).astype(dtype)


def _close(a: jax.Array, b: jax.Array, rel: float) -> None:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    np.testing.assert_allclose(a, b, atol=rel * float(np.abs(b).max()), rtol=0)


def _bf16_dots_not_upcast(hlo: str) -> list[str]:
    """The matrix-matrix dots of an optimized HLO module whose operands are not both bf16.

    Names are looked up per computation: fused computations reuse `param_0` and the like.
    Matrix-vector dots (an operand with a unit dimension, e.g. a bias gradient as a sum with
    a ones vector) are left out: YNNPACK takes no vector dots in any dtype.
    """
    bad = []
    for block in hlo.split("\n\n"):
        shapes = dict(re.findall(r"%([\w.\-]+) = (\w+\[[\d,]*\])", block))
        for line in block.splitlines():
            m = re.search(r"= \w+\[[^\]]*\](?:\{[^}]*\})? dot\(%([\w.\-]+), %([\w.\-]+)\)", line)
            if not m:
                continue
            operands = [shapes.get(name, "?[]") for name in m.groups()]
            dims = [re.findall(r"\d+", shape.split("[", 1)[1]) for shape in operands]
            if any(d == "1" for ds in dims for d in ds):
                continue
            if {shape.split("[")[0] for shape in operands} != {"bf16"}:
                bad.append(line.strip()[:160])
    return bad


def test_the_path_is_taken_only_for_bf16_on_cpu():
    assert kernels.canonical_matmuls("auto", BF16)
    assert not kernels.canonical_matmuls("auto", F32)


def test_materialized_transpose_is_a_transpose():
    a = _normal(0, (3, 5, 7, 2))
    np.testing.assert_array_equal(cpu_bf16.materialized_transpose(a), jnp.swapaxes(a, -1, -2))
    perm = (0, 2, 1, 3)
    np.testing.assert_array_equal(cpu_bf16.materialized_transpose(a, perm), jnp.transpose(a, perm))


def _linear_loss(x, kernel, bias, g):
    return jnp.sum(kernels.linear(x, kernel, bias, BF16).astype(F32) * g)


def _linear_reference_loss(x, kernel, bias, g):
    # The plain formula on the same bf16-rounded inputs, in float32.
    x, w = x.astype(BF16).astype(F32), kernel.astype(BF16).astype(F32)
    return jnp.sum((x @ w + bias) * g)


def test_linear_values_and_gradients_match_the_formula():
    x, kernel, bias = _normal(0, (4, 6, 32)), _normal(1, (32, 48)), _normal(2, (48,))
    g = _normal(3, (4, 6, 48))
    y = kernels.linear(x, kernel, bias, BF16)
    assert y.dtype == BF16 and y.shape == (4, 6, 48)
    _close(y, x.astype(BF16).astype(F32) @ kernel.astype(BF16).astype(F32) + bias, 1e-2)
    ours = jax.grad(_linear_loss, argnums=(0, 1, 2))(x, kernel, bias, g)
    reference = jax.grad(_linear_reference_loss, argnums=(0, 1, 2))(x, kernel, bias, g)
    for name, a, b in zip(("x", "kernel", "bias"), ours, reference, strict=True):
        assert a.dtype == F32, name  # gradients come back in the dtype of the input
        _close(a, b, 2e-2)


@pytest.mark.parametrize("dtype", [BF16, F32], ids=["bfloat16", "float32"])
@pytest.mark.parametrize("rows", [1, 3, 40], ids=["one_row", "few_rows", "many_rows"])
def test_tied_logits_values_and_gradients_match_the_formula(rows, dtype):
    # 1 and 3 rows against a 64 x 16 table take the (E x^T)^T branch (in float32 too; one
    # bf16 row is doubled), 40 rows the x E^T one (in float32: the plain einsum).
    x, table, g = _normal(0, (rows, 16)), _normal(1, (64, 16)), _normal(2, (rows, 64))
    tolerance = 1e-2 if dtype == BF16 else 1e-5

    def ours(x, table):
        return jnp.sum(kernels.tied_logits(x, table, dtype) * g)

    def reference(x, table):
        return jnp.sum((x.astype(dtype).astype(F32) @ table.astype(dtype).astype(F32).T) * g)

    logits = kernels.tied_logits(x, table, dtype)
    assert logits.dtype == F32
    _close(logits, x.astype(dtype).astype(F32) @ table.astype(dtype).astype(F32).T, tolerance)
    got, want = jax.grad(ours, (0, 1))(x, table), jax.grad(reference, (0, 1))(x, table)
    for a, b in zip(got, want, strict=True):
        _close(a, b, 2 * tolerance)


def _attention_masks(b: int, t: int) -> dict[str, jax.Array]:
    positions = jnp.arange(t)
    lengths = jnp.array([t, t // 2 + 1])
    padding = positions[None, None, None, :] < lengths[:, None, None, None]
    causal = positions[None, None, None, :] <= positions[None, None, :, None]
    # Packed rows: two segments, then padding (segment 0) whose queries attend to no key.
    segments = jnp.where(positions < t // 3, 1, jnp.where(positions < t - 3, 2, 0))
    segments = jnp.stack([segments, jnp.where(positions < t // 2, 1, 0)])
    same = segments[:, None, :, None] == segments[:, None, None, :]
    packed = same & (segments[:, None, None, :] != 0)
    return {"padding_and_causal": padding & causal, "packed_with_empty_rows": packed}


@pytest.mark.parametrize("mask_name", ["none", "padding_and_causal", "packed_with_empty_rows"])
def test_attention_values_and_gradients_match_jax_attention(mask_name):
    b, t, n, d = 2, 16, 3, 8
    q, k, v = (_normal(i, (b, t, n, d), BF16) for i in range(3))
    g = _normal(3, (b, t, n, d))  # nonzero at every position, padding included
    mask = None if mask_name == "none" else _attention_masks(b, t)[mask_name]

    def loss(fn, q, k, v):
        return jnp.sum(fn(q, k, v).astype(F32) * g)

    def ours(q, k, v):
        return attention.cpu_attention(q, k, v, mask)

    def reference(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")

    _close(ours(q, k, v), reference(q, k, v), 1e-2)
    got = jax.grad(lambda *a: loss(ours, *a), (0, 1, 2))(q, k, v)
    want = jax.grad(lambda *a: loss(reference, *a), (0, 1, 2))(q, k, v)
    for a, b_ in zip(got, want, strict=True):
        _close(a, b_, 2e-2)


@pytest.mark.parametrize("dtype", [F32, BF16])
def test_attention_with_dropout_matches_the_reference_formula_with_the_same_mask(dtype):
    """The CPU core drops the probabilities the reference formula drops, forward and backward."""
    from bertjax.models import dropout

    b, t, n, d = 2, 16, 3, 8
    q, k, v = (_normal(i, (b, t, n, d), dtype) for i in range(3))
    g = _normal(3, (b, t, n, d))
    mask = _attention_masks(b, t)["padding_and_causal"]
    keep, scale = dropout.keep_mask(jax.random.key(7), (b, n, t, t), 0.25)
    assert 0.2 < 1 - float(jnp.mean(keep)) < 0.3

    def ours(q, k, v):
        return attention.cpu_attention(q, k, v, mask, keep, scale)

    def reference(q, k, v):
        drop = functools.partial(dropout.apply_keep, keep, scale)
        return attention.reference_attention(q, k, v, mask, dropout=drop)

    def loss(fn, q, k, v):
        return jnp.sum(fn(q, k, v).astype(F32) * g)

    tol = 1e-5 if dtype == F32 else 2e-2
    _close(ours(q, k, v), reference(q, k, v), tol)
    got = jax.grad(lambda *a: loss(ours, *a), (0, 1, 2))(q, k, v)
    want = jax.grad(lambda *a: loss(reference, *a), (0, 1, 2))(q, k, v)
    for a, b_ in zip(got, want, strict=True):
        _close(a, b_, tol)
    # ... and dropping changes the result (the mask is applied at all)
    assert float(jnp.max(jnp.abs(ours(q, k, v) - attention.cpu_attention(q, k, v, mask)))) > 0.1


def test_every_bf16_matmul_of_a_training_step_stays_on_the_fast_path():
    """Forward and backward of a whole BERT pretraining loss, compiled for this CPU."""
    cfg = models.get_config(
        "tiny", vocab_size=96, max_position_embeddings=32, head="pretraining", dtype="bfloat16"
    )
    cfg = cfg.replace(attention_dropout=0.0)  # the fused attention path, as the benchmarks
    model = models.build(cfg)
    batch = models.example_batch(cfg)
    params = jax.jit(model.init)(jax.random.key(0), batch)["params"]

    def loss(params):
        out = model.apply({"params": params}, batch, train=False)
        return sum(jnp.sum(v.astype(F32)) for v in jax.tree.leaves(out))

    hlo = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
    assert len(re.findall(r" dot\(", hlo)) >= 20  # the model's matmuls are all there
    assert _bf16_dots_not_upcast(hlo) == []


def test_the_upcast_detector_sees_an_upcast_dot():
    """The HLO check above can fail: a plain bf16 x^T-style dot is upcast by XLA:CPU."""
    x, w = _normal(0, (64, 32), BF16), _normal(1, (48, 32), BF16)
    hlo = jax.jit(lambda x, w: x @ w.T).lower(x, w).compile().as_text()
    assert _bf16_dots_not_upcast(hlo) != []


@pytest.mark.parametrize("dtype", [F32, BF16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("rows", [1, 5, 300], ids=["one_row", "few_rows", "many_rows"])
def test_linear_decode_is_x_times_the_transposed_kernel(rows, dtype):
    # 1 and 5 rows take the (W^T x^T)^T branch (one bf16 row is doubled), 300 the block one.
    x, kernel_t, bias = _normal(0, (rows, 32)), _normal(1, (48, 32)), _normal(2, (48,))
    y = kernels.linear_decode(x, kernel_t, bias, dtype)
    assert y.dtype == dtype and y.shape == (rows, 48)
    want = x.astype(dtype).astype(F32) @ kernel_t.astype(dtype).astype(F32).T + bias
    _close(y, want, 1e-2 if dtype == BF16 else 1e-5)
