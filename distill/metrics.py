"""Tagging metrics: mAP, mean ROC AUC and d-prime (scikit-learn), the per-class scores of
single-label classification, and their table and confusion-matrix figure.

A class's metric is undefined on clips that do not have what it needs:
average precision needs a positive clip, ROC AUC a positive and a negative
one. Such a class gets NaN and is left out of the mean over classes (the
AudioSet convention), so a small evaluation set that lacks some classes still
has a mean; how many were left out is logged at debug level. A mean over no
class at all is an error.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score

from hear_ced.common.files import atomic_path
from hear_ced.common.tables import markdown_table

log = logging.getLogger(__name__)


def _per_class(targets: np.ndarray, scores: np.ndarray, metric, needs_negatives: bool):
    """``metric`` of every class with the labels it needs, NaN for the others."""
    targets = np.asarray(targets)
    scores = np.asarray(scores, dtype=np.float64)
    if targets.shape != scores.shape or targets.ndim != 2:
        raise ValueError(
            f"targets and scores must both be (clips, classes); got {targets.shape} and "
            f"{scores.shape}"
        )
    positive = targets > 0
    defined = positive.any(axis=0)
    if needs_negatives:
        defined &= (~positive).any(axis=0)
    values = np.full(targets.shape[1], math.nan)
    if defined.any():
        values[defined] = metric(positive[:, defined], scores[:, defined], average=None)
    return values


def _nan_mean(values: np.ndarray, name: str) -> float:
    defined = values[~np.isnan(values)]
    if defined.size == 0:
        raise ValueError(f"{name} is undefined for every class (no class has the needed labels)")
    if defined.size < values.size:
        log.debug("%s: %d of %d classes left out", name, values.size - defined.size, values.size)
    return float(defined.mean())


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision of one class; NaN when it has no positive example."""
    return float(_per_class(np.c_[labels], np.c_[scores], average_precision_score, False)[0])


def mean_average_precision(targets: np.ndarray, scores: np.ndarray) -> float:
    """mAP over classes, skipping classes without positives."""
    values = _per_class(targets, scores, average_precision_score, needs_negatives=False)
    return _nan_mean(values, "average precision")


def mean_auc(targets: np.ndarray, scores: np.ndarray) -> float:
    """Mean ROC AUC over classes, skipping classes without both label values."""
    return _nan_mean(_per_class(targets, scores, roc_auc_score, needs_negatives=True), "ROC AUC")


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


def classification_scores(targets: np.ndarray, scores: np.ndarray) -> dict:
    """One label per clip, predicted as the top class: accuracy, per-class precision, recall,
    F1 and clip count, macro-F1 (over the classes with clips) and the confusion matrix
    (rows: true class, columns: predicted)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    truth, guess = np.asarray(targets).argmax(axis=1), np.asarray(scores).argmax(axis=1)
    classes = range(targets.shape[1])
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, guess, labels=classes, zero_division=0
    )
    return {
        "accuracy": float(np.mean(truth == guess)),
        "macro_f1": float(f1[support > 0].mean()),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "support": support.tolist(),
        "confusion": confusion_matrix(truth, guess, labels=classes).tolist(),
    }


def agreement_metrics(student: np.ndarray, teachers: np.ndarray) -> dict[str, float]:
    """How close a student's probabilities come to its teachers' (clips, classes), without labels.

    - ``mAP``: the student's mAP with the ensemble's decisions (probability >= 0.5)
      as the labels (NaN where the ensemble decides no class on any clip);
    - ``top1``: the share of clips whose most probable class is the ensemble's;
    - ``bce``: mean binary cross-entropy of the student's probabilities to the
      ensemble's, over clips and classes (what distillation minimises);
    - ``kl``: ``bce`` less the ensemble's own entropy: the mean per-class Bernoulli
      KL divergence, 0 exactly where the two agree.
    """
    eps = 1e-7
    s = np.clip(np.asarray(student, dtype=np.float64), eps, 1 - eps)
    t = np.clip(np.asarray(teachers, dtype=np.float64), eps, 1 - eps)
    bce = -(t * np.log(s) + (1 - t) * np.log1p(-s)).mean()
    entropy = -(t * np.log(t) + (1 - t) * np.log1p(-t)).mean()
    decided = teachers >= 0.5
    return {
        "mAP": mean_average_precision(decided, student) if decided.any() else math.nan,
        "top1": float(np.mean(s.argmax(axis=1) == t.argmax(axis=1))),
        "bce": float(bce),
        "kl": float(bce - entropy),
    }


def seen_classes(confusion: np.ndarray) -> np.ndarray:
    """Classes with clips or predictions: the rows and columns of a confusion matrix worth showing."""
    return np.flatnonzero(confusion.sum(axis=0) + confusion.sum(axis=1))


def class_table(
    classes: Sequence[str], targets: np.ndarray, scores: np.ndarray, multi_label: bool
) -> str:
    """Per-class Markdown table: AP (multi-label), else precision, recall and F1 of the top class."""
    if multi_label:
        return markdown_table(
            ["class", "clips", "AP"],
            [
                (
                    name,
                    int(targets[:, c].sum()),
                    f"{average_precision(targets[:, c], scores[:, c]):.3f}",
                )
                for c, name in enumerate(classes)
            ],
        )
    s = classification_scores(targets, scores)
    return markdown_table(
        ["class", "clips", "precision", "recall", "F1"],
        [
            (
                name,
                s["support"][c],
                f"{s['precision'][c]:.3f}",
                f"{s['recall'][c]:.3f}",
                f"{s['f1'][c]:.3f}",
            )
            for c, name in enumerate(classes)
        ],
    )


def plot_confusion(classes: Sequence[str], matrix: np.ndarray, path: Path) -> None:
    """A confusion matrix (rows: true class, columns: predicted) as a figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = 2 + 0.6 * len(classes)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(matrix, cmap="Blues")
    for (row, col), count in np.ndenumerate(matrix):
        ax.text(col, row, str(count), ha="center", va="center")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
