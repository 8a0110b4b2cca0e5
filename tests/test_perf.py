"""The fast path and the speed benchmark: FLOP formula, attention dispatch, bias gradient,
profile window, and benchmarks/train_speed.py end to end on a tiny row."""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bertjax import kernels, models, tasks
from bertjax.models import attention
from bertjax.profiling import parse_profile_steps

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import train_speed  # noqa: E402

TINY_BERT = train_speed.Row("tiny_bert", "bert", 2, 64, 2, 128, 512, 32, (4,), 5, 64)
TINY_GPT = train_speed.Row("tiny_gpt", "gpt", 2, 64, 2, 128, 512, 32, (4,), max_positions=64)


def _args(**overrides) -> argparse.Namespace:
    values = dict(dtype="float32", remat="none", attention_impl="xla", torch_compile=False)
    return argparse.Namespace(**{**values, **overrides})


@pytest.mark.parametrize("row", [TINY_BERT, TINY_GPT], ids=lambda r: r.family)
def test_flop_formula_matches_the_matmuls_of_the_train_step(row):
    """flops_per_step = every dot_general of loss + gradients, minus two known differences."""
    batch_size = 4
    config = train_speed.bertjax_config(row, batch_size, _args())
    task = tasks.get(config.task)
    model_cfg, model = task.build_model(config, None)
    batch = {k: jnp.asarray(v) for k, v in train_speed.make_batches(row, batch_size, 1)[0].items()}
    params = jax.jit(model.init)(jax.random.key(0), batch)["params"]
    params = jax.tree.map(lambda x: getattr(x, "value", x), params)

    def grads(p):
        return jax.grad(
            lambda q: task.loss_fn(config, model, q, batch, jax.random.key(1), True)[0]
        )(p)

    counted = train_speed.matmul_flops(grads, params)
    formula = train_speed.flops_per_step(row, batch_size)
    h, t, n = row.hidden, row.seq, batch_size * row.seq
    if row.family == "bert":
        # The MLM bias gradient is a matmul with ones (kernels.add_bias): 2 B P V, not model work.
        extra = 2 * batch_size * row.max_predictions * row.vocab
    else:
        # XLA's attention multiplies every (query, key) pair; causal MFU credits only those a
        # query may see, (T+1)/2 on average.
        extra = 3 * row.layers * n * 4 * h * (t - (t + 1) / 2)
    assert counted == pytest.approx(formula + extra, rel=1e-9)


def test_parse_profile_steps():
    assert parse_profile_steps("", 0) is None and parse_profile_steps(0, 7) is None
    assert parse_profile_steps("10,15", 0) == (10, 15)
    assert parse_profile_steps(5, 0) == (4, 9)  # past compilation: steps 4..8
    assert parse_profile_steps("2", 100) == (104, 106)  # after a restart at step 100
    for bad in ("15,10", "0,3", "x", "1,2,3", -2):
        with pytest.raises(ValueError, match="config.profile_steps"):
            parse_profile_steps(bad, 0)


def test_add_bias_gradient_equals_autodiff():
    x = jax.random.normal(jax.random.key(0), (3, 5, 7))
    bias = jax.random.normal(jax.random.key(1), (7,))
    cot = jax.random.normal(jax.random.key(2), (3, 5, 7))

    def f(add):
        return jax.grad(lambda x, b: jnp.sum(add(x, b) * cot), argnums=(0, 1))(x, bias)

    fast = f(kernels.add_bias)
    plain = f(lambda x, b: x + b)
    for a, b in zip(fast, plain, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_attention_mask_forms_and_auto_dispatch_on_cpu():
    b, t, n, d = 2, 8, 2, 8
    q, k, v = (jax.random.normal(jax.random.key(i), (b, t, n, d)) for i in range(3))
    padding = jnp.array([[1] * 8, [1] * 5 + [0] * 3])
    segments = jnp.array([[1, 1, 1, 2, 2, 2, 2, 2], [1, 1, 2, 2, 2, 0, 0, 0]])
    for mask in (
        attention.AttentionMask(key_padding=padding),
        attention.AttentionMask(causal=True),
        attention.AttentionMask(key_padding=padding, segment_ids=segments, causal=True),
    ):
        dense = attention.make_attention_mask(
            t, mask.key_padding, causal=mask.causal, segment_ids=mask.segment_ids
        )
        np.testing.assert_array_equal(mask.dense(t), dense)
        for impl in ("auto", "xla"):
            out = attention.fused_attention(q, k, v, mask, impl)
            np.testing.assert_allclose(
                out, attention.reference_attention(q, k, v, dense), atol=1e-5, rtol=1e-5
            )
    # On this CPU, "auto" is XLA and says why not cuDNN.
    assert attention.cudnn_unsupported_reason(q.astype(jnp.bfloat16), k, False) is not None
    assert models.get_config("tiny").attention_impl == "auto"


def test_train_speed_benchmark_runs_and_prints_the_table(tmp_path, monkeypatch, capsys):
    """The benchmark end to end on tiny rows, next to transformers (1 round of 1 step)."""
    pytest.importorskip("torch")
    monkeypatch.setitem(train_speed.ROWS, "tiny_bert", TINY_BERT)
    monkeypatch.setitem(train_speed.ROWS, "tiny_gpt", TINY_GPT)
    out = tmp_path / "table.md"
    train_speed.main(
        [
            "--configs=tiny_bert:4,tiny_gpt:4",
            "--rounds=1",
            "--steps=1",
            "--warmup=1",
            "--num_batches=2",
            "--devices=2",
            f"--out={out}",
        ]
    )
    table = out.read_text()
    assert "| tiny_bert | 2 | 4 | 32 |" in table and "| tiny_gpt | 2 | 4 | 32 |" in table
    lines = [line for line in table.splitlines() if line.startswith("| tiny_")]
    assert len(lines) == 2
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert float(cells[5]) > 0  # steps/s
        assert cells[-1].endswith("x")  # the ratio to transformers
    assert "FLOP" in table and "none (no MFU on CPU)" in table
    assert "| tiny_bert |" in capsys.readouterr().out
