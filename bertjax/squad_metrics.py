"""SQuAD metrics exactly as the official evaluation scripts compute them.

v1.1 (`evaluate-v1.1.py`): exact match and F1 of each question, each the max over its gold
answers after `normalize_answer` (lower-case, drop punctuation, drop the articles a/an/the,
collapse white space); both averaged over every question of the dataset (a question without a
prediction scores 0) and reported in percent.

v2.0 (`evaluate-v2.0.py`): the same normalisation, but an empty gold list counts as the single
answer "" and F1 of two token lists one of which is empty is 1 when both are empty, else 0.
Averages are over the questions with a prediction; HasAns / NoAns split the questions by
whether they have gold answers; with no-answer probabilities (here: any score that grows with
"no answer", e.g. null score minus best span score) `best_exact` / `best_f1` and their
thresholds are the best a single cut-off could reach, exactly as the script's
`find_best_thresh`.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra white space (the official order)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match_score(prediction: str, ground_truth: str) -> float:
    """1.0 when the normalised strings are equal (both versions)."""
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def f1_score_v1(prediction: str, ground_truth: str) -> float:
    """Token F1 of v1.1: 0 when nothing is shared (also when both normalise to nothing)."""
    pred = normalize_answer(prediction).split()
    gold = normalize_answer(ground_truth).split()
    common = collections.Counter(pred) & collections.Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def f1_score_v2(prediction: str, ground_truth: str) -> float:
    """Token F1 of v2.0: an empty side scores 1 if both are empty, else 0."""
    pred = normalize_answer(prediction).split() if prediction else []
    gold = normalize_answer(ground_truth).split() if ground_truth else []
    if not pred or not gold:
        return float(pred == gold)
    common = collections.Counter(pred) & collections.Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def _max_over(metric, prediction: str, golds: Sequence[str]) -> float:
    return max(metric(prediction, g) for g in golds)


def evaluate_v1(
    gold_answers: Mapping[str, Sequence[str]], predictions: Mapping[str, str]
) -> dict[str, float]:
    """{"exact_match", "f1"} in percent over every question of `gold_answers` (id -> texts)."""
    if not gold_answers:
        raise ValueError("no questions to evaluate")
    em = f1 = 0.0
    for qid, golds in gold_answers.items():
        if qid not in predictions:  # the official script: "will receive score 0"
            continue
        if not golds:
            raise ValueError(f"question {qid}: no gold answers (a v2.0 question? use evaluate_v2)")
        em += _max_over(exact_match_score, predictions[qid], golds)
        f1 += _max_over(f1_score_v1, predictions[qid], golds)
    total = len(gold_answers)
    return {"exact_match": 100.0 * em / total, "f1": 100.0 * f1 / total}


def _raw_scores_v2(gold_answers, predictions):
    exact, f1 = {}, {}
    for qid, answers in gold_answers.items():
        golds = [a for a in answers if normalize_answer(a)] or [""]
        if qid not in predictions:
            continue
        pred = predictions[qid]
        exact[qid] = max(exact_match_score(pred, a) for a in golds)
        f1[qid] = max(f1_score_v2(pred, a) for a in golds)
    return exact, f1


def _best_threshold(predictions, scores, na_probs, has_ans) -> tuple[float, float]:
    """The official find_best_thresh: (best score in percent, its threshold)."""
    current = sum(1 for k in has_ans if not has_ans[k])
    best, best_thresh = current, 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        if qid not in scores:
            continue
        if has_ans[qid]:
            diff = scores[qid]
        else:
            diff = -1 if predictions[qid] else 0
        current += diff
        if current > best:
            best, best_thresh = current, na_probs[qid]
    return 100.0 * best / len(scores), best_thresh


def evaluate_v2(
    gold_answers: Mapping[str, Sequence[str]],
    predictions: Mapping[str, str],
    na_probs: Mapping[str, float] | None = None,
    na_prob_thresh: float = 1.0,
) -> dict[str, float]:
    """The v2.0 script's output dict: exact, f1, total, HasAns_*, NoAns_*, and with `na_probs`
    best_exact, best_exact_thresh, best_f1, best_f1_thresh.

    gold_answers: id -> gold texts ([] = unanswerable). predictions: id -> text ("" = no answer).
    na_probs: id -> no-answer score (default 0 for all, as the script without --na-prob-file).
    """
    if not gold_answers:
        raise ValueError("no questions to evaluate")
    has_ans = {qid: bool(a) for qid, a in gold_answers.items()}
    probs = dict(na_probs) if na_probs is not None else {k: 0.0 for k in predictions}
    exact_raw, f1_raw = _raw_scores_v2(gold_answers, predictions)
    if not exact_raw:
        raise ValueError("no question has a prediction")

    def thresholded(scores):
        return {
            qid: float(not has_ans[qid]) if probs[qid] > na_prob_thresh else s
            for qid, s in scores.items()
        }

    exact, f1 = thresholded(exact_raw), thresholded(f1_raw)

    def summary(qids: Iterable[str]) -> tuple[float, float, int]:
        qids = list(qids)
        return (
            100.0 * sum(exact[k] for k in qids) / len(qids),
            100.0 * sum(f1[k] for k in qids) / len(qids),
            len(qids),
        )

    out: dict[str, Any] = {}
    out["exact"], out["f1"], out["total"] = summary(exact)
    for name, want in (("HasAns", True), ("NoAns", False)):
        qids = [k for k, v in has_ans.items() if v == want and k in exact]
        if qids:
            out[f"{name}_exact"], out[f"{name}_f1"], out[f"{name}_total"] = summary(qids)
    if na_probs is not None:
        out["best_exact"], out["best_exact_thresh"] = _best_threshold(
            predictions, exact_raw, probs, has_ans
        )
        out["best_f1"], out["best_f1_thresh"] = _best_threshold(predictions, f1_raw, probs, has_ans)
    return out
