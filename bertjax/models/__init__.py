"""bertjax models: `ModelConfig`, size presets and `build(cfg) -> flax.linen.Module`.

from bertjax import models
cfg = models.get_config("tiny", vocab_size=8192, head="pretraining")
model = models.build(cfg)
params = model.init(jax.random.key(0), models.example_batch(cfg))["params"]
out = model.apply({"params": params}, batch)   # train=False: no dropout
"""

from __future__ import annotations

import flax.linen as nn
import numpy as np

from bertjax.models.config import PRESETS, ModelConfig, get_config

__all__ = ["PRESETS", "ModelConfig", "build", "example_batch", "get_config"]


def build(cfg: ModelConfig) -> nn.Module:
    """The Flax linen module of `cfg` (dispatch on model_type, then on head)."""
    if cfg.model_type == "bert":
        from bertjax.models import bert

        return bert.build(cfg)
    if cfg.model_type == "gpt2":
        from bertjax.models import gpt  # GPT-2 decoder, built on the same layers

        return gpt.build(cfg)
    raise ValueError(f"unsupported model_type {cfg.model_type!r}")


def example_batch(cfg: ModelConfig, batch_size: int = 1, seq_len: int = 8) -> dict[str, np.ndarray]:
    """An all-zero batch of the right keys and dtypes, for `model.init` / `jax.eval_shape`."""
    ids = np.zeros((batch_size, seq_len), np.int32)
    batch = {"input_ids": ids}
    if cfg.model_type == "bert":
        batch["token_type_ids"] = ids
        batch["attention_mask"] = np.ones_like(ids)
    return batch
