"""Model outputs -> response JSON: label scores (softmax / sigmoid / regression) and vectors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def label_scores(
    logits: np.ndarray,
    *,
    problem_type: str,
    label_names: Sequence[str] | None,
    top_k: int | None,
    raw_scores: bool,
) -> list[dict[str, Any]] | dict[str, float]:
    """One input's scores: [{"label", "score"}] best first, or {"value"} for regression.

    single_label: softmax probabilities; multi_label: independent sigmoids; raw_scores: the
    logits themselves (for either). top_k=None keeps every label.
    """
    logits = np.asarray(logits, np.float64)
    if problem_type == "regression":
        return {"value": float(logits[0])}
    if raw_scores:
        scores = logits
    elif problem_type == "multi_label":
        scores = 1.0 / (1.0 + np.exp(-logits))
    else:
        shifted = np.exp(logits - logits.max())
        scores = shifted / shifted.sum()
    order = np.argsort(-scores, kind="stable")
    if top_k is not None:
        order = order[:top_k]
    names = label_names or [f"LABEL_{i}" for i in range(len(scores))]
    return [{"label": names[i], "score": float(scores[i])} for i in order]


def embedding(vector: np.ndarray, *, normalize: bool) -> list[float]:
    """A vector as a JSON list, scaled to unit L2 norm if asked (a zero vector stays zero)."""
    vector = np.asarray(vector, np.float64)
    if normalize:
        norm = np.linalg.norm(vector)
        if norm > 0:
            vector = vector / norm
    return vector.tolist()
