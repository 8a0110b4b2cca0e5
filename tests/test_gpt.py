"""GPT-2: logit parity with transformers' GPT2LMHeadModel, conversion both ways, presets, init.

The HF model is built offline from a GPT2Config with random weights and odd sizes (hidden 60,
5 heads of 12, inner 148, vocab 103); every parameter is perturbed (HF starts biases at 0 and
LayerNorm at 1) so that a misrouted, untransposed or mis-split tensor cannot go unnoticed.
"""

from __future__ import annotations

import json

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from bertjax import models
from bertjax.convert import from_hf, to_hf
from bertjax.models import gpt

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-4
HF_KW = dict(
    vocab_size=103,
    n_positions=48,
    n_embd=60,
    n_layer=3,
    n_head=5,
    n_inner=148,
    bos_token_id=102,
    eos_token_id=102,
)


@pytest.fixture(scope="module")
def hf_gpt2(tmp_path_factory):
    """(HF GPT2LMHeadModel with perturbed random weights, its saved directory)."""
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**HF_KW)).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    directory = tmp_path_factory.mktemp("hf_gpt2")
    model.save_pretrained(directory)
    return model, directory


def _batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, HF_KW["vocab_size"], (3, 17)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 12:] = 0  # right padding
    mask[2, :5] = 0  # left padding
    return ids, mask


def _hf_logits(model, ids, mask):
    with torch.no_grad():
        out = model(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask))
    return out.logits.numpy()


def test_logits_match_transformers(hf_gpt2):
    model, directory = hf_gpt2
    cfg, params = from_hf(directory)
    assert cfg.model_type == "gpt2" and cfg.head == "causal_lm" and cfg.hidden_act == "gelu_new"
    assert (cfg.hidden_size, cfg.num_heads, cfg.intermediate_size) == (60, 5, 148)
    ids, mask = _batch()
    ours = models.build(cfg).apply({"params": params}, {"input_ids": ids, "attention_mask": mask})
    ref = _hf_logits(model, ids, mask)
    real = mask.astype(bool)  # padded query rows are meaningless in both implementations
    diff = np.abs(np.asarray(ours["logits"]) - ref)[real].max()
    assert diff < TOL, diff
    assert ours["logits"].dtype == jnp.float32
    assert ours["hidden_states"].shape == (3, 17, 60)


def test_to_hf_loads_without_warnings_and_matches(hf_gpt2, tmp_path):
    model, directory = hf_gpt2
    cfg, params = from_hf(directory)
    to_hf(cfg, params, tmp_path / "out")
    reloaded, info = transformers.GPT2LMHeadModel.from_pretrained(
        tmp_path / "out", output_loading_info=True
    )
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, reloaded.state_dict()[name]), name
    ids, mask = _batch()
    np.testing.assert_array_equal(
        _hf_logits(reloaded.eval(), ids, mask), _hf_logits(model, ids, mask)
    )
    # And back: the round trip is exact.
    cfg2, params2 = from_hf(tmp_path / "out")
    assert cfg2 == cfg
    jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_conversion_errors_name_the_tensor(hf_gpt2, tmp_path):
    _, directory = hf_gpt2
    tensors = load_file(directory / "model.safetensors")
    config = json.loads((directory / "config.json").read_text())

    def write(name, tensors, config=config):
        d = tmp_path / name
        d.mkdir()
        save_file(tensors, d / "model.safetensors")
        (d / "config.json").write_text(json.dumps(config))
        return d

    missing = {k: v for k, v in tensors.items() if k != "transformer.h.1.mlp.c_fc.bias"}
    with pytest.raises(KeyError, match=r"h\.1\.mlp\.c_fc\.bias"):
        from_hf(write("missing", missing))
    extra = dict(tensors, **{"transformer.h.0.attn.rotary": np.zeros(3, np.float32)})
    with pytest.raises(KeyError, match="h.0.attn.rotary"):
        from_hf(write("extra", extra))
    bad = dict(tensors)
    bad["transformer.h.2.mlp.c_proj.weight"] = bad["transformer.h.2.mlp.c_proj.weight"].T.copy()
    with pytest.raises(ValueError, match=r"h\.2\.mlp\.c_proj\.weight"):
        from_hf(write("shape", bad))
    untied = dict(tensors, **{"lm_head.weight": tensors["transformer.wte.weight"] + 1})
    with pytest.raises(ValueError, match="untied"):
        from_hf(write("untied", untied))
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        from_hf(write("variant", tensors, dict(config, scale_attn_by_inverse_layer_idx=True)))


def test_old_gpt2model_layout_with_mask_buffers(hf_gpt2, tmp_path):
    """Original GPT-2 files: no `transformer.` prefix and `attn.bias` causal-mask buffers."""
    model, directory = hf_gpt2
    tensors = {
        k.removeprefix("transformer."): v
        for k, v in load_file(directory / "model.safetensors").items()
    }
    for i in range(HF_KW["n_layer"]):
        tensors[f"h.{i}.attn.bias"] = np.tril(np.ones((1, 1, 48, 48), np.float32))
    config = json.loads((directory / "config.json").read_text())
    config["architectures"] = ["GPT2Model"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file(tensors, tmp_path / "model.safetensors")
    cfg, params = from_hf(tmp_path)
    ids, mask = _batch()
    ours = models.build(cfg).apply({"params": params}, {"input_ids": ids})["logits"]
    ref = _hf_logits(model, ids, np.ones_like(mask))
    assert np.abs(np.asarray(ours) - ref).max() < TOL


def test_segment_ids_block_attention_across_documents():
    cfg = models.get_config("gpt_tiny", vocab_size=64, num_layers=1, hidden_size=32)
    model = models.build(cfg)
    ids = np.random.default_rng(0).integers(0, 64, (1, 10)).astype(np.int32)
    params = jax.jit(model.init)(jax.random.key(0), {"input_ids": ids})["params"]
    apply = jax.jit(model.apply)
    seg = np.array([[1] * 4 + [2] * 6], np.int32)
    pos = np.array([[0, 1, 2, 3, 0, 1, 2, 3, 4, 5]], np.int32)
    packed = apply({"params": params}, {"input_ids": ids, "segment_ids": seg, "positions": pos})
    alone = apply({"params": params}, {"input_ids": ids[:, 4:]})
    np.testing.assert_allclose(packed["logits"][:, 4:], alone["logits"], atol=1e-5)


def test_presets_and_parameter_count():
    small = models.get_config("gpt2")
    assert (small.num_layers, small.hidden_size, small.vocab_size) == (12, 768, 50257)
    shapes = jax.eval_shape(
        models.build(small).init, jax.random.key(0), {"input_ids": jnp.zeros((1, 8), jnp.int32)}
    )["params"]
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    assert count == 124_439_808  # GPT-2 small, tied head (the figure HF reports)
    medium = models.get_config("gpt2-medium")
    assert (medium.num_layers, medium.hidden_size, medium.num_heads) == (24, 1024, 16)
    with pytest.raises(ValueError, match="no head"):
        gpt.build(small.replace(head="pretraining"))


def test_every_parameter_has_logical_axes():
    cfg = models.get_config("gpt_tiny", vocab_size=64)
    boxed = jax.eval_shape(
        models.build(cfg).init, jax.random.key(0), {"input_ids": jnp.zeros((1, 4), jnp.int32)}
    )
    leaves = jax.tree.leaves(boxed["params"], is_leaf=lambda x: hasattr(x, "names"))
    assert leaves and all(hasattr(x, "names") and len(x.names) == x.value.ndim for x in leaves)


def test_scaled_residual_init():
    cfg = models.get_config("gpt_tiny", vocab_size=64, num_layers=8)
    shapes = jax.eval_shape(
        models.build(cfg).init, jax.random.key(0), {"input_ids": jnp.zeros((1, 4), jnp.int32)}
    )
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda s: rng.normal(size=s.shape).astype(np.float32),
        flax.linen.meta.unbox(shapes["params"]),
    )
    scaled = gpt.scale_residual_init(cfg, params)
    factor = 1 / np.sqrt(16)
    for i in range(8):
        layer, new = params[f"layer_{i}"], scaled[f"layer_{i}"]
        np.testing.assert_allclose(
            new["attention"]["out"]["kernel"],
            layer["attention"]["out"]["kernel"] * factor,
            rtol=1e-6,
        )
        np.testing.assert_allclose(
            new["mlp"]["wo"]["kernel"], layer["mlp"]["wo"]["kernel"] * factor, rtol=1e-6
        )
        np.testing.assert_array_equal(new["mlp"]["wi"]["kernel"], layer["mlp"]["wi"]["kernel"])
        np.testing.assert_array_equal(
            new["attention"]["query"]["kernel"], layer["attention"]["query"]["kernel"]
        )
