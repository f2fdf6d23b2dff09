"""GLUE metrics equal scikit-learn / scipy on random and real-label predictions."""

import numpy as np
import pytest
from conftest import data_path
from scipy import stats
from sklearn import metrics as skm

from bert_jax.finetune import glue, glue_metrics


def _real_labels(task):
    spec = glue.task_spec(task)
    examples = glue.read_split(task, "dev", data_path("glue")).examples
    if spec.is_regression:
        return np.array([e.label for e in examples], np.float64)
    return np.array([spec.label_names.index(e.label) for e in examples])


@pytest.mark.parametrize("seed", range(5))
def test_classification_metrics_match_sklearn_random(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 500))
    labels, preds = rng.integers(0, 2, n), rng.integers(0, 2, n)
    assert glue_metrics.accuracy(labels, preds) == pytest.approx(skm.accuracy_score(labels, preds))
    assert glue_metrics.f1_binary(labels, preds) == pytest.approx(skm.f1_score(labels, preds))
    assert glue_metrics.matthews_corr(labels, preds) == pytest.approx(
        skm.matthews_corrcoef(labels, preds))
    multi_l, multi_p = rng.integers(0, 3, n), rng.integers(0, 3, n)
    assert glue_metrics.matthews_corr(multi_l, multi_p) == pytest.approx(
        skm.matthews_corrcoef(multi_l, multi_p))


@pytest.mark.parametrize("seed", range(5))
def test_correlations_match_scipy_random(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=300)
    y = 0.6 * x + rng.normal(size=300)
    # Rounding makes ties, which Spearman must rank by their average.
    xr, yr = np.round(x, 1), np.round(y, 0)
    for a, b in ((x, y), (xr, yr)):
        assert glue_metrics.pearson(a, b) == pytest.approx(stats.pearsonr(a, b)[0], abs=1e-12)
        assert glue_metrics.spearman(a, b) == pytest.approx(stats.spearmanr(a, b)[0], abs=1e-12)
    np.testing.assert_allclose(glue_metrics.average_ranks(xr), stats.rankdata(xr))


@pytest.mark.parametrize("task", ["cola", "sst2", "mrpc", "rte", "wnli", "qnli"])
def test_real_dev_labels_random_predictions(task):
    labels = _real_labels(task)
    rng = np.random.default_rng(0)
    # Predictions that agree with the gold label 75% of the time.
    preds = np.where(rng.random(labels.size) < 0.75, labels, 1 - labels)
    got = glue_metrics.task_metrics(task, labels, preds)
    assert got["accuracy" if task != "cola" else "mcc"] == pytest.approx(
        skm.accuracy_score(labels, preds) if task != "cola"
        else skm.matthews_corrcoef(labels, preds))
    if task == "mrpc":
        assert got["f1"] == pytest.approx(skm.f1_score(labels, preds))
        assert got["score"] == pytest.approx((got["f1"] + got["accuracy"]) / 2)
    assert set(got) == {*glue_metrics.TASK_METRICS[task], "score"}


def test_stsb_real_scores_noisy_predictions():
    labels = _real_labels("stsb")
    assert labels.size == 1500 and labels.min() >= 0 and labels.max() <= 5
    preds = labels + np.random.default_rng(1).normal(scale=1.0, size=labels.size)
    got = glue_metrics.task_metrics("stsb", labels, preds)
    assert got["pearson"] == pytest.approx(stats.pearsonr(labels, preds)[0], abs=1e-12)
    assert got["spearman"] == pytest.approx(stats.spearmanr(labels, preds)[0], abs=1e-12)
    # STS-B gold scores are heavily tied (multiples of 0.2 and others).
    assert glue_metrics.spearman(labels, np.round(preds)) == pytest.approx(
        stats.spearmanr(labels, np.round(preds))[0], abs=1e-12)


def test_degenerate_and_bad_inputs():
    labels = np.array([0, 1, 1, 0])
    assert glue_metrics.matthews_corr(labels, np.ones(4, int)) == skm.matthews_corrcoef(
        labels, np.ones(4, int)) == 0.0
    assert np.isnan(glue_metrics.pearson(labels, np.ones(4)))
    with pytest.raises(ValueError, match="differ in length"):
        glue_metrics.accuracy(labels, labels[:3])
    with pytest.raises(ValueError, match="not a GLUE task"):
        glue_metrics.task_metrics("squad", labels, labels)
