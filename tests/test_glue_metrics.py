"""GLUE metrics against scikit-learn / SciPy on random inputs (and the degenerate cases)."""

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from bertjax import glue_metrics


@pytest.mark.parametrize("seed", range(5))
def test_classification_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    y_true, y_pred = rng.integers(0, 2, n), rng.integers(0, 2, n)
    assert glue_metrics.accuracy(y_true, y_pred) == pytest.approx(
        skm.accuracy_score(y_true, y_pred)
    )
    assert glue_metrics.f1(y_true, y_pred) == pytest.approx(skm.f1_score(y_true, y_pred))
    assert glue_metrics.matthews_corrcoef(y_true, y_pred) == pytest.approx(
        skm.matthews_corrcoef(y_true, y_pred)
    )
    # Multiclass MCC (MNLI-sized label sets) uses the general formula.
    y3, p3 = rng.integers(0, 3, n), rng.integers(0, 3, n)
    assert glue_metrics.matthews_corrcoef(y3, p3) == pytest.approx(skm.matthews_corrcoef(y3, p3))
    assert glue_metrics.accuracy(y3, p3) == pytest.approx(skm.accuracy_score(y3, p3))


@pytest.mark.parametrize("seed", range(5))
def test_correlations_match_scipy(seed):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(3, 500))
    x = rng.normal(size=n)
    y = 0.5 * x + rng.normal(size=n)
    assert glue_metrics.pearson(x, y) == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)
    assert glue_metrics.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    # STS-B gold scores are heavily tied (steps of 0.2): ranks must average the ties.
    gold = np.round(rng.uniform(0, 5, n) * 5) / 5
    pred = np.round(gold + rng.normal(size=n), 1)
    assert glue_metrics.spearman(gold, pred) == pytest.approx(
        stats.spearmanr(gold, pred).statistic, abs=1e-12
    )
    assert glue_metrics.pearson(gold, pred) == pytest.approx(
        stats.pearsonr(gold, pred).statistic, abs=1e-12
    )


def test_degenerate_inputs_give_zero_not_nan():
    y = np.array([0, 1, 1, 0])
    constant = np.ones(4, dtype=int)
    assert glue_metrics.matthews_corrcoef(y, constant) == skm.matthews_corrcoef(y, constant) == 0.0
    assert glue_metrics.f1(y, np.zeros(4, dtype=int)) == 0.0
    assert glue_metrics.pearson(np.arange(4.0), np.full(4, 2.5)) == 0.0
    assert glue_metrics.spearman(np.arange(4.0), np.full(4, 2.5)) == 0.0
    assert glue_metrics.matthews_corrcoef(y, y) == pytest.approx(1.0)
    assert glue_metrics.pearson(np.arange(5.0), -np.arange(5.0)) == pytest.approx(-1.0)


def test_bad_inputs_are_errors():
    with pytest.raises(ValueError, match="same length"):
        glue_metrics.accuracy(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="empty"):
        glue_metrics.pearson(np.zeros(0), np.zeros(0))
    with pytest.raises(ValueError, match="unknown GLUE metric"):
        glue_metrics.compute(("accuracy", "bleu"), np.zeros(3), np.zeros(3))
    assert glue_metrics.compute(("accuracy", "mcc"), np.array([1, 0]), np.array([1, 0])) == {
        "accuracy": 1.0,
        "mcc": 1.0,
    }
