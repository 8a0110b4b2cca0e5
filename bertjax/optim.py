"""Optimizer recipes (optax): AdamW or LAMB, warmup + linear decay, global-norm clipping.

Gradient accumulation is not an optax wrapper here: the train step scans over microbatches
(`bertjax/train.py`), so that one logged step is one optimizer step.

Config keys (``config.optim``): ``name`` ("adamw" | "lamb"), ``learning_rate`` (peak),
``warmup_steps`` (or ``warmup_proportion`` of the total, for epoch-based recipes),
``weight_decay``, ``b1``, ``b2``, ``eps``, ``grad_clip_norm`` (<= 0: no clipping),
``grad_accum_steps``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import optax

OPTIMIZERS = ("adamw", "lamb")

# Parameter names that BERT excludes from weight decay (google-research/bert optimization.py:
# exclude_from_weight_decay=["LayerNorm", "layer_norm", "bias"]); flax's LayerNorm calls its
# parameters "scale" and "bias" and the module name carries "norm" / "ln".
_NO_DECAY_LEAF_NAMES = ("bias", "scale")
_NO_DECAY_MODULE_MARKERS = ("norm", "ln_", "_ln")


def linear_warmup_linear_decay(peak: float, total_steps: int, warmup_steps: int) -> optax.Schedule:
    """0 -> `peak` linearly over `warmup_steps`, then linearly to 0 at `total_steps`.

    This is the schedule of the BERT paper (and of `transformers`'
    get_linear_schedule_with_warmup).
    """
    if total_steps < 1:
        raise ValueError(f"total_steps={total_steps} must be >= 1")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} must be in [0, total_steps={total_steps}]")
    warmup = optax.linear_schedule(0.0, peak, max(warmup_steps, 1))
    decay = optax.linear_schedule(peak, 0.0, max(total_steps - warmup_steps, 1))
    if warmup_steps == 0:
        return decay
    return optax.join_schedules([warmup, decay], boundaries=[warmup_steps])


def _path_names(path: tuple[Any, ...]) -> list[str]:
    names = []
    for entry in path:
        key = getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry)))
        names.append(str(key))
    return names


def decays(path: tuple[Any, ...]) -> bool:
    """Whether the parameter at `path` gets weight decay (not LayerNorm params, not biases)."""
    names = [n.lower() for n in _path_names(path)]
    if not names:
        return True
    leaf = names[-1]
    if any(marker in leaf for marker in _NO_DECAY_LEAF_NAMES):
        return False
    return not any(m in n for n in names[:-1] for m in _NO_DECAY_MODULE_MARKERS)


def weight_decay_mask(params: Any) -> Any:
    """A tree of bools like `params`: True where weight decay (and LAMB's trust ratio) applies."""
    return jax.tree_util.tree_map_with_path(lambda path, _: decays(path), params)


def build(
    optim: ml_collections.ConfigDict | Mapping[str, Any], total_steps: int, warmup_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer of ``config.optim`` and its learning-rate schedule (for logging)."""
    name = optim["name"]
    if name not in OPTIMIZERS:
        raise ValueError(f"config.optim.name={name!r}; expected one of {OPTIMIZERS}")
    schedule = linear_warmup_linear_decay(float(optim["learning_rate"]), total_steps, warmup_steps)
    b1, b2, eps = float(optim["b1"]), float(optim["b2"]), float(optim["eps"])
    wd = float(optim["weight_decay"])
    if name == "adamw":
        # Decoupled weight decay (Loshchilov & Hutter), as BERT's AdamWeightDecayOptimizer.
        core = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=wd, mask=weight_decay_mask)
    else:
        # LAMB (You et al. 2019): Adam direction + decay, rescaled per layer by the trust ratio
        # ||w|| / ||update||. As in their BERT recipe, LayerNorm params and biases get neither
        # decay nor the layer-wise adaptation (optax.lamb would apply the ratio to all).
        core = optax.chain(
            optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
            optax.add_decayed_weights(wd, mask=weight_decay_mask),
            optax.masked(optax.scale_by_trust_ratio(), weight_decay_mask),
            optax.scale_by_learning_rate(schedule),
        )
    clip = float(optim["grad_clip_norm"])
    if clip > 0:
        core = optax.chain(optax.clip_by_global_norm(clip), core)
    return core, schedule
