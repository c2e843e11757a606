"""mAP / AUC / d-prime: hand-worked values, ties and classes without the needed labels."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from hear_ced.distill.metrics import (
    average_precision,
    d_prime,
    mean_auc,
    mean_average_precision,
    tagging_metrics,
)


def random_problem(seed: int, n: int = 200, classes: int = 12):
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, classes)) < 0.2).astype(np.float32)
    # Quantised scores produce many ties.
    scores = np.round(targets * 0.3 + rng.random((n, classes)), 1)
    return targets, scores


def test_per_class_values_worked_by_hand():
    # Ranked 0.9 (+), 0.8 (-), 0.7 (+), 0.1 (-): precision 1 at recall 1/2, 2/3 at recall 1.
    assert average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(5 / 6)
    # A tie is one threshold: (+, -) at 0.5 gives precision 1/2 at recall 1/2.
    assert average_precision([1, 0, 1], [0.5, 0.5, 0.2]) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    # AUC: share of (positive, negative) pairs ranked right, a tie counting one half.
    assert mean_auc(np.c_[[1, 0, 1, 0]], np.c_[[0.5, 0.5, 0.9, 0.1]]) == pytest.approx(3.5 / 4)
    assert average_precision([1, 1], [0.2, 0.1]) == 1.0  # no negatives: AP is still defined


def test_means_skip_classes_without_positives():
    targets, scores = random_problem(3)
    targets[:, 4] = 0.0  # no positives: AP and AUC undefined
    targets[:, 5] = 1.0  # no negatives: AUC undefined
    assert math.isnan(average_precision(targets[:, 4], scores[:, 4]))
    assert average_precision(targets[:, 5], scores[:, 5]) == 1.0
    for undefined in (4, 5):
        with pytest.raises(ValueError, match="undefined for every class"):
            mean_auc(targets[:, [undefined]], scores[:, [undefined]])
    keep_ap = [c for c in range(12) if c != 4]
    expected_map = average_precision_score(targets[:, keep_ap], scores[:, keep_ap], average="macro")
    assert mean_average_precision(targets, scores) == pytest.approx(expected_map, abs=1e-12)
    keep_auc = [c for c in range(12) if c not in (4, 5)]
    expected_auc = roc_auc_score(targets[:, keep_auc], scores[:, keep_auc], average="macro")
    assert mean_auc(targets, scores) == pytest.approx(expected_auc, abs=1e-12)


def test_known_values_and_d_prime():
    targets = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=np.float32)
    perfect = targets * 0.8 + 0.1
    result = tagging_metrics(targets, perfect)
    assert result["mAP"] == 1.0 and result["mAUC"] == 1.0
    assert math.isinf(result["d_prime"])
    assert d_prime(0.5) == 0.0
    # AudioSet convention: d' = sqrt(2) * Phi^-1(AUC); AUC 0.9 -> 1.8124.
    assert d_prime(0.9) == pytest.approx(1.812388, abs=1e-6)


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="clips, classes"):
        mean_average_precision(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="undefined for every class"):
        mean_average_precision(np.zeros((3, 2)), np.ones((3, 2)))


def test_classification_scores_worked_by_hand():
    from hear_ced.distill.metrics import classification_scores

    targets = np.eye(3)[[0, 0, 1, 1]]
    scores = np.eye(3)[[0, 1, 1, 2]]  # right, wrong (to 1), right, wrong (to 2)
    got = classification_scores(targets, scores)
    assert got["accuracy"] == 0.5 and got["support"] == [2, 2, 0]
    assert got["precision"] == [1.0, 0.5, 0.0] and got["recall"] == [0.5, 0.5, 0.0]
    assert got["macro_f1"] == pytest.approx((2 / 3 + 0.5) / 2)  # classes with clips only
    assert got["confusion"] == [[1, 1, 0], [0, 1, 1], [0, 0, 0]]


def test_agreement_metrics_worked_by_hand():
    from hear_ced.distill.metrics import agreement_metrics

    teachers = np.array([[0.9, 0.2], [0.3, 0.6]])
    same = agreement_metrics(teachers, teachers)
    assert same["top1"] == 1.0 and same["mAP"] == 1.0 and same["kl"] == pytest.approx(0, abs=1e-12)
    flipped = agreement_metrics(teachers[:, ::-1], teachers)
    assert flipped["top1"] == 0.0
    bce = -np.mean(
        teachers * np.log(teachers[:, ::-1]) + (1 - teachers) * np.log(1 - teachers[:, ::-1])
    )
    assert flipped["bce"] == pytest.approx(bce)
    assert np.isnan(agreement_metrics(teachers, teachers * 0.1)["mAP"])
