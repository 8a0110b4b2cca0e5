"""Hugging Face checkpoint directories <-> (ModelConfig, params).

    cfg, params = from_hf("path/to/dir")      # config.json + model.safetensors
    to_hf(cfg, params, "path/to/out_dir")     # loads with transformers' from_pretrained

Only safetensors are read (numpy; nothing is ever unpickled). One converter module per model
family, chosen by config.json's `model_type`; a family registers in CONVERTERS.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax.core import meta
from safetensors.numpy import load_file, save_file

from bertjax.convert import hf_bert, hf_gpt2
from bertjax.models.config import ModelConfig

# model_type -> module with from_hf(hf_config, tensors, **overrides) -> (cfg, params)
#                       and to_hf(cfg, params) -> (hf_config, tensors).
CONVERTERS: dict[str, Any] = {"bert": hf_bert, "gpt2": hf_gpt2}

__all__ = ["CONVERTERS", "from_hf", "load_safetensors", "to_hf"]


def _converter(model_type: str, where: str) -> Any:
    if model_type not in CONVERTERS:
        raise ValueError(
            f"{where}: unsupported model_type {model_type!r}; supported: {sorted(CONVERTERS)}"
        )
    return CONVERTERS[model_type]


def load_safetensors(directory: str | pathlib.Path) -> dict[str, np.ndarray]:
    """All tensors of model.safetensors, or of the shards listed in model.safetensors.index.json."""
    directory = pathlib.Path(directory)
    single, index = directory / "model.safetensors", directory / "model.safetensors.index.json"
    if single.is_file():
        return load_file(single)
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        tensors: dict[str, np.ndarray] = {}
        for shard in shards:
            tensors.update(load_file(directory / shard))
        return tensors
    found = (
        sorted(p.name for p in directory.iterdir()) if directory.is_dir() else "no such directory"
    )
    raise FileNotFoundError(
        f"{directory}: no model.safetensors (or index); found {found}. bertjax never unpickles "
        "pytorch_model.bin: convert it with safetensors first."
    )


def from_hf(path: str | pathlib.Path, **overrides: Any) -> tuple[ModelConfig, dict]:
    """(ModelConfig, params) of an HF checkpoint directory (config.json + model.safetensors).

    `overrides` set ModelConfig fields, e.g. dtype="bfloat16", remat="full", or head="encoder"
    to keep only the backbone of a pretraining checkpoint. Params are numpy arrays in the
    config's param_dtype.
    """
    path = pathlib.Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} not found")
    hf_config = json.loads(config_file.read_text())
    model_type = hf_config.get("model_type")
    converter = _converter(model_type, str(config_file))
    return converter.from_hf(hf_config, load_safetensors(path), **overrides)


def to_hf(cfg: ModelConfig, params: Mapping, path: str | pathlib.Path) -> None:
    """Writes config.json + model.safetensors (float32) that transformers loads without warnings."""
    converter = _converter(cfg.model_type, "ModelConfig")
    hf_config, tensors = converter.to_hf(cfg, meta.unbox(params))
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
