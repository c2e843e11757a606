"""Paired comparisons over seeds: sign test and bootstrap interval of the mean difference.

A seed pairs the runs it appears in (same initial weights, same data order),
so two rows are compared through their per-seed differences, not their
separate means.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import binomtest


def sign_test(differences: Sequence[float]) -> float:
    """One-sided (H1: differences > 0) sign-test p-value, ties dropped; 1.0 when all tie."""
    diffs = np.asarray(differences, dtype=np.float64)
    wins, losses = int((diffs > 0).sum()), int((diffs < 0).sum())
    if wins + losses == 0:
        return 1.0
    return float(binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue)


def bootstrap_mean_interval(
    values: Sequence[float], level: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (resampling the seeds with replacement)."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        raise ValueError("bootstrap of no values")
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def compare_paired(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict:
    """Per-seed differences a - b with their mean, bootstrap interval and sign test.

    ``wins``/``losses`` count the seeds with a > b and a < b; ``p_value`` is
    the sign test's (ties dropped).
    """
    if len(a) != len(b) or not len(a):
        raise ValueError(
            f"paired comparison needs equal, non-empty lists; got {len(a)} and {len(b)}"
        )
    diffs = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    low, high = bootstrap_mean_interval(diffs, level)
    return {
        "differences": [float(d) for d in diffs],
        "mean": float(diffs.mean()),
        "ci_low": low,
        "ci_high": high,
        "wins": int((diffs > 0).sum()),
        "losses": int((diffs < 0).sum()),
        "p_value": sign_test(diffs),
    }


def beats(comparison: dict, alpha: float = 0.05) -> bool:
    """The decision rule: sign-test p < alpha and the interval lies above 0."""
    return comparison["p_value"] < alpha and comparison["ci_low"] > 0.0
