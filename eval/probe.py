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

Scene tasks only: event tasks are scored by heareval through frame
predictions, a post-processing grid (median filter, minimum duration) and
sed_eval; a frame-wise linear probe would need all of that too, so event tasks
report the MLP score alone.
"""

from __future__ import annotations

import csv
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
    features: np.ndarray  # (n, dim) float32
    targets: np.ndarray  # (n, n_labels) multi-hot / one-hot


def _label_index(folder: Path) -> dict[str, int]:
    with open(folder / "labelvocabulary.csv", newline="") as handle:
        return {str(row["label"]): int(row["idx"]) for row in csv.DictReader(handle)}


def load_split(folder: Path, split: str, label_index: dict[str, int]) -> SplitData:
    """Per-file embeddings and JSON labels of one split (no pickles are read)."""
    split_dir = folder / split
    labels = json.loads((folder / f"{split}.json").read_text())
    if not labels:
        raise ProbeError(f"split {split} of {folder.name} has no files")
    features, targets = [], np.zeros((len(labels), len(label_index)), dtype=np.int64)
    for row, name in enumerate(sorted(labels)):
        path = split_dir / f"{name}.embedding.npy"
        if not path.is_file():
            raise ProbeError(f"missing embedding {path}")
        features.append(np.load(path, allow_pickle=False).astype(np.float32).reshape(-1))
        for label in labels[name]:
            targets[row, label_index[str(label)]] = 1
    stacked = np.stack(features)
    if not np.isfinite(stacked).all():
        raise ProbeError(f"embeddings of split {split} contain NaN or Infinity")
    return SplitData(stacked, targets)


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
    return SplitData(
        np.concatenate([p.features for p in parts]), np.concatenate([p.targets for p in parts])
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


def _score(metric: str, label_index: dict[str, int], predictions: np.ndarray, targets) -> float:
    with warnings.catch_warnings():
        # dcase_util (imported by heareval.score) warns about pkg_resources on import
        warnings.simplefilter("ignore")
        from heareval.score import available_scores

    value = available_scores[metric](label_to_idx=label_index)(predictions, targets)
    return float(value[0][1] if isinstance(value, tuple) else value)


def linear_probe(folder: str | Path) -> dict:
    """Probe one heareval embeddings folder; returns score, per-fold scores and chosen C."""
    folder = Path(folder)
    metadata = json.loads((folder / "task_metadata.json").read_text())
    if metadata["embedding_type"] != "scene":
        raise ProbeError("the linear probe covers scene tasks only (event tasks: MLP score)")
    metric = metadata["evaluation"][0]
    multilabel = metadata["prediction_type"] == "multilabel"
    label_index = _label_index(folder)
    cache: dict[str, SplitData] = {}

    def split(names: list[str]) -> SplitData:
        for name in names:
            if name not in cache:
                cache[name] = load_split(folder, name, label_index)
        return _concat([cache[name] for name in names])

    folds = {}
    for assignment in data_splits(metadata):
        train, valid, test = (split(assignment[key]) for key in ("train", "valid", "test"))
        best_c, best_valid = C_GRID[0], -math.inf
        for c in C_GRID:
            model = _fit(train, c, multilabel)
            valid_score = _score(
                metric,
                label_index,
                _probabilities(model, valid, multilabel, len(label_index)),
                valid.targets,
            )
            if math.isfinite(valid_score) and valid_score > best_valid:
                best_c, best_valid = c, valid_score
        model = _fit(train, best_c, multilabel)
        test_score = _score(
            metric,
            label_index,
            _probabilities(model, test, multilabel, len(label_index)),
            test.targets,
        )
        folds["|".join(assignment["test"])] = {"score": test_score, "C": best_c}
    scores = [fold["score"] for fold in folds.values()]
    return {"metric": metric, "score": float(np.mean(scores)), "folds": folds}
