"""GLUE's metrics, in numpy, as the GLUE benchmark defines them.

Accuracy for SST-2, MNLI (matched and mismatched reported separately), QNLI,
RTE and WNLI; F1 of the positive class and accuracy for MRPC and QQP; Matthews
correlation for CoLA; Pearson and Spearman correlation for STS-B. The GLUE
leaderboard scores a task with two metrics by their mean, which `task_metrics`
reports as `score` (a single-metric task's score is that metric). Values are
fractions, as scikit-learn and scipy return them (the leaderboard shows x100).
"""

from __future__ import annotations

import numpy as np


def accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    """Fraction of predictions equal to the label; labels/preds int [N]."""
    labels, preds = _pair(labels, preds)
    return float(np.mean(labels == preds))


def f1_binary(labels: np.ndarray, preds: np.ndarray, positive: int = 1) -> float:
    """F1 of the `positive` class (MRPC: paraphrase, QQP: duplicate); 0.0 when
    there is neither a positive label nor a positive prediction."""
    labels, preds = _pair(labels, preds)
    tp = np.sum((preds == positive) & (labels == positive))
    wrong = np.sum((preds == positive) != (labels == positive))
    return float(2 * tp / (2 * tp + wrong)) if tp + wrong else 0.0


def matthews_corr(labels: np.ndarray, preds: np.ndarray) -> float:
    """Matthews correlation coefficient (Gorodkin's multi-class form, which is
    the usual phi coefficient for CoLA's two classes); 0.0 when either side is
    constant, where the coefficient is undefined."""
    labels, preds = _pair(labels, preds)
    classes, inv = np.unique(np.concatenate([labels, preds]), return_inverse=True)
    k, n = len(classes), len(labels)
    confusion = np.zeros((k, k), np.float64)
    np.add.at(confusion, (inv[:n], inv[n:]), 1)
    t_sum, p_sum = confusion.sum(1), confusion.sum(0)
    cov_tp = np.trace(confusion) * n - t_sum @ p_sum
    cov_tt = n * n - t_sum @ t_sum
    cov_pp = n * n - p_sum @ p_sum
    if cov_tt * cov_pp == 0:
        return 0.0
    return float(cov_tp / np.sqrt(cov_tt * cov_pp))


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two float [N] arrays; NaN if either is constant."""
    x, y = _pair(np.asarray(x, np.float64), np.asarray(y, np.float64))
    xm, ym = x - x.mean(), y - y.mean()
    denom = np.sqrt(np.sum(xm * xm) * np.sum(ym * ym))
    return float(np.sum(xm * ym) / denom) if denom > 0 else float("nan")


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation: Pearson of the ranks, ties sharing their
    average rank."""
    return pearson(average_ranks(x), average_ranks(y))


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of float [N] values; tied values get the mean of the ranks
    they span (scipy.stats.rankdata's 'average')."""
    _, inv, counts = np.unique(np.asarray(x, np.float64), return_inverse=True,
                               return_counts=True)
    last = np.cumsum(counts)
    return ((last - counts + 1 + last) / 2.0)[inv.reshape(-1)]


# Which metrics each task reports, in GLUE's order.
TASK_METRICS = {
    "cola": ("mcc",),
    "sst2": ("accuracy",),
    "mrpc": ("f1", "accuracy"),
    "stsb": ("pearson", "spearman"),
    "qqp": ("f1", "accuracy"),
    "mnli": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
    "wnli": ("accuracy",),
}

_METRIC_FNS = {"accuracy": accuracy, "f1": f1_binary, "mcc": matthews_corr,
               "pearson": pearson, "spearman": spearman}


def task_metrics(task: str, labels: np.ndarray, preds: np.ndarray) -> dict[str, float]:
    """GLUE metrics of one task plus `score`, their mean.

    Args:
      task: a key of TASK_METRICS.
      labels: int [N] class ids (float [N] scores for stsb).
      preds: predictions, same shape and kind as labels.
    """
    if task not in TASK_METRICS:
        raise ValueError(f"task={task!r}: not a GLUE task (one of {', '.join(TASK_METRICS)})")
    out = {name: _METRIC_FNS[name](labels, preds) for name in TASK_METRICS[task]}
    out["score"] = float(np.mean([out[name] for name in TASK_METRICS[task]]))
    return out


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"labels and predictions differ in length: {a.size} vs {b.size}")
    if a.size == 0:
        raise ValueError("no examples to score")
    return a, b
