"""A true linear probe on the embeddings hear-eval-kit has written.

heareval's own downstream model is a grid-searched MLP (1-2 hidden layers of
1024 units), so its scores mix embedding quality with a non-linear classifier.
This probe is a logistic regression on standardised embeddings (one-vs-rest for
multilabel tasks), with the same splits and folds as heareval and the task's own
primary metric (heareval's scoring functions, so numbers are comparable).

Regularisation: for every train/valid/test split, C is picked from ``C_GRID``
on the valid split; the model trained on the train split with that C is
scored on the test split. k-fold tasks use heareval's rotation (test = fold i,
valid = fold i+1, train = the rest) and report the mean over folds, as
heareval's ``aggregated_scores`` does.

Event tasks: the probe classifies every timestamp embedding (one-vs-rest
logistic regression on frames), then scores exactly as heareval does: its
``get_events_for_all_files`` turns frame probabilities into events with the
task's post-processing grid (median filter, minimum duration), and its
sed_eval-based event scores compare them with the reference events. C and the
post-processing are chosen together on the valid split.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
MAX_ITER = 500


class ProbeError(ValueError):
    """The embeddings folder cannot be probed (missing files, event task, ...)."""


@dataclass(frozen=True)
class SplitData:
    features: np.ndarray  # (n, dim) float32: one row per clip, or per timestamp for events
    targets: np.ndarray  # (n, n_labels) multi-hot / one-hot
    filenames: tuple[str, ...] = ()  # event tasks: clip of each row
    timestamps: np.ndarray | None = None  # event tasks: time of each row, ms


def _label_index(folder: Path) -> dict[str, int]:
    with open(folder / "labelvocabulary.csv", newline="") as handle:
        return {str(row["label"]): int(row["idx"]) for row in csv.DictReader(handle)}


def _multi_hot(labels, label_index: dict[str, int]) -> np.ndarray:
    row = np.zeros(len(label_index), dtype=np.int64)
    for label in labels:
        row[label_index[str(label)]] = 1
    return row


def load_split(folder: Path, split: str, label_index: dict[str, int]) -> SplitData:
    """Per-file embeddings and JSON labels of one split (no pickles are read)."""
    split_dir = folder / split
    names = sorted(json.loads((folder / f"{split}.json").read_text()))
    if not names:
        raise ProbeError(f"split {split} of {folder.name} has no files")
    features, targets, filenames, timestamps = [], [], [], []
    for name in names:
        path = split_dir / f"{name}.embedding.npy"
        if not path.is_file():
            raise ProbeError(f"missing embedding {path}")
        embedding = np.load(path, allow_pickle=False).astype(np.float32)
        labels = json.loads((split_dir / f"{name}.target-labels.json").read_text())
        if embedding.ndim == 1:  # scene: one row per clip, labels of the clip
            features.append(embedding[None])
            targets.append(_multi_hot(labels, label_index)[None])
        else:  # event: one row per timestamp, labels active at that time
            times = json.loads((split_dir / f"{name}.timestamps.json").read_text())
            features.append(embedding)
            targets.append(np.stack([_multi_hot(active, label_index) for active in labels]))
            filenames += [name] * len(times)
            timestamps += times
    stacked = np.concatenate(features)
    if not np.isfinite(stacked).all():
        raise ProbeError(f"embeddings of split {split} contain NaN or Infinity")
    return SplitData(
        stacked,
        np.concatenate(targets),
        tuple(filenames),
        np.asarray(timestamps, dtype=np.float64) if timestamps else None,
    )


def data_splits(metadata: dict) -> list[dict[str, list[str]]]:
    """heareval's train/valid/test assignment (one split, or one per fold)."""
    if metadata["split_mode"] == "trainvaltest":
        return [{"train": ["train"], "valid": ["valid"], "test": ["test"]}]
    folds = sorted(metadata["splits"])
    if len(folds) < 3:
        raise ProbeError(f"k-fold needs at least 3 folds, got {folds}")
    rotations = []
    for index, test in enumerate(folds):
        valid = folds[(index + 1) % len(folds)]
        rotations.append(
            {
                "train": [f for f in folds if f not in (test, valid)],
                "valid": [valid],
                "test": [test],
            }
        )
    return rotations


def _concat(parts: list[SplitData]) -> SplitData:
    if len(parts) == 1:
        return parts[0]
    events = parts[0].timestamps is not None
    return SplitData(
        np.concatenate([p.features for p in parts]),
        np.concatenate([p.targets for p in parts]),
        tuple(name for p in parts for name in p.filenames),
        np.concatenate([p.timestamps for p in parts]) if events else None,
    )


def _fit(train: SplitData, c: float, multilabel: bool):
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    regression = LogisticRegression(C=c, max_iter=MAX_ITER)
    if multilabel:
        model = make_pipeline(StandardScaler(), OneVsRestClassifier(regression))
        targets = train.targets
    else:
        model = make_pipeline(StandardScaler(), regression)
        targets = train.targets.argmax(axis=1)
    with warnings.catch_warnings():
        # tiny or unbalanced splits: convergence and absent-label warnings are expected
        warnings.simplefilter("ignore")
        model.fit(train.features, targets)
    return model


def _probabilities(model, data: SplitData, multilabel: bool, n_labels: int) -> np.ndarray:
    """(n, n_labels) scores; classes unseen in training get probability 0."""
    probabilities = model.predict_proba(data.features)
    if multilabel:
        return probabilities
    full = np.zeros((data.features.shape[0], n_labels), dtype=np.float64)
    full[:, model.classes_] = probabilities
    return full


def _score(metric: str, label_index: dict[str, int], predictions, targets) -> float:
    """heareval's score; arrays for scene tasks, event dicts for event tasks."""
    with warnings.catch_warnings():
        # dcase_util (imported by heareval.score) warns about pkg_resources on import
        warnings.simplefilter("ignore")
        from heareval.score import available_scores

        value = available_scores[metric](label_to_idx=label_index)(predictions, targets)
    return float(value[0][1] if isinstance(value, tuple) else value)


class _Scorer:
    """Scores one split's probabilities with the task's metric (events: per post-processing)."""

    def __init__(self, folder: Path, metadata: dict, label_index: dict[str, int]) -> None:
        self.folder, self.metric, self.label_index = folder, metadata["evaluation"][0], label_index
        self.events = metadata["embedding_type"] == "event"
        if self.events:
            from heareval.predictions.task_predictions import EVENT_POSTPROCESSING_GRID

            params = metadata.get("evaluation_params", {})
            self.grid = params.get("event_postprocessing_grid", EVENT_POSTPROCESSING_GRID)

    def __call__(self, probabilities: np.ndarray, data: SplitData, splits: list[str], fixed=None):
        """{post-processing (events) or None: score}."""
        if not self.events:
            return {None: _score(self.metric, self.label_index, probabilities, data.targets)}
        import torch
        from heareval.predictions.task_predictions import get_events_for_all_files

        reference = {}
        for split in splits:
            reference.update(json.loads((self.folder / f"{split}.json").read_text()))
        with contextlib.redirect_stderr(io.StringIO()):  # heareval's progress bars
            by_postprocessing = get_events_for_all_files(
                torch.from_numpy(probabilities),
                list(data.filenames),
                torch.from_numpy(data.timestamps),
                {index: label for label, index in self.label_index.items()},
                self.grid,
                fixed,
            )
        return {
            key: _score(self.metric, self.label_index, events, reference)
            for key, events in by_postprocessing.items()
        }


def linear_probe(folder: str | Path) -> dict:
    """Probe one heareval embeddings folder; returns score, per-fold scores and choices."""
    folder = Path(folder)
    metadata = json.loads((folder / "task_metadata.json").read_text())
    multilabel = metadata["prediction_type"] == "multilabel"
    label_index = _label_index(folder)
    scorer = _Scorer(folder, metadata, label_index)
    cache: dict[str, SplitData] = {}

    def split(names: list[str]) -> SplitData:
        for name in names:
            if name not in cache:
                cache[name] = load_split(folder, name, label_index)
        return _concat([cache[name] for name in names])

    def probabilities(model, data: SplitData) -> np.ndarray:
        return _probabilities(model, data, multilabel, len(label_index))

    folds = {}
    for assignment in data_splits(metadata):
        train, valid, test = (split(assignment[key]) for key in ("train", "valid", "test"))
        best = (-math.inf, C_GRID[0], None)  # valid score, C, post-processing
        for c in C_GRID:
            model = _fit(train, c, multilabel)
            for postprocessing, score in scorer(
                probabilities(model, valid), valid, assignment["valid"]
            ).items():
                if math.isfinite(score) and score > best[0]:
                    best = (score, c, postprocessing)
        _, c, postprocessing = best
        model = _fit(train, c, multilabel)
        scores = scorer(probabilities(model, test), test, assignment["test"], postprocessing)
        fold = {"score": next(iter(scores.values())), "C": c}
        if postprocessing is not None:
            fold["postprocessing"] = dict(postprocessing)
        folds["|".join(assignment["test"])] = fold
    values = [fold["score"] for fold in folds.values()]
    return {"metric": scorer.metric, "score": float(np.mean(values)), "folds": folds}
