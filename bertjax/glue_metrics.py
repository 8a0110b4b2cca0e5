"""The official GLUE metrics, in plain numpy, computed on a whole eval set at once.

Accuracy, binary F1 (MRPC, QQP), Matthews correlation (CoLA), Pearson and Spearman correlation
(STS-B). Each matches scikit-learn / SciPy (checked in tests/test_glue_metrics.py). Where a metric
is undefined (a constant input, no positive predictions), it is 0.0 rather than NaN, as
scikit-learn does for MCC and F1: a NaN would make "best checkpoint by metric" meaningless and is
not valid JSON in metrics.jsonl.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _pair(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(
            f"metrics need two 1-D arrays of the same length; got {y_true.shape} and {y_pred.shape}"
        )
    if y_true.size == 0:
        raise ValueError("metrics of an empty eval set are undefined")
    return y_true, y_pred


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of exact matches."""
    y_true, y_pred = _pair(y_true, y_pred)
    return float(np.mean(y_true == y_pred))


def f1(y_true: np.ndarray, y_pred: np.ndarray, positive: int = 1) -> float:
    """Binary F1 of the `positive` class (sklearn `f1_score(average="binary")`)."""
    y_true, y_pred = _pair(y_true, y_pred)
    tp = float(np.sum((y_pred == positive) & (y_true == positive)))
    fp = float(np.sum((y_pred == positive) & (y_true != positive)))
    fn = float(np.sum((y_pred != positive) & (y_true == positive)))
    denom = 2 * tp + fp + fn
    return 0.0 if denom == 0 else 2 * tp / denom


def matthews_corrcoef(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Matthews correlation coefficient, multiclass form (sklearn `matthews_corrcoef`)."""
    y_true, y_pred = _pair(y_true, y_pred)
    classes, encoded = np.unique(np.concatenate([y_true, y_pred]), return_inverse=True)
    n = len(classes)
    t, p = encoded[: len(y_true)], encoded[len(y_true) :]
    confusion = np.zeros((n, n), dtype=np.float64)
    np.add.at(confusion, (t, p), 1.0)
    t_sum, p_sum = confusion.sum(axis=1), confusion.sum(axis=0)
    correct, samples = np.trace(confusion), confusion.sum()
    cov_ytyp = correct * samples - np.dot(t_sum, p_sum)
    cov_ypyp = samples**2 - np.dot(p_sum, p_sum)
    cov_ytyt = samples**2 - np.dot(t_sum, t_sum)
    if cov_ypyp * cov_ytyt == 0:
        return 0.0
    return float(cov_ytyp / np.sqrt(cov_ytyt * cov_ypyp))


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation (scipy `pearsonr(x, y).statistic`); 0.0 when either is constant."""
    x, y = _pair(x, y)
    x = x.astype(np.float64) - np.mean(x, dtype=np.float64)
    y = y.astype(np.float64) - np.mean(y, dtype=np.float64)
    norm = np.sqrt(np.dot(x, x) * np.dot(y, y))
    if norm == 0:
        return 0.0
    return float(np.clip(np.dot(x, y) / norm, -1.0, 1.0))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (scipy `rankdata(method="average")`)."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # Start index of each run of equal values; a run's members share the mean of its ranks.
    starts = np.flatnonzero(np.concatenate([[True], sorted_x[1:] != sorted_x[:-1]]))
    ends = np.concatenate([starts[1:], [len(x)]])
    run_rank = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (scipy `spearmanr(x, y).statistic`), ties averaged."""
    x, y = _pair(x, y)
    return pearson(_average_ranks(x), _average_ranks(y))


# Metric name (as it appears in metrics.jsonl) -> function(y_true, y_pred).
METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "mcc": matthews_corrcoef,
    "pearson": pearson,
    "spearman": spearman,
}


def compute(names: tuple[str, ...], y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """The metrics called `names` (keys of `METRICS`) of predictions against labels."""
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown GLUE metric(s) {unknown}; known: {sorted(METRICS)}")
    return {name: METRICS[name](y_true, y_pred) for name in names}
