"""Hugging Face GPT-2 (`GPT2LMHeadModel` / `GPT2Model`) <-> bertjax GPT-2 parameters.

    from bertjax.convert import from_hf, to_hf    # dispatch on config.json's model_type
    cfg, params = from_hf("path/to/gpt2")         # config.json + model.safetensors
    to_hf(cfg, params, "out_dir")                 # loads with GPT2LMHeadModel.from_pretrained

This module is the "gpt2" entry of `bertjax.convert.CONVERTERS`: `from_hf(hf_config, tensors)`
and `to_hf(cfg, params)` work on a config dict and a {name: array} dict.

The key map is explicit (`_layer_map` below). Hugging Face's GPT-2 uses `Conv1D`, whose weights are
already stored [in, out] (no transpose, unlike nn.Linear); the fused `c_attn` [E, 3E] is split into
our query/key/value kernels [E, heads, head_dim]. The LM head is tied to `wte`, so `lm_head.weight`
is not stored (and, when a checkpoint does store it, it must equal `wte`). The causal-mask buffers
`h.{i}.attn.bias` / `attn.masked_bias` of old checkpoints are not parameters and are skipped.
Every other tensor must be used: a leftover or missing key is an error naming it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from bertjax.models.config import ModelConfig

Params = dict[str, Any]

# HF activation_function -> ModelConfig.hidden_act ("gelu_pytorch_tanh" is gelu_new's formula).
_ACTIVATIONS = {
    "gelu_new": "gelu_new",
    "gelu_pytorch_tanh": "gelu_new",
    "gelu": "gelu",
    "relu": "relu",
}
# Causal-mask buffers saved by old transformers versions; not weights.
_BUFFER_KEY = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")


# -- config ---------------------------------------------------------------------------------------


def config_from_hf(
    hf: Mapping[str, Any], source: str = "config.json", **overrides: Any
) -> ModelConfig:
    """A `ModelConfig` from a GPT-2 `config.json` dict (+ ModelConfig overrides, e.g. dtype)."""
    if hf.get("model_type") != "gpt2":
        raise ValueError(f"{source}: model_type {hf.get('model_type')!r} is not 'gpt2'")
    unsupported = {
        "add_cross_attention": False,
        "scale_attn_by_inverse_layer_idx": False,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
    }
    for key, supported in unsupported.items():
        if hf.get(key, supported) != supported:
            raise ValueError(f"{source}: {key}={hf[key]!r} is not supported (only {supported})")
    act = hf.get("activation_function", "gelu_new")
    if act not in _ACTIVATIONS:
        raise ValueError(
            f"{source}: activation_function {act!r}; supported: {sorted(_ACTIVATIONS)}"
        )
    hidden = hf.get("n_embd", 768)
    resid, embd = hf.get("resid_pdrop", 0.1), hf.get("embd_pdrop", 0.1)
    if resid != embd:
        logging.warning(
            "%s: resid_pdrop=%s and embd_pdrop=%s differ; bertjax has one hidden_dropout "
            "and uses resid_pdrop for both",
            source,
            resid,
            embd,
        )
    values = dict(
        model_type="gpt2",
        head="causal_lm",
        vocab_size=hf.get("vocab_size", 50257),
        hidden_size=hidden,
        num_layers=hf.get("n_layer", 12),
        num_heads=hf.get("n_head", 12),
        intermediate_size=hf.get("n_inner") or 4 * hidden,
        max_position_embeddings=hf.get("n_positions", 1024),
        type_vocab_size=1,
        hidden_dropout=resid,
        attention_dropout=hf.get("attn_pdrop", 0.1),
        layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        hidden_act=_ACTIVATIONS[act],
        initializer_range=hf.get("initializer_range", 0.02),
    )
    values.update(overrides)
    return ModelConfig.from_dict(values)


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """The `config.json` dict of GPT2LMHeadModel for `cfg`."""
    if cfg.model_type != "gpt2":
        raise ValueError(f"config_to_hf: model_type {cfg.model_type!r} is not 'gpt2'")
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.max_position_embeddings,
        "n_embd": cfg.hidden_size,
        "n_layer": cfg.num_layers,
        "n_head": cfg.num_heads,
        "n_inner": cfg.intermediate_size,
        "activation_function": cfg.hidden_act,
        "resid_pdrop": cfg.hidden_dropout,
        "embd_pdrop": cfg.hidden_dropout,
        "attn_pdrop": cfg.attention_dropout,
        "layer_norm_epsilon": cfg.layer_norm_eps,
        "initializer_range": cfg.initializer_range,
        "tie_word_embeddings": True,
        "bos_token_id": cfg.vocab_size - 1,
        "eos_token_id": cfg.vocab_size - 1,
        "torch_dtype": "float32",
    }


# -- parameters -----------------------------------------------------------------------------------


def _layer_map(i: int) -> dict[str, tuple[str, ...]]:
    """HF key (without the `transformer.` prefix) -> our parameter path, for layer i.

    `c_attn` is absent: it is one HF tensor for three of ours (see `_split_qkv`).
    """
    h, ours = f"h.{i}", ("layer_" + str(i),)
    return {
        f"{h}.ln_1.weight": (*ours, "attention_layer_norm", "scale"),
        f"{h}.ln_1.bias": (*ours, "attention_layer_norm", "bias"),
        f"{h}.attn.c_proj.weight": (*ours, "attention", "out", "kernel"),
        f"{h}.attn.c_proj.bias": (*ours, "attention", "out", "bias"),
        f"{h}.ln_2.weight": (*ours, "mlp_layer_norm", "scale"),
        f"{h}.ln_2.bias": (*ours, "mlp_layer_norm", "bias"),
        f"{h}.mlp.c_fc.weight": (*ours, "mlp", "wi", "kernel"),
        f"{h}.mlp.c_fc.bias": (*ours, "mlp", "wi", "bias"),
        f"{h}.mlp.c_proj.weight": (*ours, "mlp", "wo", "kernel"),
        f"{h}.mlp.c_proj.bias": (*ours, "mlp", "wo", "bias"),
    }


_TOP_MAP = {
    "wte.weight": ("word_embeddings", "embedding"),
    "wpe.weight": ("position_embeddings", "embedding"),
    "ln_f.weight": ("final_layer_norm", "scale"),
    "ln_f.bias": ("final_layer_norm", "bias"),
}


def _expected_shapes(cfg: ModelConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    e, n, d, m = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.intermediate_size
    shapes = {
        ("word_embeddings", "embedding"): (cfg.vocab_size, e),
        ("position_embeddings", "embedding"): (cfg.max_position_embeddings, e),
        ("final_layer_norm", "scale"): (e,),
        ("final_layer_norm", "bias"): (e,),
    }
    for i in range(cfg.num_layers):
        layer = f"layer_{i}"
        for ln in ("attention_layer_norm", "mlp_layer_norm"):
            shapes[(layer, ln, "scale")] = shapes[(layer, ln, "bias")] = (e,)
        for proj in ("query", "key", "value"):
            shapes[(layer, "attention", proj, "kernel")] = (e, n, d)
            shapes[(layer, "attention", proj, "bias")] = (n, d)
        shapes[(layer, "attention", "out", "kernel")] = (n, d, e)
        shapes[(layer, "attention", "out", "bias")] = (e,)
        shapes[(layer, "mlp", "wi", "kernel")] = (e, m)
        shapes[(layer, "mlp", "wi", "bias")] = (m,)
        shapes[(layer, "mlp", "wo", "kernel")] = (m, e)
        shapes[(layer, "mlp", "wo", "bias")] = (e,)
    return shapes


def params_from_state_dict(cfg: ModelConfig, state: Mapping[str, np.ndarray]) -> Params:
    """Our parameter tree from a GPT-2 state dict (numpy arrays keyed by HF names)."""
    # GPT2LMHeadModel prefixes the backbone with "transformer."; a bare GPT2Model does not.
    state = {k.removeprefix("transformer."): np.asarray(v) for k, v in state.items()}
    state = {k: v for k, v in state.items() if not _BUFFER_KEY.match(k)}
    if "lm_head.weight" in state:
        head = state.pop("lm_head.weight")
        if "wte.weight" in state and not np.array_equal(head, state["wte.weight"]):
            raise ValueError(
                "lm_head.weight differs from wte.weight: untied heads are not supported"
            )

    e, n, d = cfg.hidden_size, cfg.num_heads, cfg.head_dim
    flat: dict[tuple[str, ...], np.ndarray] = {}
    key_map = dict(_TOP_MAP)
    for i in range(cfg.num_layers):
        key_map.update(_layer_map(i))
        qkv_w, qkv_b = f"h.{i}.attn.c_attn.weight", f"h.{i}.attn.c_attn.bias"
        for key in (qkv_w, qkv_b):
            if key not in state:
                raise KeyError(f"GPT-2 checkpoint is missing {key!r}")
        w, b = state.pop(qkv_w), state.pop(qkv_b)
        if w.shape != (e, 3 * e) or b.shape != (3 * e,):
            raise ValueError(
                f"{qkv_w}: shape {w.shape} / bias {b.shape}, expected ({e}, {3 * e}) / ({3 * e},)"
            )
        for j, proj in enumerate(("query", "key", "value")):
            flat[(f"layer_{i}", "attention", proj, "kernel")] = w[:, j * e : (j + 1) * e].reshape(
                e, n, d
            )
            flat[(f"layer_{i}", "attention", proj, "bias")] = b[j * e : (j + 1) * e].reshape(n, d)

    missing = sorted(k for k in key_map if k not in state)
    if missing:
        raise KeyError(f"GPT-2 checkpoint is missing {missing}")
    leftover = sorted(k for k in state if k not in key_map)
    if leftover:
        raise KeyError(f"GPT-2 checkpoint has tensors that map to nothing: {leftover}")
    expected = _expected_shapes(cfg)
    for hf_key, path in key_map.items():
        value = state[hf_key]
        if path[-3:] == ("attention", "out", "kernel") and value.shape == (e, e):
            value = value.reshape(n, d, e)  # c_proj's input axis is the concatenated heads
        if value.shape != expected[path]:
            raise ValueError(
                f"tensor {hf_key!r} has shape {value.shape}; the config needs {expected[path]}"
            )
        flat[path] = value
    assert len(flat) == len(expected), (len(flat), len(expected))  # every parameter set once
    dtype = cfg.params_dtype
    return _unflatten({path: value.astype(dtype) for path, value in flat.items()})


def state_dict_from_params(cfg: ModelConfig, params: Params) -> dict[str, np.ndarray]:
    """The GPT2LMHeadModel state dict ("transformer.*"; lm_head tied, so not stored)."""
    flat = _flatten(params)
    expected = _expected_shapes(cfg)
    if set(flat) != set(expected):
        raise KeyError(
            f"params do not match the GPT-2 config: missing {sorted(set(expected) - set(flat))}, "
            f"unexpected {sorted(set(flat) - set(expected))}"
        )
    e = cfg.hidden_size
    state: dict[str, np.ndarray] = {}
    key_map = dict(_TOP_MAP)
    for i in range(cfg.num_layers):
        key_map.update(_layer_map(i))
        att = (f"layer_{i}", "attention")
        state[f"h.{i}.attn.c_attn.weight"] = np.concatenate(
            [flat[(*att, p, "kernel")].reshape(e, e) for p in ("query", "key", "value")], axis=1
        )
        state[f"h.{i}.attn.c_attn.bias"] = np.concatenate(
            [flat[(*att, p, "bias")].reshape(e) for p in ("query", "key", "value")]
        )
    for hf_key, path in key_map.items():
        value = flat[path]
        state[hf_key] = (
            value.reshape(e, e) if path[-3:] == ("attention", "out", "kernel") else value
        )
    return {f"transformer.{k}": np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()}


# -- the bertjax.convert interface ---------------------------------------------------------------


def from_hf(
    hf_config: Mapping[str, Any], tensors: Mapping[str, np.ndarray], **overrides: Any
) -> tuple[ModelConfig, Params]:
    """(ModelConfig, params) of a GPT-2 checkpoint; every tensor is used exactly once."""
    arch = (hf_config.get("architectures") or [None])[0]
    if arch is not None and arch not in ("GPT2LMHeadModel", "GPT2Model"):
        raise ValueError(
            f"unsupported GPT-2 architecture {arch!r}; supported: GPT2LMHeadModel, GPT2Model"
        )
    cfg = config_from_hf(hf_config, **overrides)
    return cfg, params_from_state_dict(cfg, tensors)


def to_hf(cfg: ModelConfig, params: Params) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(config.json dict, {HF name: float32 array}) of a GPT2LMHeadModel."""
    return config_to_hf(cfg), state_dict_from_params(cfg, params)


def _flatten(params: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    flat: dict[tuple[str, ...], Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, (*prefix, key)))
        else:
            flat[(*prefix, key)] = np.asarray(value, dtype=np.float32)
    return flat


def _unflatten(flat: Mapping[tuple[str, ...], np.ndarray]) -> Params:
    tree: Params = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree
