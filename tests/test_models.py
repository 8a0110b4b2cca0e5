"""bertjax.models: config, logical axis names, precision, dropout, remat, masks, KV cache.

Parity with the transformers reference lives in tests/test_convert.py.
"""

from __future__ import annotations

import functools
import inspect
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from bertjax import models
from bertjax.models import attention, layers

PARAM_AXES = {"vocab", "embed", "mlp", "heads", "kv", "position", "type_vocab", "norm", "labels"}


def tiny(**overrides) -> models.ModelConfig:
    base = dict(vocab_size=96, max_position_embeddings=32, head="pretraining", num_labels=3)
    return models.get_config("tiny", **{**base, **overrides})


def batch(cfg: models.ModelConfig, b: int = 4, t: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """Random ids; row 1 padded from t/2 on; segment B from t/3 on."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, cfg.vocab_size, (b, t)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, t // 2 :] = 0
    ids[mask == 0] = 0
    types = (np.arange(t)[None, :] >= t // 3).astype(np.int32).repeat(b, 0) * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


# Compiles are what makes these tests slow on a small CPU: init and jitted applies are cached
# per config and shared between tests.
@functools.cache
def init_boxed(cfg: models.ModelConfig, seed: int = 0):
    model = models.build(cfg)
    return jax.jit(model.init)(jax.random.key(seed), models.example_batch(cfg))["params"]


def init(cfg: models.ModelConfig, seed: int = 0):
    return meta.unbox(init_boxed(cfg, seed))


@functools.cache
def _jitted_apply(cfg: models.ModelConfig, train: bool):
    model = models.build(cfg)

    def run(params, b, rng):
        rngs = None if rng is None else {"dropout": rng}
        return model.apply({"params": params}, b, train=train, rngs=rngs)

    return jax.jit(run)


def apply(cfg: models.ModelConfig, params, b, train: bool = False, rng=None):
    return _jitted_apply(cfg, train)(params, b, rng)


def dropout_key(seed: int) -> jax.Array:
    # "rbg" keys compile dropout masks several seconds faster than threefry on CPU.
    return jax.random.key(seed, impl="rbg")


def max_diff(a, b) -> float:
    return float(jnp.max(jnp.abs(jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32))))


# ----------------------------------------------------------------------------- config


def test_bert_presets_are_the_published_sizes():
    bert_presets = ("tiny", "mini", "small", "medium", "base", "large")
    sizes = {
        name: (c.num_layers, c.hidden_size, c.num_heads, c.intermediate_size)
        for name in bert_presets
        for c in [models.get_config(name)]
    }
    assert all(models.get_config(name).model_type == "bert" for name in bert_presets)
    assert sizes == {
        "tiny": (2, 128, 2, 512),
        "mini": (4, 256, 4, 1024),
        "small": (4, 512, 8, 2048),
        "medium": (8, 512, 8, 2048),
        "base": (12, 768, 12, 3072),
        "large": (24, 1024, 16, 4096),
    }


def test_config_round_trip_and_errors():
    cfg = tiny(head="pretraining", dtype="bfloat16", remat="full")
    assert models.ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="'hiden_size'"):
        models.ModelConfig.from_dict({**cfg.to_dict(), "hiden_size": 3})
    with pytest.raises(ValueError, match="'num_layer'"):
        models.get_config("tiny", num_layer=3)
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        models.get_config("huge")
    with pytest.raises(ValueError, match="head='decoder'"):
        tiny(head="decoder")
    with pytest.raises(ValueError, match="not divisible"):
        tiny(num_heads=3)


# ----------------------------------------------------------------------------- sharding names


@pytest.mark.parametrize("head", ["encoder", "pretraining", "mlm", "classification"])
def test_every_param_has_logical_axis_names(head):
    cfg = tiny(head=head)
    variables = jax.eval_shape(
        lambda: models.build(cfg).init(jax.random.key(0), models.example_batch(cfg))
    )
    leaves = jax.tree_util.tree_leaves_with_path(
        variables["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned)
    )
    assert leaves
    for path, leaf in leaves:
        name = jax.tree_util.keystr(path)
        assert isinstance(leaf, nn.LogicallyPartitioned), f"{name} has no logical axis names"
        assert len(leaf.names) == leaf.value.ndim, f"{name}: {leaf.names} vs {leaf.value.shape}"
        assert set(leaf.names) <= PARAM_AXES, f"{name}: unknown axis names {leaf.names}"
        # Two axes of one tensor must never map to the same mesh axis.
        assert len(set(leaf.names)) == len(leaf.names), f"{name}: repeated axis {leaf.names}"


def test_sharded_apply_on_8_devices_matches_unsharded():
    """Params and activations sharded by their logical names with bertjax.sharding's default
    rules over a (data=2, fsdp=2, tensor=2) mesh give the unsharded outputs."""
    if jax.device_count() < 8:
        pytest.skip("needs 8 (fake) devices")
    from bertjax.sharding import DEFAULT_RULES

    cfg = tiny()
    model = models.build(cfg)
    boxed, params = init_boxed(cfg), init(cfg)
    b = batch(cfg, b=4)
    expected = apply(cfg, params, b)

    mesh = jax.make_mesh(
        (2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3
    )
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, DEFAULT_RULES)
        params_sharded = jax.device_put(params, shardings)
        kernel = params_sharded["encoder"]["layer_0"]["mlp"]["wi"]["kernel"]
        assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
        out = jax.jit(lambda p, x: model.apply({"params": p}, x))(params_sharded, b)
    for key in expected:
        assert max_diff(out[key], expected[key]) < 1e-5, key


# ----------------------------------------------------------------------------- precision


def test_bfloat16_compute_close_to_float32():
    """float32 params, bfloat16 compute. Measured on this config: hidden states max|diff| 0.043
    (1.2% of max|h| = 3.5), MLM logits 0.0068 (0.8% of max|logit|), pooled 0.0036 (0.7%).
    Bounds below: about twice those, relative to the float32 output's largest magnitude."""
    cfg = tiny()
    params = init(cfg)
    b = batch(cfg, t=32)
    f32 = apply(cfg, params, b)
    bf16 = apply(cfg.replace(dtype="bfloat16"), params, b)
    assert bf16["hidden_states"].dtype == jnp.bfloat16  # the compute really ran in bfloat16
    assert bf16["mlm_logits"].dtype == jnp.float32  # logits always float32
    assert jax.tree.leaves(params)[0].dtype == jnp.float32
    bounds = {"hidden_states": 0.025, "pooled": 0.015, "mlm_logits": 0.015}
    for key, bound in bounds.items():
        rel = max_diff(bf16[key], f32[key]) / float(jnp.max(jnp.abs(f32[key])))
        print(f"bf16 vs f32 {key}: max|diff| / max|f32| = {rel:.4f} (bound {bound})")
        assert 0 < rel < bound, key


def test_bfloat16_params():
    cfg = tiny(head="classification", dtype="bfloat16", param_dtype="bfloat16")
    params = init(cfg)
    assert {x.dtype for x in jax.tree.leaves(meta.unbox(params))} == {jnp.dtype(jnp.bfloat16)}
    out = apply(cfg, params, batch(cfg))
    assert out["logits"].dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out["logits"])))


# ----------------------------------------------------------------------------- behaviour


def test_outputs_shapes_and_optional_inputs():
    cfg = tiny()
    model, params = models.build(cfg), init(cfg)
    b = batch(cfg)
    out = apply(cfg, params, b)
    assert out["hidden_states"].shape == (4, 16, 128)
    assert out["pooled"].shape == (4, 128)
    assert out["mlm_logits"].shape == (4, 16, 96)
    assert out["nsp_logits"].shape == (4, 2)
    # token_type_ids absent == all zeros; attention_mask absent == all ones.
    ids_only = apply(cfg, params, {"input_ids": b["input_ids"]})
    explicit = apply(
        cfg,
        params,
        {
            "input_ids": b["input_ids"],
            "token_type_ids": np.zeros_like(b["input_ids"]),
            "attention_mask": np.ones_like(b["input_ids"]),
        },
    )
    assert max_diff(ids_only["mlm_logits"], explicit["mlm_logits"]) == 0
    # Padding changes nothing for the real tokens of a row: row 1 alone, cut to its length.
    cut = {k: v[1:2, :8] for k, v in b.items()}
    alone = apply(cfg, params, cut)
    assert max_diff(alone["hidden_states"], out["hidden_states"][1:2, :8]) < 1e-5

    with pytest.raises(ValueError, match="sequence length 40 > max_position_embeddings 32"):
        model.apply({"params": params}, {"input_ids": np.zeros((1, 40), np.int32)})


def test_dropout_only_in_training():
    cfg = tiny()
    model, params = models.build(cfg), init(cfg)
    b = batch(cfg)
    assert inspect.signature(type(model).__call__).parameters["train"].default is False
    eval1 = apply(cfg, params, b)["nsp_logits"]
    assert max_diff(eval1, apply(cfg, params, b)["nsp_logits"]) == 0
    t1 = apply(cfg, params, b, train=True, rng=dropout_key(1))
    t2 = apply(cfg, params, b, train=True, rng=dropout_key(2))
    assert max_diff(t1["nsp_logits"], t2["nsp_logits"]) > 0
    assert max_diff(t1["nsp_logits"], eval1) > 0
    with pytest.raises(Exception, match="dropout"):
        jax.eval_shape(lambda: model.apply({"params": params}, b, train=True))


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_rate_and_expectation(rate):
    """The 16-bit coins drop `rate` of the elements (odd widths too) and keep the mean."""
    x = jnp.ones((64, 257), jnp.float32)  # odd last axis: the two halves of a word overlap
    layer = layers.Dropout(rate)
    y = layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
    dropped = float(jnp.mean(y == 0))
    assert abs(dropped - rate) < 4 * (rate * (1 - rate) / x.size) ** 0.5  # 4 sigma
    assert abs(float(jnp.mean(y)) - 1.0) < 0.03
    values = np.unique(np.asarray(y))
    assert len(values) == 2 and values[0] == 0
    np.testing.assert_allclose(values[1], 1 / (1 - rate), rtol=1e-4)
    # the first and second halves of the last axis use different bits of the same words
    assert not np.array_equal(np.asarray(y[:, :128] == 0), np.asarray(y[:, 128:256] == 0))
    assert layer.apply({}, x, deterministic=True) is x


def test_remat_same_loss_and_grads():
    """remat="full" (policy None) gives the loss and gradients of no remat."""
    cfg = tiny(num_layers=1)
    params = init(cfg)
    b = batch(cfg)

    def loss_and_grads(c):
        def loss(p):
            out = models.build(c).apply(
                {"params": p}, b, train=True, rngs={"dropout": dropout_key(0)}
            )
            return jnp.mean(out["mlm_logits"] ** 2) + jnp.mean(out["nsp_logits"] ** 2)

        return jax.jit(jax.value_and_grad(loss))(params)

    l0, g0 = loss_and_grads(cfg)
    l1, g1 = loss_and_grads(cfg.replace(remat="full"))
    assert abs(float(l0) - float(l1)) < 1e-6
    assert max(jax.tree.leaves(jax.tree.map(max_diff, g0, g1))) < 1e-6
    # The other policies are names for jax.checkpoint_policies.
    assert callable(layers.remat_policy("dots_saveable"))
    with pytest.raises(ValueError, match="'dots'"):
        layers.remat_policy("dots")


def test_reference_attention_equals_xla_path():
    cfg = tiny()
    params, b = init(cfg), batch(cfg)
    xla = apply(cfg, params, b)
    ref = apply(cfg.replace(attention_impl="reference"), params, b)
    assert max_diff(xla["mlm_logits"], ref["mlm_logits"]) < 1e-5


# ----------------------------------------------------------------------------- layers: masks, cache


def layer_setup(pre_ln: bool, t: int = 10, b: int = 2, decode: bool = False):
    cfg = tiny(hidden_dropout=0.0, attention_dropout=0.0)
    layer = layers.TransformerLayer(cfg, pre_ln=pre_ln, decode=decode)
    x = jax.random.normal(jax.random.key(0), (b, t, cfg.hidden_size))
    variables = jax.jit(layer.init, static_argnums=3)(jax.random.key(1), x, None, True)
    return cfg, jax.jit(layer.apply, static_argnums=3), variables, x


def test_segment_ids_isolate_packed_sequences():
    """Two sequences packed in one row give the outputs each gives alone (bidirectional, causal)."""
    _, layer_apply, variables, x = layer_setup(pre_ln=False, t=10, b=1)
    seg = jnp.array([[1, 1, 1, 1, 2, 2, 2, 2, 2, 2]])
    for causal in (False, True):
        mask = attention.make_attention_mask(10, causal=causal, segment_ids=seg)
        packed = layer_apply(variables, x, mask, True)
        for lo, hi in ((0, 4), (4, 10)):
            alone_mask = attention.make_attention_mask(hi - lo, causal=causal)
            alone = layer_apply(variables, x[:, lo:hi], alone_mask, True)
            assert max_diff(packed[:, lo:hi], alone) < 1e-5


def test_causal_mask_hides_the_future():
    _, layer_apply, variables, x = layer_setup(pre_ln=True)
    mask = attention.make_attention_mask(10, causal=True)
    out = layer_apply(variables, x, mask, True)
    changed = layer_apply(variables, x.at[:, 6:].set(0.0), mask, True)
    assert max_diff(out[:, :6], changed[:, :6]) < 1e-6
    assert max_diff(out[:, 6:], changed[:, 6:]) > 1e-3


class CausalStack(nn.Module):
    """A tiny GPT-style pre-LN decoder stack on input vectors, to test the KV cache."""

    cfg: models.ModelConfig
    decode: bool = False

    @nn.compact
    def __call__(self, x, decode_lengths=None):
        mask = None if self.decode else attention.make_attention_mask(x.shape[1], causal=True)
        for i in range(self.cfg.num_layers):
            x = layers.TransformerLayer(self.cfg, pre_ln=True, decode=self.decode, name=f"l{i}")(
                x, mask, True, decode_lengths
            )
        return x


def test_kv_cache_decoding_equals_full_causal_forward():
    """Prompts of different lengths: prefill (right-padded), then one token per step."""
    cfg = tiny(hidden_dropout=0.0, attention_dropout=0.0)
    b, t = 3, 12
    x = jax.random.normal(jax.random.key(0), (b, t, cfg.hidden_size))
    full_model, dec_model = CausalStack(cfg), CausalStack(cfg, decode=True)
    params = jax.jit(full_model.init)(jax.random.key(1), x)["params"]
    full = jax.jit(full_model.apply)({"params": params}, x)

    zeros = jnp.zeros((b, t, cfg.hidden_size))
    cache = jax.jit(dec_model.init)(jax.random.key(1), zeros)["cache"]
    decode_shapes = jax.eval_shape(dec_model.init, jax.random.key(1), zeros)["params"]
    params = layers.to_decode_layout(params, decode_shapes)
    decode = jax.jit(functools.partial(dec_model.apply, mutable=["cache"]))
    lengths = jnp.array([3, 5, 1])
    prompt_len = int(lengths.max())
    # Right-padded prompts: the pad slots hold garbage that the decode steps overwrite.
    prompts = jnp.where(
        jnp.arange(prompt_len)[None, :, None] < lengths[:, None, None], x[:, :prompt_len], 7.0
    )
    out, mutated = decode({"params": params, "cache": cache}, prompts, lengths)
    cache = mutated["cache"]
    for row in range(b):
        n = int(lengths[row])
        assert max_diff(out[row, :n], full[row, :n]) < 1e-5
    # One write slot for all rows; a row's padding slots are never valid (never attended).
    assert int(cache["l0"]["attention"]["cache_index"]) == prompt_len
    valid = np.asarray(cache["l0"]["attention"]["cached_valid"])
    np.testing.assert_array_equal(valid[:, :prompt_len], np.arange(prompt_len) < lengths[:, None])
    assert not valid[:, prompt_len:].any()

    positions = lengths
    for _ in range(t - prompt_len):
        step_in = x[jnp.arange(b), positions][:, None, :]
        step_out, mutated = decode({"params": params, "cache": cache}, step_in)
        cache = mutated["cache"]
        assert max_diff(step_out[:, 0], full[jnp.arange(b), positions]) < 1e-5
        positions = positions + 1


@pytest.mark.parametrize("head", ["classification", "question_answering", "token_classification"])
def test_head_init_normal_is_transformers_and_truncated_normal_is_berts(head):
    """The task head's kernel: "normal" has std initializer_range and values past 2 std (as
    transformers' BertFor* heads); "truncated_normal" none past 2 std and std 0.88 x range (as
    google-research/bert's). The encoder's kernels are the truncated normal either way."""
    labels = 2 if head == "question_answering" else 600
    stds = {}
    for kind in ("normal", "truncated_normal"):
        cfg = models.get_config(
            "tiny", vocab_size=64, head=head, num_labels=labels, head_init=kind,
            initializer_range=0.02,
        )  # fmt: skip
        batch = {"input_ids": jnp.ones((1, 4), jnp.int32)}
        params = meta.unbox(models.build(cfg).init(jax.random.key(0), batch)["params"])
        name = "qa_outputs" if head == "question_answering" else "classifier"
        kernel = np.asarray(params[name]["kernel"])
        encoder = np.asarray(jax.tree.leaves(params["encoder"])[0])
        assert np.abs(encoder).max() <= 0.04 + 1e-7, kind
        np.testing.assert_array_equal(np.asarray(params[name]["bias"]), 0.0)
        stds[kind] = (kernel.std(), np.abs(kernel).max())
    tolerance = 0.1 if head == "question_answering" else 0.02  # 256 vs 76,800 draws
    assert abs(stds["normal"][0] / 0.02 - 1) < tolerance
    assert stds["normal"][1] > 0.04
    assert abs(stds["truncated_normal"][0] / (0.02 * 0.8796) - 1) < tolerance
    assert stds["truncated_normal"][1] <= 0.04 + 1e-7
    with pytest.raises(ValueError, match="head_init='uniform'"):
        models.get_config("tiny", head_init="uniform")


def test_finetuning_configs_default_to_transformers_head_init():
    from bertjax import config_lib
    from bertjax.tasks import finetune

    configs = pathlib.Path(__file__).resolve().parents[1] / "configs"
    for name in ("classify.py", "glue.py:sst2", "ner.py", "squad.py"):
        config = config_lib.load(str(configs / name), {"model.preset": "tiny"})
        assert config.model.head_init == "normal", name
    overrides = {"model.preset": "tiny", "model.head_init": "truncated_normal"}
    config = config_lib.load(str(configs / "classify.py"), overrides)
    assert finetune.model_config(config, 100, 3).head_init == "truncated_normal"
