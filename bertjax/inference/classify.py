"""Sequence classification / regression with a loaded run: featurise, forward, postprocess.

    run = load_run("runs/reviews")
    batch = featurize(run, ["great phone", "broke in a week"])
    logits = jax.jit(functools.partial(forward, run.module))(run.params, batch)
    postprocess(run, logits)
    # [{"label": "positive", "score": 0.97, "probabilities": {"negative": 0.03, ...}}, ...]

`featurize` is the training featuriser (`bertjax.data.features`), so inputs are exactly those the
model was fine-tuned on. `predict` runs the three over any number of texts in fixed-size batches
(one compiled shape).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bertjax.data import features
from bertjax.inference import batches
from bertjax.inference.loader import LoadedRun

MULTI_LABEL_THRESHOLD = 0.5  # a label is predicted when its sigmoid probability exceeds this


def featurize(
    run: LoadedRun,
    texts: Sequence[str],
    text_pairs: Sequence[str] | None = None,
    *,
    max_seq_length: int | None = None,
    pad_to: int | None = None,
) -> dict[str, np.ndarray]:
    """input_ids / token_type_ids / attention_mask [N, pad_to] int32 of the texts (and pairs).

    max_seq_length: truncation length (default: the run's; larger than the model's position
      table is an error). pad_to: columns (default max_seq_length), at least the longest row.
    """
    if not hasattr(run.tokenizer, "cls_id"):
        raise ValueError(f"run {run.workdir} has no WordPiece tokenizer: not a BERT run")
    length = int(max_seq_length or run.max_seq_length)
    if length > run.model_config.max_position_embeddings:
        raise ValueError(
            f"max_seq_length={length} exceeds the model's max_position_embeddings="
            f"{run.model_config.max_position_embeddings}"
        )
    tok = run.tokenizer
    special = features.SpecialIds(cls=tok.cls_id, sep=tok.sep_id, pad=tok.pad_id)
    return features.encode_texts(tok.encode_batch, special, texts, text_pairs, length, pad_to)


def forward(module: Any, params: Any, batch: dict[str, Any]) -> Any:
    """Logits [B, num_labels] (float32) of a classification run; jit with `module` bound."""
    import jax.numpy as jnp

    inputs = {k: batch[k] for k in features.MODEL_KEYS if k in batch}
    return module.apply({"params": params}, inputs, train=False)["logits"].astype(jnp.float32)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def postprocess(run: LoadedRun, logits: Any) -> list[dict[str, Any]]:
    """One dict per row.

    single_label: {"label": name, "score": p(label), "probabilities": {name: p}}
    multi_label: {"labels": [names with p > 0.5], "probabilities": {name: p}}
    regression: {"value": float}
    """
    logits = np.asarray(logits, dtype=np.float64)
    problem = run.problem_type or ("regression" if logits.shape[-1] == 1 else "single_label")
    if problem == "regression":
        return [{"value": float(v)} for v in logits[:, 0]]
    names = run.label_names or [str(i) for i in range(logits.shape[-1])]
    if problem == "multi_label":
        probs = 1.0 / (1.0 + np.exp(-logits))
        return [
            {
                "labels": [n for n, p in zip(names, row, strict=True) if p > MULTI_LABEL_THRESHOLD],
                "probabilities": {n: float(p) for n, p in zip(names, row, strict=True)},
            }
            for row in probs
        ]
    probs = _softmax(logits)
    out = []
    for row in probs:
        best = int(row.argmax())
        out.append(
            {
                "label": names[best],
                "score": float(row[best]),
                "probabilities": {n: float(p) for n, p in zip(names, row, strict=True)},
            }
        )
    return out


def predict_logits(
    run: LoadedRun,
    texts: Sequence[str],
    text_pairs: Sequence[str] | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """Logits [N, num_labels] of every text, in fixed-size batches (the last one padded)."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be positive")
    apply = batches.jitted(forward, run.module)
    chunks = []
    for start in range(0, len(texts), batch_size):
        stop = min(start + batch_size, len(texts))
        pairs = None if text_pairs is None else text_pairs[start:stop]
        batch = featurize(run, texts[start:stop], pairs)
        chunks.append(
            np.asarray(apply(run.params, batches.pad_rows(batch, batch_size)))[: stop - start]
        )
    if not chunks:
        return np.zeros((0, run.model_config.num_labels), np.float32)
    return np.concatenate(chunks)


def predict(
    run: LoadedRun,
    texts: Sequence[str],
    text_pairs: Sequence[str] | None = None,
    batch_size: int = 64,
) -> list[dict[str, Any]]:
    """`postprocess` of `predict_logits`: one result dict per text."""
    return postprocess(run, predict_logits(run, texts, text_pairs, batch_size))
