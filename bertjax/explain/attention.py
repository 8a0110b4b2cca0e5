"""Attention maps of one input through the reference attention path, and attention rollout.

Whatever kernel a run trained with (cuDNN, bf16 CPU kernels), `attention_module` rebuilds its
model with `attention_impl="reference"` (the plain einsum softmax, the same maths) and no remat;
its attention layers then sow their probabilities into the "intermediates" collection
(`bertjax.models.layers.MultiHeadAttention`), which `attention_probs` reads.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from bertjax import models


def attention_module(model_config: Any) -> Any:
    """The run's model on the reference attention path (probabilities sown), no remat."""
    return models.build(model_config.replace(attention_impl="reference", remat="none"))


def collect_attention(intermediates: Any) -> np.ndarray:
    """The sown "attention_probs" of every layer, [L, B, N, T, S] in layer order."""
    found: dict[int, np.ndarray] = {}

    def walk(tree: Any, layer: int | None) -> None:
        for key, value in tree.items():
            match = re.fullmatch(r"layer_(\d+)", str(key))
            here = int(match.group(1)) if match else layer
            if key == "attention_probs":
                found[here] = np.asarray(value[0])
            elif isinstance(value, dict) or hasattr(value, "items"):
                walk(value, here)

    walk(intermediates, None)
    if not found or None in found:
        raise ValueError("no per-layer attention_probs were sown: is attention_impl 'reference'?")
    return np.stack([found[i] for i in sorted(found)])


def attention_probs(module: Any, params: Any, batch: dict[str, Any]) -> tuple[Any, np.ndarray]:
    """(the model's outputs, attention probabilities [L, B, N, T, T] float32) of `batch`.

    `module` must come from `attention_module`.
    """
    out, state = module.apply({"params": params}, batch, train=False, mutable=["intermediates"])
    return out, collect_attention(state["intermediates"])


def rollout(probs: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema 2020) of one input's maps [L, N, T, T]: [T, T].

    Each layer's head-mean attention plus the residual (0.5 A + 0.5 I, rows renormalised),
    multiplied from the first layer up; row t says how much each input token flows into
    position t at the top. `mask` [T] (1 = real token) restricts it to the real tokens.
    """
    probs = np.asarray(probs, np.float64)
    length = probs.shape[-1]
    keep = np.ones(length, bool) if mask is None else np.asarray(mask, bool)
    result = np.eye(length)
    for layer in probs:
        a = layer.mean(axis=0) * keep[None, :]
        a = 0.5 * a + 0.5 * np.eye(length)
        a = a / a.sum(axis=-1, keepdims=True)
        result = a @ result
    return result
