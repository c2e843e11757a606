"""Tagging evaluation of one checkpoint or an ensemble on a labelled TSV.

Each clip is scored whole (clips longer than one transformer pass are
chunked by the model itself); an ensemble averages the members' sigmoid
probabilities, as the teacher ensemble does during distillation.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ced_common.logs import progress_bar
from ced_common.tables import markdown_table
from distill.data import AudioStore, ClassLabels, class_labels_for, read_table, table_targets
from distill.metrics import tagging_metrics
from hear_ced.audio import read_clip
from hear_ced.checkpoints import load_model_file
from hear_ced.model import CED, CEDConfig

# Shorter clips are zero-padded to one patch (160 ms), as tagging and the HEAR API pad them.
_MIN_SAMPLES = CEDConfig().patch_samples
# Clips held while waiting for a batch of their length, in batches.
PENDING_BATCHES = 2

log = logging.getLogger(__name__)


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
        wave = store.read(hdf5path, os.path.basename(filename))
    else:
        wave = read_clip(filename)
    if wave.shape[-1] < _MIN_SAMPLES:
        wave = np.pad(wave, (0, _MIN_SAMPLES - wave.shape[-1]))
    return wave


@torch.no_grad()
def predict(
    models: Sequence[CED],
    eval_set: EvalSet,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> np.ndarray:
    """Mean sigmoid probability of ``models`` per clip, (clips, classes).

    Clips stream through in bounded memory (an evaluation set of AudioSet's
    size does not fit as one array): each clip waits with others of its
    length until a batch is full, so no clip is padded by its neighbours, and
    at most ``PENDING_BATCHES * batch_size`` clips are held at once. Only the
    (clips, classes) output is allocated for the whole set.
    """
    store = AudioStore()
    probs = np.zeros((len(eval_set), models[0].config.num_classes), dtype=np.float32)
    pending: dict[int, list[tuple[int, np.ndarray]]] = {}
    held = 0

    def run(items: list[tuple[int, np.ndarray]]) -> None:
        wave = torch.from_numpy(np.stack([w for _, w in items])).to(device)
        mean = torch.stack([torch.sigmoid(m(wave).float()) for m in models]).mean(0)
        probs[[i for i, _ in items]] = mean.cpu().numpy()

    was_training = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        for i in progress_bar(
            range(len(eval_set)), desc="evaluate", logger=log, disable=not progress, leave=False
        ):
            wave = _read_clip(eval_set, i, store)
            length = wave.shape[-1]
            pending.setdefault(length, []).append((i, wave))
            del wave  # the clip lives in ``pending`` only, and leaves with its batch
            held += 1
            if len(pending[length]) == batch_size or held > PENDING_BATCHES * batch_size:
                # A full batch, or too many lengths waiting: run the largest group.
                length = max(pending, key=lambda n: len(pending[n]))
                held -= len(pending[length])
                run(pending.pop(length))
        for items in pending.values():
            run(items)
    finally:
        store.close()
        for m, training in zip(models, was_training, strict=True):
            m.train(training)
    return probs


def evaluate_models(
    models: Sequence[CED], eval_set: EvalSet, batch_size: int = 32, device: str = "cpu"
) -> dict[str, float]:
    """mAP, mean AUC and d-prime of a model (or ensemble) on ``eval_set``."""
    return tagging_metrics(eval_set.targets, predict(models, eval_set, batch_size, device))


def evaluate_checkpoint(
    checkpoints: str | os.PathLike | Sequence[str | os.PathLike],
    eval_tsv: str | os.PathLike,
    batch_size: int = 32,
    device: str = "cpu",
    progress: bool = False,
    labels: str | os.PathLike | None = None,
) -> dict:
    """Metrics of a checkpoint, or of an ensemble and each of its members.

    The list's classes come from ``labels`` (a label file), else from the
    ``class_labels_indices.csv`` beside ``eval_tsv``, else AudioSet's for a
    527-class model, else the first checkpoint's own names; a label file of another class count than the models'
    is refused. Labels are indices, MIDs or display names of that file.
    Returns a JSON-ready dict: ``ensemble`` (or the single model's) metrics,
    per-member metrics, clip and class counts.
    """
    paths = (
        [Path(checkpoints)]
        if isinstance(checkpoints, str | os.PathLike)
        else list(map(Path, checkpoints))
    )
    if not paths:
        raise ValueError("give at least one checkpoint")
    models = [load_model_file(p).to(device) for p in paths]
    classes = {m.config.num_classes for m in models}
    if len(classes) != 1:
        raise ValueError(f"checkpoints disagree on the number of classes: {sorted(classes)}")
    num_classes = classes.pop()
    names = class_labels_for(
        None if labels is None else str(labels), eval_tsv, num_classes, "--labels"
    )
    if names is None and models[0].labels:  # the names the checkpoint carries
        own = list(models[0].labels)
        names = ClassLabels(own, [""] * len(own), f"the class names of {paths[0]}")
    eval_set = load_eval_set(eval_tsv, num_classes, names)
    members = []
    probs = []
    for path, model in zip(paths, models, strict=True):
        p = predict([model], eval_set, batch_size, device, progress)
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
