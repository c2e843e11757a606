"""The linear probe's fast parts keep the meaning of what they replace.

The fit reaches scikit-learn's regularised optimum; the onset score equals heareval's.
"""

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from heareval.score import available_scores
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from hear_ced import probe
from hear_ced.eval import probe as eval_probe
from hear_ced.eval.probe import linear_probe, onset_f_measure
from hear_ced.probe import C_GRID, SplitData, fit_path

HOP_MS = 50.0


def write_event_embeddings(
    folder: Path, frames: int, labels: int, folds: int, dim: int,
    notes_per_second: float, noise: float, clip_frames: int, seed: int = 0,
) -> Path:  # fmt: skip
    """An event task's heareval embedding folder (``<fold>/<clip>.embedding.npy``,
    ``.target-labels.json``, ``.timestamps.json``, ``<fold>.json`` reference events) with
    about ``frames`` timestamps: a noisy linear mix of the active notes' directions."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"key{k:02d}" for k in range(labels)]
    split_names = [f"fold{f:02d}" for f in range(folds)]
    metadata = {
        "task_name": "synthetic_maestro", "embedding_type": "event",
        "prediction_type": "multilabel", "split_mode": "presplit_kfold",
        "splits": split_names, "sample_duration": clip_frames * HOP_MS / 1000,
        "evaluation": ["event_onset_50ms_fms", "event_onset_offset_50ms_20perc_fms"],
    }  # fmt: skip
    with open(folder / "labelvocabulary.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("idx", "label"), *enumerate(names)])
    directions = rng.standard_normal((labels, dim)).astype(np.float32)
    clips_per_fold = max(1, round(frames / folds / clip_frames))
    seconds = clip_frames * HOP_MS / 1000
    times = np.arange(clip_frames) * HOP_MS
    for split in split_names:
        (folder / split).mkdir(exist_ok=True)
        reference = {}
        for index in range(clips_per_fold):
            name = f"{split}_{index:03d}.wav"
            count = rng.poisson(notes_per_second * seconds)
            starts = rng.uniform(0, seconds - 0.2, count) * 1000
            ends = np.minimum(starts + rng.uniform(100, 1000, count), seconds * 1000)
            keys = rng.integers(0, labels, count)
            active = np.zeros((clip_frames, labels), dtype=np.float32)
            for start, end, key in zip(starts, ends, keys, strict=True):
                active[(times >= start) & (times < end), key] = 1.0
            jitter = noise * rng.standard_normal((clip_frames, dim)).astype(np.float32)
            np.save(folder / split / f"{name}.embedding.npy", active @ directions + jitter)
            frame_labels = [[names[k] for k in np.flatnonzero(row)] for row in active]
            (folder / split / f"{name}.target-labels.json").write_text(json.dumps(frame_labels))
            (folder / split / f"{name}.timestamps.json").write_text(json.dumps(times.tolist()))
            reference[name] = [
                {"label": names[k], "start": round(float(s), 3), "end": round(float(e), 3)}
                for s, e, k in zip(starts, ends, keys, strict=True)
            ]
        (folder / f"{split}.json").write_text(json.dumps(reference))
    (folder / "task_metadata.json").write_text(json.dumps(metadata))
    return folder


def _data(rng, n, dim=6, labels=4, multilabel=False):
    x = rng.standard_normal((n, dim)) * rng.uniform(0.1, 5, dim) + rng.uniform(-3, 3, dim)
    x = x.astype(np.float32)
    directions = rng.standard_normal((dim, labels))
    logits = (x - x.mean(0)) / x.std(0) @ directions + 0.5 * rng.standard_normal((n, labels))
    if multilabel:
        y = (logits > 0.8).astype(np.int64)
    else:
        y = np.eye(labels, dtype=np.int64)[logits.argmax(1)]
    return x, y


def _sklearn(x, y, c, multilabel):
    """scikit-learn's fit, converged far beyond its default tolerance: the exact optimum."""
    regression = LogisticRegression(C=c, max_iter=100_000, tol=1e-10)
    model = make_pipeline(
        StandardScaler(), OneVsRestClassifier(regression) if multilabel else regression
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit(x, y if multilabel else y.argmax(1))


def test_multiclass_fit_matches_scikit_learn_on_every_c():
    rng = np.random.default_rng(0)
    x, y = _data(rng, 300)
    y[:, 3] = 0  # class 3 never seen in training: probability 0, as before
    y[y.sum(1) == 0, 0] = 1
    test_x, _ = _data(rng, 100)
    fitted = dict(fit_path(SplitData(x, y), multilabel=False))
    assert sorted(fitted) == sorted(C_GRID)
    for c, model in fitted.items():
        reference = _sklearn(x, y, c, False)
        ours = model.probabilities(test_x)
        assert ours.shape == (100, 4) and np.all(ours[:, 3] == 0)
        np.testing.assert_allclose(ours[:, :3], reference.predict_proba(test_x), atol=3e-3)


def test_multilabel_fit_matches_one_vs_rest_including_constant_labels():
    rng = np.random.default_rng(1)
    x, y = _data(rng, 400, labels=5, multilabel=True)
    y[:, 3] = 0  # never active
    y[:, 4] = 1  # always active
    test_x, _ = _data(rng, 80, labels=5, multilabel=True)
    for c, model in fit_path(SplitData(x, y), multilabel=True):
        reference = _sklearn(x, y, c, True).predict_proba(test_x)
        ours = model.probabilities(test_x)
        assert np.all(ours[:, 3] == 0) and np.all(ours[:, 4] == 1)
        np.testing.assert_allclose(ours, reference, atol=3e-3)


def _events(rng, files, labels, count, jitter_ms):
    """Random event lists; estimates are jittered copies plus strays (ties at the collar too)."""
    reference, estimated = {}, {}
    for file in range(files):
        name = f"f{file}.wav"
        starts = rng.uniform(0, 10000, count).round(1)
        keys = rng.integers(0, labels, count)
        reference[name] = [
            {"label": f"l{k}", "start": float(s), "end": float(s) + 300}
            for s, k in zip(starts, keys, strict=True)
        ]
        moved = starts + rng.choice([-jitter_ms, jitter_ms, 0.0, 17.3, -41.9, 49.9], count)
        stray = rng.uniform(0, 10000, count // 2)
        estimated[name] = [
            {"label": f"l{k}", "start": float(s), "end": float(s) + 100}
            for s, k in zip(
                np.concatenate([moved, stray]),
                np.concatenate([keys, keys[: count // 2]]),
                strict=True,
            )
        ]
    estimated["empty.wav"] = []
    reference["not_predicted.wav"] = reference["f0.wav"]
    return estimated, reference


@pytest.mark.parametrize(
    "metric, jitter", [("event_onset_50ms_fms", 50.0), ("event_onset_200ms_fms", 200.0)]
)
def test_onset_f_measure_equals_heareval_sed_eval_score(metric, jitter):
    rng = np.random.default_rng(2)
    labels = {f"l{k}": k for k in range(6)}
    for count in (1, 12, 60):
        estimated, reference = _events(rng, files=4, labels=6, count=count, jitter_ms=jitter)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = available_scores[metric](label_to_idx=labels)(estimated, reference)[0][1]
        collar = available_scores[metric].keywords["params"]["t_collar"]
        assert onset_f_measure(estimated, reference, collar) == expected
        assert 0 < expected < 1


@pytest.mark.slow
def test_linear_probe_scores_an_event_task_as_heareval_would(tmp_path, monkeypatch):
    folder = write_event_embeddings(tmp_path / "task", frames=1800, labels=6, folds=3, dim=16,
                                    notes_per_second=1.0, noise=0.3, clip_frames=600)  # fmt: skip
    fast = linear_probe(folder)
    assert fast["metric"] == "event_onset_50ms_fms" and sorted(fast["folds"]) == [
        "fold00",
        "fold01",
        "fold02",
    ]
    assert fast["score"] > 0.5  # noisy but linear: far above what random events score
    monkeypatch.setattr(eval_probe, "onset_f_measure", _sed_eval_onset)
    assert linear_probe(folder) == fast


def _sed_eval_onset(predictions, targets, collar):
    name = {0.05: "event_onset_50ms_fms", 0.2: "event_onset_200ms_fms"}[collar]
    labels = {event["label"]: 0 for events in targets.values() for event in events}
    return available_scores[name](label_to_idx=labels)(predictions, targets)[0][1]


@pytest.mark.parametrize(
    "shape, span, threads",
    [
        ((12, 4096, 4), True, 1),  # the demo's hearbaseline scene task
        ((366, 4096, 4), True, 1),  # the demo's hearbaseline event task (frames)
        ((2000, 8192, 50), True, None),  # large enough for torch's threads even in the span
        ((3000, 4096, 10), False, None),  # rows near the dimensions: the span saves too little
        ((1000, 256, 10), False, 1),
        ((252_000, 256, 87), False, None),  # MAESTRO: on the features with torch's threads
    ],
)
def test_solver_rule_by_problem_size(shape, span, threads):
    assert probe.solver_for(*shape) == (span, threads)


def _features_only(n_samples, dim, labels):
    return False, 1  # on the features, one thread


@pytest.mark.parametrize("multilabel", [False, True])
def test_span_solver_reaches_the_optimum_of_the_features_solver(multilabel, monkeypatch):
    rng = np.random.default_rng(3)
    x, y = _data(rng, 40, dim=120, labels=4, multilabel=multilabel)
    x[:, 7] = 2.0  # a constant feature (scale 1, as StandardScaler)
    test_x, _ = _data(rng, 50, dim=120, labels=4, multilabel=multilabel)
    assert probe.solver_for(40, 120, 4)[0]
    span = dict(fit_path(SplitData(x, y), multilabel))
    monkeypatch.setattr(probe, "solver_for", _features_only)
    features = dict(fit_path(SplitData(x, y), multilabel))
    for c in C_GRID:
        # Rows fewer than dimensions are separable: at large C the objective is flat and
        # both solvers stop short of the exact optimum; the span's fit is no farther from it.
        reference = _sklearn(x, y, c, multilabel).predict_proba(test_x)
        span_error = np.abs(span[c].probabilities(test_x) - reference).max()
        features_error = np.abs(features[c].probabilities(test_x) - reference).max()
        assert span_error <= max(3e-3, 1.25 * features_error), (c, span_error, features_error)


@pytest.mark.slow
def test_span_and_features_solvers_select_the_same_c_and_score(tmp_path, monkeypatch):
    """An event task of 200 training frames x 512 dimensions: the span solver's case."""
    folder = write_event_embeddings(tmp_path / "task", frames=600, labels=4, folds=3, dim=512,
                                    notes_per_second=1.0, noise=1.0, clip_frames=100)  # fmt: skip
    assert probe.solver_for(200, 512, 4)[0]
    span = linear_probe(folder)
    monkeypatch.setattr(probe, "solver_for", _features_only)
    features = linear_probe(folder)
    assert [f["C"] for f in span["folds"].values()] == [f["C"] for f in features["folds"].values()]
    assert span["score"] == pytest.approx(features["score"], abs=0.02)
    assert span["score"] > 0.3
