"""Extractive question answering with a loaded run: windows, forward, answers with character
offsets (the same functions the squad task evaluates with, so served answers are scored ones).

    run = load_run("runs/squad")
    answers = predict(run, ["Who wrote it?"], ["It was written by Ann Lee in 1990."])
    # [{"text": "Ann Lee", "start": 18, "end": 25, "score": 11.2, "null_score_diff": -9.1,
    #   "n_best": [...]}]

`featurize` makes run_squad's windows (`bertjax.data.squad.featurize`) with the run's
doc_stride / max_query_length (run.json's data), `forward` gives start/end logits, and
`postprocess` picks the best span over all windows of a question: the n_best_size best starts
and ends of each window, a start on a token whose window gives it the most context, end >=
start, at most max_answer_length tokens; score = start + end logit. With `version_2` the answer
is "" when the null score ([CLS] start + end, the lowest over windows) exceeds the best span's
score by more than `null_score_diff_threshold`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bertjax.data import squad
from bertjax.data.features import MODEL_KEYS
from bertjax.inference import batches

DEFAULTS = {"doc_stride": 128, "max_query_length": 64, "n_best_size": 20, "max_answer_length": 30}


def featurize(
    run: Any, questions: Sequence[str], contexts: Sequence[str]
) -> tuple[dict[str, np.ndarray], list[squad.QAExample]]:
    """(windows as `bertjax.data.squad.featurize` returns them, the examples) of the pairs."""
    if len(questions) != len(contexts):
        raise ValueError(f"{len(questions)} questions but {len(contexts)} contexts")
    data = {**DEFAULTS, **(run.manifest.get("data") or {})}
    examples = [
        squad.QAExample(qid=str(i), question=q, context=c)
        for i, (q, c) in enumerate(zip(questions, contexts, strict=True))
    ]
    feats, _ = squad.featurize(
        examples,
        run.tokenizer,
        max_seq_length=run.max_seq_length,
        doc_stride=int(data["doc_stride"]),
        max_query_length=int(data["max_query_length"]),
        training=False,
    )
    return feats, examples


def forward(module: Any, params: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
    """(start_logits, end_logits) [B, T] float32; jit with `module` bound."""
    inputs = {k: batch[k] for k in MODEL_KEYS if k in batch}
    out = module.apply({"params": params}, inputs, train=False)
    return out["start_logits"], out["end_logits"]


def _top(x: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-x, kind="stable")[:k]


def postprocess(
    examples: Sequence[squad.QAExample],
    feats: dict[str, np.ndarray],
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    *,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    version_2: bool = False,
    null_score_diff_threshold: float = 0.0,
) -> list[dict[str, Any]]:
    """The answer of every example from the logits of its windows (rows of `feats`).

    Returns one dict per example: text, start / end (character offsets in the context; -1 for
    no answer), score (start + end logit), null_score_diff (null score - best span score; the
    no-answer probability proxy of the v2.0 script's best-threshold search) and n_best (up to
    n_best_size distinct answers with score and softmax probability).
    """
    start_logits = np.asarray(start_logits, np.float64)
    end_logits = np.asarray(end_logits, np.float64)
    by_example: dict[int, list[int]] = {}
    for row, ex in enumerate(feats["example_index"]):
        by_example.setdefault(int(ex), []).append(row)
    results = []
    for ex_index, ex in enumerate(examples):
        candidates: list[tuple[float, int, int]] = []
        null = np.inf
        for row in by_example.get(ex_index, []):
            s_log, e_log = start_logits[row], end_logits[row]
            offsets, max_ctx = feats["offsets"][row], feats["max_context"][row]
            null = min(null, s_log[0] + e_log[0])
            for s in _top(s_log, n_best_size):
                if offsets[s, 0] < 0 or not max_ctx[s]:
                    continue
                for e in _top(e_log, n_best_size):
                    if offsets[e, 0] < 0 or e < s or e - s + 1 > max_answer_length:
                        continue
                    candidates.append((s_log[s] + e_log[e], int(offsets[s, 0]), int(offsets[e, 1])))
        candidates.sort(key=lambda c: -c[0])
        n_best, seen = [], set()
        for score, cs, ce in candidates:
            text = ex.context[cs:ce]
            if text in seen:
                continue
            seen.add(text)
            n_best.append({"text": text, "start": cs, "end": ce, "score": float(score)})
            if len(n_best) == n_best_size:
                break
        scores = np.array([c["score"] for c in n_best] + ([null] if version_2 else []))
        if len(scores):
            probs = np.exp(scores - scores.max())
            probs /= probs.sum()
            for c, p in zip(n_best, probs, strict=False):
                c["probability"] = float(p)
        best = n_best[0] if n_best else {"text": "", "start": -1, "end": -1, "score": -np.inf}
        diff = float(null - best["score"]) if np.isfinite(null) else -np.inf
        answer = dict(best)
        if version_2 and (not n_best or diff > null_score_diff_threshold):
            answer = {"text": "", "start": -1, "end": -1, "score": float(null)}
        answer.pop("probability", None)
        answer["null_score_diff"] = diff
        answer["n_best"] = n_best
        results.append(answer)
    return results


def logits(run: Any, feats: dict[str, np.ndarray], batch_size: int = 32):
    """(start_logits, end_logits) [N, T] of every window, in fixed-size batches."""
    apply = batches.jitted(forward, run.module)
    starts, ends = [], []
    for batch, real in batches.fixed_batches(feats, MODEL_KEYS, batch_size):
        s, e = apply(run.params, batch)
        starts.append(np.asarray(s)[:real])
        ends.append(np.asarray(e)[:real])
    width = feats["input_ids"].shape[1]
    if not starts:
        return np.zeros((0, width), np.float32), np.zeros((0, width), np.float32)
    return np.concatenate(starts), np.concatenate(ends)


def predict(
    run: Any,
    questions: Sequence[str],
    contexts: Sequence[str],
    batch_size: int = 32,
    **options: Any,
) -> list[dict[str, Any]]:
    """Answers (see `postprocess`) of each question about its context; `options` override the
    run's n_best_size / max_answer_length / version_2 / null_score_diff_threshold."""
    feats, examples = featurize(run, questions, contexts)
    start, end = logits(run, feats, batch_size)
    return postprocess(examples, feats, start, end, **settings(run, **options))


def settings(run: Any, **options: Any) -> dict[str, Any]:
    """`postprocess`'s keyword arguments from run.json's data (`options` override them)."""
    data = {**DEFAULTS, **(run.manifest.get("data") or {})}
    return {
        "n_best_size": int(data["n_best_size"]),
        "max_answer_length": int(data["max_answer_length"]),
        "version_2": bool(data.get("version_2", False)),
        "null_score_diff_threshold": float(data.get("null_score_diff_threshold", 0.0)),
        **options,
    }
