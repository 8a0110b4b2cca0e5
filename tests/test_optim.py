"""Optimizer recipes: the BERT schedule, weight-decay exclusions, LAMB's trust ratio, clipping."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from bertjax import models, optim


def _optim_config(**overrides) -> ml_collections.ConfigDict:
    values = dict(
        name="adamw",
        learning_rate=1e-2,
        warmup_steps=0,
        weight_decay=0.1,
        b1=0.9,
        b2=0.999,
        eps=1e-6,
        grad_clip_norm=0.0,
        grad_accum_steps=1,
    )
    values.update(overrides)
    return ml_collections.ConfigDict(values)


@functools.cache
def _bert_params():
    cfg = models.get_config(
        "tiny",
        vocab_size=64,
        head="pretraining",
        num_layers=1,
        hidden_size=32,
        num_heads=2,
        intermediate_size=64,
    )
    batch = models.example_batch(cfg, 1, 8)
    batch["masked_lm_positions"] = np.zeros((1, 2), np.int32)
    init = jax.jit(lambda rng: nn.meta.unbox(models.build(cfg).init(rng, batch)["params"]))
    return init(jax.random.PRNGKey(0))


def test_schedule_is_linear_warmup_then_linear_decay_to_zero():
    lr = optim.linear_warmup_linear_decay(1e-4, total_steps=100, warmup_steps=10)
    np.testing.assert_allclose(
        [lr(s) for s in (0, 5, 10, 55, 100)], [0.0, 5e-5, 1e-4, 5e-5, 0.0], atol=1e-12
    )
    no_warmup = optim.linear_warmup_linear_decay(1.0, total_steps=4, warmup_steps=0)
    np.testing.assert_allclose([no_warmup(s) for s in range(5)], [1, 0.75, 0.5, 0.25, 0])
    with pytest.raises(ValueError, match="warmup_steps=20"):
        optim.linear_warmup_linear_decay(1.0, total_steps=10, warmup_steps=20)


def test_weight_decay_skips_layer_norm_and_biases_of_the_real_model():
    params = _bert_params()
    mask = optim.weight_decay_mask(params)
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
    decayed = {k for k, v in flat.items() if v}
    assert decayed, "nothing would be decayed"
    for key in flat:
        is_norm = "norm" in key
        is_bias = key.endswith("['bias']")
        assert flat[key] == (not is_norm and not is_bias), key
    assert "['embeddings']['word_embeddings']['embedding']" in decayed
    assert "['encoder']['layer_0']['attention']['query']['kernel']" in decayed
    assert "['encoder']['layer_0']['attention_layer_norm']['scale']" not in decayed


def test_adamw_decays_kernels_but_not_layer_norm():
    params = _bert_params()
    tx, _ = optim.build(_optim_config(), total_steps=10, warmup_steps=0)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(tx.update)(zeros, tx.init(params), params)
    # Zero gradient: the whole update is -lr * weight_decay * param where decay applies.
    kernel = params["encoder"]["layer_0"]["mlp"]["wi"]["kernel"]
    np.testing.assert_allclose(
        updates["encoder"]["layer_0"]["mlp"]["wi"]["kernel"], -1e-2 * 0.1 * kernel, rtol=1e-5
    )
    assert not np.any(updates["encoder"]["layer_0"]["mlp_layer_norm"]["scale"])
    assert not np.any(updates["encoder"]["layer_0"]["mlp"]["wi"]["bias"])


def test_lamb_scales_kernels_by_trust_ratio_only():
    params = _bert_params()
    tx, _ = optim.build(
        _optim_config(name="lamb", weight_decay=0.0), total_steps=10, warmup_steps=0
    )
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    kernel = params["encoder"]["layer_0"]["mlp"]["wo"]["kernel"]
    update = updates["encoder"]["layer_0"]["mlp"]["wo"]["kernel"]
    # Trust ratio: the step of a kernel is lr * ||w||, whatever the gradient's scale.
    np.testing.assert_allclose(np.linalg.norm(update), 1e-2 * np.linalg.norm(kernel), rtol=1e-4)
    # A bias gets plain Adam: the first step is lr * g / |g| per element.
    bias_update = updates["encoder"]["layer_0"]["mlp"]["wo"]["bias"]
    np.testing.assert_allclose(bias_update, -1e-2, rtol=1e-4)


def test_global_norm_clipping_runs_before_adam():
    params = {"w": jnp.ones((4,))}
    grads = {"w": jnp.full((4,), 3.0)}
    unclipped, _ = optim.build(_optim_config(weight_decay=0.0), 10, 0)
    clipped, _ = optim.build(_optim_config(weight_decay=0.0, grad_clip_norm=1e-9), 10, 0)
    big, _ = jax.jit(unclipped.update)(grads, unclipped.init(params), params)
    small, _ = jax.jit(clipped.update)(grads, clipped.init(params), params)
    np.testing.assert_allclose(big["w"], -1e-2, rtol=1e-5)  # Adam's first step: lr * sign
    # Clipped to a norm of 1e-9, the gradient is far below Adam's eps: a tiny step.
    assert np.all(np.abs(small["w"]) < 1e-4)
    assert isinstance(clipped, optax.GradientTransformation)


def test_unknown_optimizer_is_an_error_naming_the_key():
    with pytest.raises(ValueError, match="config.optim.name='sgd'"):
        optim.build(_optim_config(name="sgd"), 10, 0)
