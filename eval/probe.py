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

Solver: ``hear_ced.probe.fit_path``, one objective and optimiser for every
size (``hear_ced.probe.solver_for`` decides whether it runs on the features or
on the span of the training rows, and on how many threads).

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
import logging
import math
import warnings
from pathlib import Path

import numpy as np

from hear_ced.labels import multi_hot
from hear_ced.probe import SplitData, fit_path

log = logging.getLogger(__name__)


class ProbeError(ValueError):
    """The embeddings folder cannot be probed (missing files, event task, ...)."""


def _label_index(folder: Path) -> dict[str, int]:
    with open(folder / "labelvocabulary.csv", newline="") as handle:
        return {str(row["label"]): int(row["idx"]) for row in csv.DictReader(handle)}


def _targets(rows: list[list], label_index: dict[str, int]) -> np.ndarray:
    """(rows, labels) multi-hot targets of each row's active labels."""
    return np.stack(
        [multi_hot((label_index[str(x)] for x in row), len(label_index)) for row in rows]
    )


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
            targets.append(_targets([labels], label_index))
        else:  # event: one row per timestamp, labels active at that time
            times = json.loads((split_dir / f"{name}.timestamps.json").read_text())
            features.append(embedding)
            targets.append(_targets(labels, label_index))
            filenames += [name] * len(times)
            timestamps += times
    return SplitData(
        np.concatenate(features),
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


def _score(metric: str, label_index: dict[str, int], predictions, targets) -> float:
    """heareval's score; arrays for scene tasks, event dicts for event tasks."""
    with warnings.catch_warnings():
        # dcase_util (imported by heareval.score) warns about pkg_resources on import
        warnings.simplefilter("ignore")
        from heareval.score import available_scores

        params = getattr(available_scores[metric], "keywords", {}).get("params", {})
        if params.get("evaluate_onset") and not params.get("evaluate_offset"):
            return onset_f_measure(predictions, targets, params["t_collar"])
        value = available_scores[metric](label_to_idx=label_index)(predictions, targets)
    return float(value[0][1] if isinstance(value, tuple) else value)


def onset_f_measure(predictions: dict, targets: dict, collar: float) -> float:
    """heareval's onset-only event F-measure, equal to its sed_eval score but O(n log n).

    sed_eval compares every reference event of a file with every estimate in
    Python, and the probe scores each C and post-processing. With onsets alone, a reference and an estimate
    of one label match when their onsets (s) differ by at most ``collar``; for
    such equal-width windows, giving each reference, in onset order, the earliest
    unmatched estimate inside its window is a maximum matching, the count
    sed_eval's bipartite matching finds. Files are those of ``predictions``, and
    the counts go through sed_eval's own precision/recall/F formulas.
    """
    from sed_eval import metric

    n_ref = n_sys = n_tp = 0
    for filename, estimated in predictions.items():
        reference = targets.get(filename, [])
        n_ref, n_sys = n_ref + len(reference), n_sys + len(estimated)
        onsets: dict[str, tuple[list[float], list[float]]] = {}
        for side, events in enumerate((reference, estimated)):
            for event in events:
                onsets.setdefault(str(event["label"]), ([], []))[side].append(
                    event["start"] / 1000.0
                )
        for reference_onsets, estimated_onsets in onsets.values():
            n_tp += _onset_matches(sorted(reference_onsets), sorted(estimated_onsets), collar)
    precision = metric.precision(Ntp=float(n_tp), Nsys=float(n_sys))
    recall = metric.recall(Ntp=float(n_tp), Nref=float(n_ref))
    return float(metric.f_measure(precision=precision, recall=recall))


def _onset_matches(reference: list[float], estimated: list[float], collar: float) -> int:
    """Size of a maximum matching of sorted onsets within ``collar`` (sed_eval's test)."""
    matches = next_estimate = 0
    for onset in reference:
        while next_estimate < len(estimated) and onset - estimated[next_estimate] > collar:
            next_estimate += 1  # too early for this and every later reference
        if next_estimate < len(estimated) and math.fabs(onset - estimated[next_estimate]) <= collar:
            matches += 1
            next_estimate += 1
    return matches


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

    folds = {}
    for assignment in data_splits(metadata):
        train, valid, test = (split(assignment[key]) for key in ("train", "valid", "test"))
        best = None  # valid score, C, post-processing, model
        for c, model in fit_path(train, multilabel):
            valid_scores = scorer(model.probabilities(valid.features), valid, assignment["valid"])
            for postprocessing, score in valid_scores.items():
                if best is None:  # nothing scores: the smallest C, default post-processing
                    best = (-math.inf, c, None, model)
                if math.isfinite(score) and score > best[0]:
                    best = (score, c, postprocessing, model)
        _, c, postprocessing, model = best
        scores = scorer(
            model.probabilities(test.features), test, assignment["test"], postprocessing
        )
        fold = {"score": next(iter(scores.values())), "C": c}
        if postprocessing is not None:
            fold["postprocessing"] = dict(postprocessing)
        folds["|".join(assignment["test"])] = fold
    values = [fold["score"] for fold in folds.values()]
    return {"metric": scorer.metric, "score": float(np.mean(values)), "folds": folds}
