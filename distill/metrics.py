"""Multi-label tagging metrics: mAP, mean ROC AUC and d-prime.

Written in numpy (ties handled the way scikit-learn handles them) so that
evaluation needs no extra dependency and the test suite can check the
numbers against scikit-learn independently.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm, rankdata


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the step-wise precision-recall curve of one class.

    NaN when the class has no positive example (AP is undefined there).
    Tied scores form one threshold, as in scikit-learn.
    """
    labels = np.asarray(labels, dtype=np.float64)
    positives = labels.sum()
    if positives == 0:
        return math.nan
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    sorted_scores = np.asarray(scores, dtype=np.float64)[order]
    true_pos = np.cumsum(labels[order])
    # One operating point per distinct score: the last index of each tie group.
    last_of_group = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(sorted_scores) - 1]
    true_pos = true_pos[last_of_group]
    predicted = last_of_group + 1.0
    precision = true_pos / predicted
    recall = true_pos / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of one class via the rank-sum statistic (ties count one half).

    NaN when the class has only positives or only negatives.
    """
    labels = np.asarray(labels, dtype=bool)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _per_class(metric, targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    targets = np.asarray(targets)
    scores = np.asarray(scores)
    if targets.shape != scores.shape or targets.ndim != 2:
        raise ValueError(
            f"targets and scores must both be (clips, classes); got {targets.shape} and "
            f"{scores.shape}"
        )
    return np.array([metric(targets[:, c], scores[:, c]) for c in range(targets.shape[1])])


def _nan_mean(values: np.ndarray, name: str) -> float:
    defined = values[~np.isnan(values)]
    if defined.size == 0:
        raise ValueError(f"{name} is undefined for every class (no class has the needed labels)")
    return float(defined.mean())


def mean_average_precision(targets: np.ndarray, scores: np.ndarray) -> float:
    """mAP over classes, skipping classes without positives."""
    return _nan_mean(_per_class(average_precision, targets, scores), "average precision")


def mean_auc(targets: np.ndarray, scores: np.ndarray) -> float:
    """Mean ROC AUC over classes, skipping classes without both label values."""
    return _nan_mean(_per_class(roc_auc, targets, scores), "ROC AUC")


def d_prime(auc: float) -> float:
    """Sensitivity index sqrt(2) * Phi^-1(AUC), as reported for AudioSet."""
    return float(math.sqrt(2.0) * norm.ppf(auc))


def tagging_metrics(targets: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """mAP, mean AUC and d-prime of the mean AUC in one dictionary."""
    auc = mean_auc(targets, scores)
    return {
        "mAP": mean_average_precision(targets, scores),
        "mAUC": auc,
        "d_prime": d_prime(auc),
    }
