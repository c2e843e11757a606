"""Compact top-K layout: bit-exact round trip, seeds derived or stored, size, refusals."""

import numpy as np
import pytest

from bench import compact
from bench.storage import synthetic_topk
from distill.augment import epoch_seeds


def round_trip(tmp_path, values, indexes, seeds, run_seed=5, epoch=2, num_classes=527):
    arrays = compact.encode(
        values, indexes, seeds, num_classes=num_classes, run_seed=run_seed, epoch=epoch
    )
    path = compact.write(tmp_path / "e.npz", arrays)
    return path, compact.decode(compact.read(path))


@pytest.mark.parametrize("k", [1, 20, 527])
def test_round_trip_is_exact(tmp_path, k):
    values, indexes = synthetic_topk(300, k, seed=k)
    seeds = epoch_seeds(5, 2, 300)
    _, (got_values, got_indexes, got_seeds) = round_trip(tmp_path, values, indexes, seeds)
    want_values, want_indexes = compact.canonical_order(values, indexes)
    assert np.array_equal(got_values.view(np.uint16), want_values.view(np.uint16))
    assert np.array_equal(got_indexes, want_indexes)
    assert np.array_equal(got_seeds, seeds)
    # Same (class -> value) pairs per row as the input, in any order.
    dense_in = np.zeros((300, 527), np.float32)
    dense_out = np.zeros((300, 527), np.float32)
    np.put_along_axis(dense_in, indexes.astype(np.int64), values.astype(np.float32), 1)
    np.put_along_axis(dense_out, got_indexes.astype(np.int64), got_values.astype(np.float32), 1)
    assert np.array_equal(dense_in, dense_out)


def test_ties_zeros_and_extreme_indices(tmp_path):
    values = np.array([[0.5, 0.5, 0.0], [1.0, 0.25, 0.25]], np.float16)
    indexes = np.array([[526, 0, 3], [0, 526, 1]], np.int16)
    seeds = np.array([-7, 2**31 - 1], np.int32)  # not derivable: stored as they are
    path, (got_values, got_indexes, got_seeds) = round_trip(tmp_path, values, indexes, seeds)
    assert got_indexes.tolist() == [[0, 526, 3], [0, 1, 526]]
    assert got_values.tolist() == [[0.5, 0.5, 0.0], [1.0, 0.25, 0.25]]
    assert got_seeds.tolist() == [-7, 2**31 - 1]
    assert "seeds" in compact.read(path)


def test_derived_seeds_not_stored_and_size_goal(tmp_path):
    n = 5000
    values, indexes = synthetic_topk(n, 20)
    path, _ = round_trip(tmp_path, values, indexes, epoch_seeds(5, 2, n))
    assert "seeds" not in compact.read(path)
    assert path.stat().st_size / n <= 60  # the plain layout needs 84 bytes per row


@pytest.mark.parametrize(
    "values,indexes,match",
    [
        ([[0.5, -0.1]], [[1, 2]], "non-negative"),
        ([[0.5, 0.1]], [[3, 3]], "twice"),
        ([[0.5, 0.1]], [[1, 527]], "class indices"),
        ([[0.5, 0.1]], [[1, 2, 3]], "need values"),
    ],
)
def test_bad_input_rejected(values, indexes, match):
    with pytest.raises(ValueError, match=match):
        compact.encode(
            np.array(values, np.float16),
            np.array(indexes),
            np.zeros(1, np.int32),
            num_classes=527,
            run_seed=0,
            epoch=0,
        )
