"""What an attribution explains: a scalar of the model's output, as a function of the embeddings.

Each `*_score(module, ...)` returns a `score_fn(embeddings [S, T, H], aux) -> [S]` for
`bertjax.explain.attributions`, cached per module so that it compiles once per input shape;
`aux` = (params, batch [1, T] arrays, target arrays):

* classifiers (`classification` head): a class's logit, probability (softmax; sigmoid for
  multi-label runs) or log-probability;
* MLM runs (`mlm` / `pretraining` heads): the log-probability of a token at a [MASK] position;
* GPT runs (`causal_lm`): the log-probability of a chosen next token after the input;
* QA runs (`question_answering`): the start logit at the span's first token plus the end
  logit at its last (the score the span was chosen by; or either alone, as captum's BERT SQuAD
  tutorial explains them separately);
* NER runs (`token_classification`): a tag's logit, probability or log-probability at a
  word's first sub-token (where training labels the word).

`embed(module, params, batch)` is the embedding output those functions start from: BERT's
after its LayerNorm and dropout (`BertModel.embed`, where captum hooks BERT), GPT's word +
position sum (sown by the model as "embeddings").
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

CLASS_SCORES = ("logit", "probability", "log_probability")
QA_SCORES = ("span", "start", "end")


@dataclasses.dataclass
class Selection:
    """A QA or NER input as an explanation reads it: the one row holding the target.

    batch: the row's model inputs [1, T] int32 (T = its tokens, or more when padded);
    length: its real tokens; prediction: the run's prediction of the whole input;
    target: the JSON description of what is explained; extra: the target's arrays, the end of
    the score function's aux.
    """

    batch: dict[str, np.ndarray]
    length: int
    prediction: Any
    target: dict[str, Any]
    extra: tuple[Any, ...]


def trim(batch: dict[str, np.ndarray], row: int, length: int, pad_to: int | None) -> dict:
    """Row `row` of a featurised batch as [1, T] int32, T = length or `pad_to` columns."""
    columns = length if not pad_to else max(length, int(pad_to))
    out = {}
    for k in ("input_ids", "token_type_ids", "attention_mask"):
        v = np.asarray(batch[k][row : row + 1], np.int32)
        if columns > v.shape[1]:
            v = np.pad(v, ((0, 0), (0, columns - v.shape[1])))
        out[k] = v[:, :columns]
    return out


def describe(target: dict[str, Any]) -> str:
    """A one-line name of an explanation's target (the CLI's summary, the PNG's title)."""
    kind = target["kind"]
    if kind == "answer_span":
        return f"answer span {target['text']!r} (characters {target['start']}-{target['end']})"
    if kind == "word_tag":
        return f"tag {target['tag']!r} of word {target['word_index']} {target['word']!r}"
    return f"{kind} {target.get('label', target.get('token'))!r}"


def _rows(batch: dict[str, Any], rows: int) -> dict[str, Any]:
    return {k: jnp.broadcast_to(v, (rows, *v.shape[1:])) for k, v in batch.items()}


def embed(module: Any, params: Any, batch: dict[str, Any]) -> Any:
    """The embedding output [B, T, H] that the score functions take."""
    if module.cfg.model_type == "gpt2":
        _, state = module.apply({"params": params}, batch, mutable=["intermediates"])
        return state["intermediates"]["embeddings"][0]
    return module.apply({"params": params}, batch, method="embed")


@functools.lru_cache(maxsize=32)
def class_score(module: Any, score: str, multi_label: bool = False) -> Any:
    """score_fn of a classifier; aux = (params, batch, class index [] int32)."""
    if score not in CLASS_SCORES:
        raise ValueError(f"unknown score {score!r}; expected one of {list(CLASS_SCORES)}")

    def fn(e: Any, aux: Any) -> Any:
        params, batch, index = aux
        logits = module.apply({"params": params}, _rows(batch, e.shape[0]), embeddings=e)
        logits = logits["logits"]
        if score == "probability":
            logits = jax.nn.sigmoid(logits) if multi_label else jax.nn.softmax(logits, axis=-1)
        elif score == "log_probability":
            logits = jax.nn.log_sigmoid(logits) if multi_label else jax.nn.log_softmax(logits)
        return jnp.take(logits, index, axis=-1)

    return fn


@functools.lru_cache(maxsize=32)
def masked_token_score(module: Any) -> Any:
    """score_fn of an MLM run; aux = (params, batch, position [] int32, token id [] int32)."""

    def fn(e: Any, aux: Any) -> Any:
        params, batch, position, token = aux
        out = module.apply({"params": params}, _rows(batch, e.shape[0]), embeddings=e)
        logits = jnp.take(out["mlm_logits"], position, axis=1)  # [S, V]
        return jnp.take(jax.nn.log_softmax(logits, axis=-1), token, axis=-1)

    return fn


@functools.lru_cache(maxsize=32)
def next_token_score(module: Any) -> Any:
    """score_fn of a GPT run: log p(token | input) after the last position; aux = (params,
    batch, token id [] int32)."""

    def fn(e: Any, aux: Any) -> Any:
        params, batch, token = aux
        out = module.apply({"params": params}, _rows(batch, e.shape[0]), embeddings=e)
        last = out["logits"][:, -1]
        return jnp.take(jax.nn.log_softmax(last, axis=-1), token, axis=-1)

    return fn


def _class_scores(logits: Any, score: str) -> Any:
    """logits [..., C] as the chosen score (softmax over the last axis)."""
    if score == "probability":
        return jax.nn.softmax(logits, axis=-1)
    if score == "log_probability":
        return jax.nn.log_softmax(logits, axis=-1)
    return logits


@functools.lru_cache(maxsize=32)
def span_score(module: Any, which: str = "span") -> Any:
    """score_fn of a QA run; aux = (params, batch, start token [] int32, end token [] int32).

    which: "span" = start_logits[start] + end_logits[end] (what postprocessing ranks spans
    by), "start" or "end" alone.
    """
    if which not in QA_SCORES:
        raise ValueError(f"unknown QA score {which!r}; expected one of {list(QA_SCORES)}")

    def fn(e: Any, aux: Any) -> Any:
        params, batch, start, end = aux
        out = module.apply({"params": params}, _rows(batch, e.shape[0]), embeddings=e)
        s = jnp.take(out["start_logits"], start, axis=1)
        t = jnp.take(out["end_logits"], end, axis=1)
        return {"span": s + t, "start": s, "end": t}[which]

    return fn


@functools.lru_cache(maxsize=32)
def tag_score(module: Any, score: str) -> Any:
    """score_fn of a token-classification run; aux = (params, batch, position [] int32 (the
    word's first sub-token), tag index [] int32)."""
    if score not in CLASS_SCORES:
        raise ValueError(f"unknown score {score!r}; expected one of {list(CLASS_SCORES)}")

    def fn(e: Any, aux: Any) -> Any:
        params, batch, position, tag = aux
        out = module.apply({"params": params}, _rows(batch, e.shape[0]), embeddings=e)
        logits = jnp.take(out["logits"], position, axis=1)  # [S, num_tags]
        return jnp.take(_class_scores(logits, score), tag, axis=-1)

    return fn


def resolve_label(target: str | None, label_names: list[str] | None, logits: np.ndarray) -> int:
    """The class index `target` names (a label name or an index; None = the predicted class)."""
    if target is None or target == "":
        return int(np.argmax(logits))
    names = label_names or [str(i) for i in range(len(logits))]
    if target in names:
        return names.index(target)
    if target.lstrip("-").isdigit() and 0 <= int(target) < len(names):
        return int(target)
    raise ValueError(f"--target={target!r} is not one of the run's labels {names}")
