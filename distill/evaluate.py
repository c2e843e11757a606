"""Tagging evaluation of one checkpoint or an ensemble on a labelled TSV.

Each clip is scored whole, by the one rule of ``hear-ced tag`` for clips of
any length (``hear_ced.runtime.Tagger.probabilities``); an ensemble averages
the members' probabilities, as the teacher ensemble does during distillation.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hear_ced.audio import read_clip
from hear_ced.checkpoints import load_model_file
from hear_ced.common.tables import markdown_table
from hear_ced.distill.data import (
    AudioStore,
    ClassLabels,
    class_labels_for,
    read_table,
    table_targets,
)
from hear_ced.distill.metrics import tagging_metrics
from hear_ced.model import CED
from hear_ced.runtime import length_batches
from hear_ced.tagging import ModelTagger

# Clips held while waiting for a batch of their length, in batches.
PENDING_BATCHES = 2


@dataclass(frozen=True)
class EvalSet:
    """Clips to score and their multi-hot targets (clips, classes)."""

    filenames: list[str]
    hdf5paths: list[str | None]
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.filenames)


def load_eval_set(
    tsv: str | os.PathLike, num_classes: int, classes: ClassLabels | None = None
) -> EvalSet:
    """Read ``filename`` + ``labels`` (+ optional ``hdf5path``) from a TSV.

    Labels are class indices, or MIDs or display names of ``classes``.
    """
    table = read_table(tsv, required=("filename", "labels"))
    if len(table) == 0:
        raise ValueError(f"{tsv} lists no clips")
    hdf5 = table["hdf5path"].tolist() if "hdf5path" in table else [None] * len(table)
    where = [f"{tsv} row {line}" for line in range(2, len(table) + 2)]
    targets = table_targets([str(lab) for lab in table["labels"]], num_classes, classes, where)
    return EvalSet(table["filename"].tolist(), hdf5, targets)


def _read_clip(eval_set: EvalSet, i: int, store: AudioStore) -> np.ndarray:
    filename, hdf5path = eval_set.filenames[i], eval_set.hdf5paths[i]
    if hdf5path is not None and isinstance(hdf5path, str):
        return store.read(hdf5path, os.path.basename(filename))
    return read_clip(filename)


def predict(models: Sequence[CED], eval_set: EvalSet, batch_size: int = 32) -> np.ndarray:
    """Mean probability of ``models`` per clip, (clips, classes), by the rule of ``hear-ced tag``.

    Each model predicts a clip as ``hear_ced.runtime.Tagger.probabilities``
    does, whatever its length. Clips stream through in bounded memory (an
    evaluation set of AudioSet's size does not fit as one array): batches of
    one length (``hear_ced.runtime.length_batches``) hold at most
    ``PENDING_BATCHES * batch_size`` clips at once. Only the (clips, classes)
    output is allocated for the whole set. The models are left in eval mode
    (the training engine sets its model's mode at every epoch).
    """
    store = AudioStore()
    probs = np.zeros((len(eval_set), models[0].config.num_classes), dtype=np.float32)
    taggers = [ModelTagger(m.eval()) for m in models]
    try:
        clips = ((i, _read_clip(eval_set, i, store)) for i in range(len(eval_set)))
        held = PENDING_BATCHES * batch_size
        for group in length_batches(clips, lambda clip: clip[1].size, batch_size, held):
            waves = [wave for _, wave in group]
            mean = np.mean([t.probabilities(waves, batch_size) for t in taggers], axis=0)
            probs[[i for i, _ in group]] = mean
            del group, waves  # the clips go before the next ones are read
    finally:
        store.close()
    return probs


def evaluate_models(
    models: Sequence[CED], eval_set: EvalSet, batch_size: int = 32
) -> dict[str, float]:
    """mAP, mean AUC and d-prime of a model (or ensemble) on ``eval_set``."""
    return tagging_metrics(eval_set.targets, predict(models, eval_set, batch_size))


def evaluate_checkpoint(
    checkpoints: Sequence[str | os.PathLike],
    eval_tsv: str | os.PathLike,
    batch_size: int = 32,
    device: str = "cpu",
    labels: str | os.PathLike | None = None,
) -> dict:
    """Metrics of one checkpoint, or of an ensemble and each of its members.

    The list's classes come from ``labels`` (a label file), else from the
    ``class_labels_indices.csv`` beside ``eval_tsv``, else AudioSet's for a
    527-class model, else the first checkpoint's own names; a label file of another class count than the models'
    is refused. Labels are indices, MIDs or display names of that file.
    Returns a JSON-ready dict: ``ensemble`` (or the single model's) metrics,
    per-member metrics, clip and class counts.
    """
    paths = list(map(Path, checkpoints))
    models = [load_model_file(p).to(device) for p in paths]
    classes = {m.config.num_classes for m in models}
    if len(classes) != 1:
        raise ValueError(f"checkpoints disagree on the number of classes: {sorted(classes)}")
    num_classes = classes.pop()
    names = class_labels_for(
        None if labels is None else str(labels),
        eval_tsv,
        num_classes,
        "--labels",
        models[0].config.labels,
        f"the class names of {paths[0]}",
    )
    eval_set = load_eval_set(eval_tsv, num_classes, names)
    members = []
    probs = []
    for path, model in zip(paths, models, strict=True):
        p = predict([model], eval_set, batch_size)
        probs.append(p)
        members.append({"checkpoint": str(path), **tagging_metrics(eval_set.targets, p)})
    combined = tagging_metrics(eval_set.targets, np.mean(probs, axis=0))
    return {
        "eval_tsv": str(eval_tsv),
        "clips": len(eval_set),
        "classes": int(eval_set.targets.shape[1]),
        "checkpoints": [str(p) for p in paths],
        "members": members,
        "ensemble" if len(paths) > 1 else "model": combined,
    }


def format_table(result: dict) -> str:
    """A Markdown table of the members and, for several, the ensemble."""
    rows = [(Path(m["checkpoint"]).name, m) for m in result["members"]]
    if "ensemble" in result:
        rows.append((f"ensemble of {len(result['members'])}", result["ensemble"]))
    return markdown_table(
        ["model", "mAP", "mAUC", "d'"],
        [(name, f"{m['mAP']:.4f}", f"{m['mAUC']:.4f}", f"{m['d_prime']:.3f}") for name, m in rows],
    )
