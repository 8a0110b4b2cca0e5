"""`explain(run, text, ...)`: the prediction, token attributions and attention maps of one input.

The result is a JSON-ready dict (format 1, documented in docs/explain.md):

    {"format_version": 1, "run": workdir, "task": ..., "model_type": "bert" | "gpt2",
     "head": ..., "inputs": {"text": ..., "text_pair": ... | null},   # QA: question, context
     "tokens": [...], "token_ids": [...], "segments": [...],
     "prediction": {...},                # postprocess() of a classifier, MLM / next-token top-k
     "target": {"kind": "class" | "masked_token" | "next_token" | "answer_span" | "word_tag",
                ..., "value": F(x)},
     "method": {"name", "steps", "rule", "baseline", "score", "precision"},
     "attributions": {"raw": [T floats], "normalized": [T floats, sum |.| = 1]},
     "completeness": {"f_input", "f_baseline", "delta", "relative"} | null,   # IG only
     "attention": {"num_layers", "num_heads", "probs": [L][N][T][T], "rollout": [T][T]} | null,
     "mlm_predictions": [{"position", "top_k": [{"token", "id", "probability"}]}] | null}
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bertjax.explain import attention as attention_lib
from bertjax.explain import attributions, ner_target, precision, qa_target, targets
from bertjax.inference import classify
from bertjax.inference.loader import LoadedRun

FORMAT_VERSION = 1
BASELINES = ("pad", "zeros")
PRECISIONS = ("float32", "float64")


@functools.lru_cache(maxsize=8)
def _module(model_config: Any) -> Any:
    return attention_lib.attention_module(model_config)


@functools.lru_cache(maxsize=32)
def _in_float64(fn: Any) -> Any:
    return precision.in_float64(fn)


def _features(
    run: LoadedRun, text: str, text_pair: str | None, pad_to: int | None
) -> tuple[dict[str, np.ndarray], int]:
    """(the input as the run's model reads it [1, T], its real length n): T = n, or `pad_to`
    columns (BERT only: one compiled shape for inputs of different lengths)."""
    if run.model_config.model_type == "gpt2":
        if pad_to:
            raise ValueError("pad_to is only for BERT runs")
        ids = np.asarray(run.tokenizer.encode(text), np.int32)[-run.max_seq_length :]
        if text_pair:
            raise ValueError("text_pair is only for BERT runs (a GPT run continues one text)")
        if len(ids) == 0:
            raise ValueError("text is empty: nothing to explain")
        return {"input_ids": ids[None]}, len(ids)
    batch = classify.featurize(run, [text], None if text_pair is None else [text_pair])
    length = int(batch["attention_mask"][0].sum())
    columns = length if not pad_to else max(length, int(pad_to))
    if columns > batch["input_ids"].shape[1]:
        batch = {k: np.pad(v, ((0, 0), (0, columns - v.shape[1]))) for k, v in batch.items()}
    return {k: np.asarray(v[:, :columns], np.int32) for k, v in batch.items()}, length


def _tokens(run: LoadedRun, ids: np.ndarray) -> list[str]:
    tok = run.tokenizer
    if hasattr(tok, "convert_ids_to_tokens"):
        return tok.convert_ids_to_tokens(ids)
    return [tok.decode([int(i)]) for i in ids]


def _single_token(run: LoadedRun, target: str) -> int:
    ids = list(np.asarray(run.tokenizer.encode(target)).reshape(-1))
    if len(ids) != 1:
        raise ValueError(f"--target={target!r} is {len(ids)} tokens; name a single token")
    return int(ids[0])


def _top_k(run: LoadedRun, logits: np.ndarray, k: int) -> list[dict[str, Any]]:
    probs = np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32)), np.float64)
    best = np.argsort(-probs)[:k]
    names = _tokens(run, best)
    return [{"token": n, "id": int(i), "probability": float(probs[i])}
            for n, i in zip(names, best, strict=True)]  # fmt: skip


def _select(run: LoadedRun, module: Any, text: str, text_pair: str | None, *, target: str | None,
            score: str, word: int | None, answer: tuple[int, int] | None,
            answer_tokens: tuple[int, int] | None, qa_score: str,
            pad_to: int | None) -> tuple[targets.Selection, Any] | None:  # fmt: skip
    """(the row and target, the score function) of a QA or NER run; None for other heads."""
    head = run.model_config.head
    if head == "question_answering":
        if text_pair is None:
            raise ValueError("a QA run explains a question (text) about a context (text_pair)")
        if qa_score not in targets.QA_SCORES:
            raise ValueError(
                f"unknown qa_score {qa_score!r}; expected one of {list(targets.QA_SCORES)}"
            )
        chosen = qa_target.select(run, text, text_pair, answer=answer,
                                  answer_tokens=answer_tokens, pad_to=pad_to)  # fmt: skip
        chosen.target["score"] = qa_target.SCORE_NAMES[qa_score]
        return chosen, targets.span_score(module, qa_score)
    if head == "token_classification":
        if text_pair:
            raise ValueError("an NER run tags one text: text_pair is not used")
        chosen = ner_target.select(run, text, word=word, tag=target, pad_to=pad_to)
        chosen.target["score"] = score
        return chosen, targets.tag_score(module, score)
    return None


def _inputs(head: str, text: str, text_pair: str | None, word: int | None) -> dict[str, Any]:
    if head == "question_answering":
        return {"question": text, "context": text_pair}
    if head == "token_classification":
        return {"text": text, "word": word}
    return {"text": text, "text_pair": text_pair}


def explain(
    run: LoadedRun,
    text: str,
    text_pair: str | None = None,
    *,
    target: str | None = None,
    method: str = "integrated_gradients",
    steps: int = 64,
    rule: str = "gauss_legendre",
    baseline: str = "pad",
    score: str = "logit",
    dtype: str = "float32",
    batch_size: int = 32,
    top_k: int = 5,
    with_attention: bool = True,
    pad_to: int | None = None,
    word: int | None = None,
    answer: tuple[int, int] | None = None,
    answer_tokens: tuple[int, int] | None = None,
    qa_score: str = "span",
) -> dict[str, Any]:
    """Explains the run's output for one input (see the module docstring for the result).

    text, text_pair: the input; QA runs: the question and its context.
    target: classifiers: a label name or index (default: the predicted class); MLM runs: the
      token to explain at the first [MASK] (default: the top prediction); GPT runs: the next
      token (default: the most likely); NER runs: the tag (default: the word's predicted tag).
    method: one of `attributions.METHODS`; steps / rule: integrated gradients' integration.
    baseline: "pad" (BERT: [CLS] [PAD] ... [SEP], every token but the special ones replaced by
      [PAD], as captum's BERT tutorial; GPT: the position embeddings alone) or "zeros".
    score: classifiers and NER runs: "logit", "probability" or "log_probability" of the
      target class / tag.
    dtype: "float64" evaluates the whole model in float64 (needs jax_enable_x64).
    pad_to: BERT runs: pad the input to this many tokens (padding is masked, and its
      attributions are 0), so that inputs of different lengths share one compiled shape.
    word: NER runs: the index of the word explained (`bertjax.inference.ner.split_words`;
      default: the first word of the first predicted entity).
    answer / answer_tokens: QA runs: the span explained, as (start, end) character offsets in
      the context or (first, last) token positions (default: the predicted answer).
    qa_score: QA runs: "span" (start logit at the span's start + end logit at its end),
      "start" or "end".
    """
    if method not in attributions.METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {list(attributions.METHODS)}")
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; expected one of {list(BASELINES)}")
    if dtype not in PRECISIONS:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {list(PRECISIONS)}")
    cfg = run.model_config
    module = _module(cfg)
    params = run.params
    is_gpt = cfg.model_type == "gpt2"
    if dtype == "float64":
        if not jax.config.jax_enable_x64:
            raise RuntimeError("dtype='float64' needs jax.config.update('jax_enable_x64', True)")
        params = jax.tree_util.tree_map(lambda p: np.asarray(p, np.float64), params)
    np_dtype = np.float64 if dtype == "float64" else np.float32

    if word is not None and cfg.head != "token_classification":
        raise ValueError("word is for NER (token-classification) runs")
    if (answer or answer_tokens) and cfg.head != "question_answering":
        raise ValueError("answer / answer_tokens are for QA (question-answering) runs")
    selected = _select(run, module, text, text_pair, target=target, score=score, word=word,
                       answer=answer, answer_tokens=answer_tokens, qa_score=qa_score,
                       pad_to=pad_to)  # fmt: skip
    selection: targets.Selection | None = None
    if selected is not None:
        selection, score_fn = selected
        batch, length = selection.batch, selection.length
    else:
        batch, length = _features(run, text, text_pair, pad_to)
    ids = batch["input_ids"][0]
    tokens = _tokens(run, ids[:length])
    out, probs = attention_lib.attention_probs(module, run.params, batch)

    # The target: which scalar of the output to explain.
    prediction: Any
    if selection is not None:
        prediction, target_info, extra = selection.prediction, selection.target, selection.extra
    elif cfg.head == "classification":
        logits = np.asarray(out["logits"][0], np.float64)
        prediction = classify.postprocess(run, logits[None])[0]
        index = targets.resolve_label(target, run.label_names, logits)
        names = run.label_names or [str(i) for i in range(len(logits))]
        multi = run.problem_type == "multi_label"
        score_fn = targets.class_score(module, score, multi)
        target_info = {"kind": "class", "index": index, "label": names[index], "score": score}
        extra: tuple[Any, ...] = (np.int32(index),)
    elif cfg.head in ("mlm", "pretraining"):
        masks = np.flatnonzero(ids == run.tokenizer.mask_id)
        if len(masks) == 0:
            raise ValueError("an MLM run explains a masked token: put [MASK] in the text")
        position = int(masks[0])
        mlm_logits = np.asarray(out["mlm_logits"][0, position])
        token = int(np.argmax(mlm_logits)) if not target else _single_token(run, target)
        prediction = _top_k(run, mlm_logits, top_k)
        score_fn = targets.masked_token_score(module)
        target_info = {"kind": "masked_token", "position": position, "token_id": token,
                       "token": _tokens(run, [token])[0], "score": "log_probability"}  # fmt: skip
        extra = (np.int32(position), np.int32(token))
    elif cfg.head == "causal_lm":
        last = np.asarray(out["logits"][0, -1])
        token = int(np.argmax(last)) if not target else _single_token(run, target)
        prediction = _top_k(run, last, top_k)
        score_fn = targets.next_token_score(module)
        target_info = {"kind": "next_token", "token_id": token,
                       "token": _tokens(run, [token])[0], "score": "log_probability"}  # fmt: skip
        extra = (np.int32(token),)
    else:
        raise ValueError(f"cannot explain a run with head {cfg.head!r} (no output to attribute)")

    jbatch = {k: jnp.asarray(v) for k, v in batch.items()}
    embed_fn = functools.partial(targets.embed, module)
    if dtype == "float64":
        score_fn = _in_float64(score_fn)
        embed_fn = precision.in_float64(embed_fn)
    x = np.asarray(embed_fn(params, jbatch)[0], np_dtype)
    if baseline == "zeros":
        base = np.zeros_like(x)
    elif is_gpt:
        # GPT has no [PAD]: the tokens are removed from the embedding sum, the positions kept.
        # (A zero baseline is degenerate for a pre-LN model: LayerNorm(a x) does not depend
        # on a > 0, so the whole change happens at a ~ 0 and the integral misses it.)
        table = np.asarray(params["word_embeddings"]["embedding"], np_dtype)
        base = x - table[ids]
    else:
        special = np.isin(ids, [run.tokenizer.cls_id, run.tokenizer.sep_id])
        base_ids = np.where(special, ids, run.tokenizer.pad_id).astype(np.int32)
        base_batch = dict(jbatch, input_ids=jnp.asarray(base_ids[None]))
        base = np.asarray(embed_fn(params, base_batch)[0], np_dtype)
    aux = (params, jbatch, *extra)

    completeness = None
    if method == "integrated_gradients":
        result = attributions.integrated_gradients(
            score_fn, aux, x, base, steps=steps, rule=rule, batch_size=batch_size
        )
        gap = result["f_input"] - result["f_baseline"]
        completeness = {
            "f_input": result["f_input"],
            "f_baseline": result["f_baseline"],
            "delta": result["delta"],
            "relative": abs(result["delta"]) / abs(gap) if gap else None,
        }
    elif method == "grad_x_input":
        result = attributions.grad_x_input(score_fn, aux, x)
    elif method == "grad_norm":
        result = attributions.grad_norm(score_fn, aux, x)
    else:
        special = np.zeros(len(ids), bool)
        if not is_gpt:
            special = np.isin(ids, [run.tokenizer.cls_id, run.tokenizer.sep_id])
        real = np.flatnonzero(~special[:length])
        result = attributions.occlusion(score_fn, aux, x, base, real)
    raw = np.asarray(result["tokens"], np.float64)[:length]
    target_info["value"] = result["f_input"]

    attention = None
    if with_attention:
        maps = probs[:, 0, :, :length, :length]  # [L, N, T, T]
        attention = {
            "num_layers": int(maps.shape[0]),
            "num_heads": int(maps.shape[1]),
            "probs": np.round(maps, 5).tolist(),
            "rollout": np.round(attention_lib.rollout(maps), 5).tolist(),
        }
    mlm_predictions = None
    if cfg.head in ("mlm", "pretraining"):
        mlm_all = np.asarray(out["mlm_logits"][0])
        mlm_predictions = [
            {"position": int(p), "top_k": _top_k(run, mlm_all[p], top_k)}
            for p in np.flatnonzero(ids[:length] == run.tokenizer.mask_id)
        ]
    segments = batch.get("token_type_ids", np.zeros_like(batch["input_ids"]))[0, :length]
    return {
        "format_version": FORMAT_VERSION,
        "run": run.workdir,
        "task": run.manifest.get("task"),
        "model_type": cfg.model_type,
        "head": cfg.head,
        "inputs": _inputs(cfg.head, text, text_pair, word),
        "tokens": tokens,
        "token_ids": [int(i) for i in ids[:length]],
        "segments": [int(s) for s in segments],
        "prediction": prediction,
        "target": target_info,
        "method": {
            "name": method,
            "steps": steps if method == "integrated_gradients" else None,
            "rule": rule if method == "integrated_gradients" else None,
            "baseline": baseline,
            "score": target_info["score"],
            "precision": dtype,
        },  # fmt: skip
        "attributions": {
            "raw": raw.tolist(),
            "normalized": attributions.normalize(raw).tolist(),
        },
        "completeness": completeness,
        "attention": attention,
        "mlm_predictions": mlm_predictions,
    }
