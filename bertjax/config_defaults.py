"""Builders of the config blocks every experiment shares, so configs state only what differs.

Config files (loaded by path) call these; each returns a fresh `ConfigDict` with the keys the
training loop reads (`bertjax/optim.py`, `bertjax/sharding.py`):

    config.optim = config_defaults.optimizer(learning_rate=1e-4, warmup_steps=10_000)
    config.mesh = config_defaults.mesh()
"""

from __future__ import annotations

import ml_collections


def optimizer(
    *,
    learning_rate: float,
    name: str = "adamw",
    warmup_steps: int = 0,
    warmup_proportion: float | None = None,
    weight_decay: float = 0.01,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    grad_clip_norm: float = 1.0,
    grad_accum_steps: int = 1,
) -> ml_collections.ConfigDict:
    """`config.optim`: AdamW (or LAMB) as google-research/bert's optimization.py by default.

    warmup_proportion: when set, the warmup is that share of the total steps (fine-tuning
      recipes) and replaces warmup_steps; None leaves the key out (fixed-step recipes).
    grad_clip_norm: global-norm clipping (as google-research/bert); grad_accum_steps:
      microbatches per optimizer step.
    """
    optim = ml_collections.ConfigDict()
    optim.name = name  # "adamw" | "lamb"
    optim.learning_rate = learning_rate
    optim.warmup_steps = warmup_steps
    if warmup_proportion is not None:
        optim.warmup_proportion = warmup_proportion
    optim.weight_decay = weight_decay
    optim.b1 = b1
    optim.b2 = b2
    optim.eps = eps
    optim.grad_clip_norm = grad_clip_norm
    optim.grad_accum_steps = grad_accum_steps
    return optim


def mesh(data: int = -1, fsdp: int = 1, tensor: int = 1) -> ml_collections.ConfigDict:
    """`config.mesh`: sizes of the (data, fsdp, tensor) device axes; -1 fills what is left."""
    block = ml_collections.ConfigDict()
    block.data = data
    block.fsdp = fsdp
    block.tensor = tensor
    return block
