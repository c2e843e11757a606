"""Evaluation of one checkpoint or an ensemble on labelled clips.

The clips are a TSV (``filename``, ``labels`` as class indices, MIDs or
display names, optional ``hdf5path``), or, as ``finetune`` reads its data, a
folder with one sub-folder per class or a CSV (``filename``, ``labels``):
there the class names must be classes of the model. Single-label data (one
class per clip) also gets accuracy, per-class precision/recall/F1, macro-F1
and a confusion matrix, the prediction being the top class. Each clip is scored whole, by the one rule of ``hear-ced tag`` for clips of
any length (``hear_ced.runtime.Tagger.probabilities``); an ensemble averages
the members' probabilities, as the teacher ensemble does during distillation.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hear_ced.audio import audio_files, read_clip
from hear_ced.checkpoints import load_model_file
from hear_ced.common.files import atomic_path, file_sha256
from hear_ced.common.tables import markdown_table
from hear_ced.distill.data import (
    AudioStore,
    ClassLabels,
    class_labels_for,
    read_table,
    table_targets,
)
from hear_ced.distill.metrics import (
    agreement_metrics,
    classification_scores,
    plot_confusion,
    seen_classes,
    tagging_metrics,
)
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
    """Read ``filename`` + ``labels`` (+ optional ``hdf5path``) from a TSV, or a class-folder
    tree or CSV (``finetune``'s data).

    Labels are class indices, or MIDs or display names of ``classes``.
    """
    if is_class_data(tsv):
        return _load_named(Path(tsv), num_classes, classes)
    table = read_table(tsv, required=("filename", "labels"))
    if len(table) == 0:
        raise ValueError(f"{tsv} lists no clips")
    hdf5 = table["hdf5path"].tolist() if "hdf5path" in table else [None] * len(table)
    where = [f"{tsv} row {line}" for line in range(2, len(table) + 2)]
    targets = table_targets([str(lab) for lab in table["labels"]], num_classes, classes, where)
    return EvalSet(table["filename"].tolist(), hdf5, targets)


def is_class_data(path: str | os.PathLike) -> bool:
    """A folder per class or a CSV (``finetune``'s data), rather than a TSV."""
    return Path(path).is_dir() or Path(path).suffix.lower() == ".csv"


def _load_named(data: Path, num_classes: int, classes: ClassLabels | None) -> EvalSet:
    """``finetune``'s data as an EvalSet; classes the model lacks are refused, each named."""
    from hear_ced.distill.finetune import read_dataset

    dataset = read_dataset(data, min_classes=1)
    missing = [c for c in dataset.classes if classes is None or classes.index(c) is None]
    if missing:
        known = f"its classes: {', '.join(classes.names)}" if classes else "it names no classes"
        raise ValueError(
            f"{data}: {len(missing)} class(es) the model does not have: {', '.join(missing)} "
            f"({known})"
        )
    where = [str(e.path) for e in dataset.examples]
    targets = table_targets(
        [";".join(e.labels) for e in dataset.examples], num_classes, classes, where
    )
    return EvalSet(where, [None] * len(where), targets)


def model_name(path: str | os.PathLike) -> str:
    """``folder/file (hash)``: two runs' ``final.safetensors`` differ."""
    path = Path(path)
    return f"{path.parent.name}/{path.name} ({file_sha256(path)[:8]})"


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
    out: str | os.PathLike | None = None,
) -> dict:
    """Metrics of one checkpoint, or of an ensemble and each of its members.

    The list's classes come from ``labels`` (a label file), else from the
    ``class_labels_indices.csv`` beside ``eval_tsv``, else AudioSet's for a
    527-class model, else the first checkpoint's own names; a label file of another class count than the models'
    is refused. Labels are indices, MIDs or display names of that file.
    Returns a JSON-ready dict: ``ensemble`` (or the single model's) metrics,
    per-member metrics, clip and class counts, and for single-label clips
    ``classification`` (see ``classification_scores``). With ``out``, writes
    the per-clip predictions and the confusion plot there (``write_outputs``).
    """
    paths = list(map(Path, checkpoints))
    models = [load_model_file(p).to(device) for p in paths]
    classes = {m.config.num_classes for m in models}
    if len(classes) != 1:
        raise ValueError(f"checkpoints disagree on the number of classes: {sorted(classes)}")
    num_classes = classes.pop()
    names = class_labels_for(
        None if labels is None else str(labels),
        None if is_class_data(eval_tsv) else eval_tsv,
        num_classes,
        "--labels",
        models[0].config.labels,
        f"the class names of {paths[0]}",
    )
    eval_set = load_eval_set(eval_tsv, num_classes, names)
    single = bool((eval_set.targets.sum(axis=1) == 1).all())
    members = []
    probs = []
    for path, model in zip(paths, models, strict=True):
        p = predict([model], eval_set, batch_size)
        probs.append(p)
        members.append({"checkpoint": str(path), "name": model_name(path),
                        **scores_of(eval_set.targets, p, single)})  # fmt: skip
    combined = np.mean(probs, axis=0)
    result = {
        "eval_tsv": str(eval_tsv),
        "clips": len(eval_set),
        "classes": int(eval_set.targets.shape[1]),
        "checkpoints": [str(p) for p in paths],
        "members": members,
        "ensemble" if len(paths) > 1 else "model": scores_of(eval_set.targets, combined, single),
    }
    if single:
        classes = names.names if names else [str(i) for i in range(num_classes)]
        result["classification"] = {"classes": classes} | classification_scores(
            eval_set.targets, combined
        )
    if out is not None:
        write_outputs(Path(out), eval_set, combined, names, single)
    return result


def scores_of(targets: np.ndarray, probs: np.ndarray, single: bool) -> dict[str, float]:
    """Tagging metrics, and accuracy and macro-F1 for single-label clips."""
    scores = tagging_metrics(targets, probs)
    if single:
        classified = classification_scores(targets, probs)
        scores |= {"accuracy": classified["accuracy"], "macro_f1": classified["macro_f1"]}
    return scores


def write_outputs(
    out: Path, eval_set: EvalSet, probs: np.ndarray, names: ClassLabels | None, single: bool
) -> None:
    """OUT/predictions.csv (per clip: labels, top class and its probability) and, for
    single-label clips, OUT/confusion.png."""
    classes = names.names if names else [str(i) for i in range(probs.shape[1])]
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "predictions.csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "labels", "predicted", "probability"])
        for file, target, p in zip(eval_set.filenames, eval_set.targets, probs, strict=True):
            labels = ";".join(classes[i] for i in np.flatnonzero(target))
            writer.writerow([file, labels, classes[p.argmax()], f"{p.max():.4f}"])
    if single:
        matrix = np.asarray(classification_scores(eval_set.targets, probs)["confusion"])
        present = seen_classes(matrix)
        plot_confusion(
            [classes[i] for i in present], matrix[np.ix_(present, present)], out / "confusion.png"
        )


def format_table(result: dict) -> str:
    """A Markdown table of the members and, for several, the ensemble."""
    rows = [(m["name"], m) for m in result["members"]]
    if "ensemble" in result:
        rows.append((f"ensemble of {len(result['members'])}", result["ensemble"]))
    single = "classification" in result
    table = markdown_table(
        ["model", "mAP", "mAUC", "d'", *(["accuracy", "macro-F1"] if single else [])],
        [
            (name, f"{m['mAP']:.4f}", f"{m['mAUC']:.4f}", f"{m['d_prime']:.3f}",
             *([f"{m['accuracy']:.4f}", f"{m['macro_f1']:.4f}"] if single else []))
            for name, m in rows
        ],
    )  # fmt: skip
    if not single:
        return table
    classes = result["classification"]["classes"]
    matrix = np.asarray(result["classification"]["confusion"])
    shown = seen_classes(matrix)
    confusion = markdown_table(
        ["true \\ predicted", *(classes[i] for i in shown)],
        [(classes[i], *matrix[i, shown].tolist()) for i in shown],
    )
    return f"{table}\n\nConfusion (rows: true class, columns: predicted):\n\n{confusion}"


def unlabelled_set(sources: Sequence[str | os.PathLike]) -> EvalSet:
    """Clips without labels: a prepared TSV (``filename``, optional ``hdf5path``), or audio
    files and folders."""
    if len(sources) == 1 and Path(sources[0]).suffix.lower() == ".tsv":
        table = read_table(sources[0])
        hdf5 = table["hdf5path"].tolist() if "hdf5path" in table else [None] * len(table)
        names = table["filename"].tolist()
    else:
        names = audio_files(sources)
        hdf5 = [None] * len(names)
    if not names:
        raise ValueError(f"no audio in {', '.join(map(str, sources))}")
    return EvalSet(names, hdf5, np.zeros((len(names), 0), dtype=np.float32))


def agreement(
    student: str | os.PathLike,
    teachers: Sequence[str | os.PathLike],
    sources: Sequence[str | os.PathLike],
    batch_size: int = 32,
    device: str = "cpu",
) -> dict:
    """``agreement_metrics`` of ``student`` against the mean of ``teachers`` on unlabelled clips.

    Refused, naming both, where the student and the teachers have other class sets.
    """
    model = load_model_file(student).to(device)
    ensemble = [load_model_file(path).to(device) for path in teachers]
    mine = model.config.num_classes, model.config.labels
    for path, teacher in zip(teachers, ensemble, strict=True):
        theirs = teacher.config.num_classes, teacher.config.labels
        if mine[0] != theirs[0] or (mine[1] and theirs[1] and mine[1] != theirs[1]):
            raise ValueError(
                f"the student {student} ({_class_set(model)}) and the teacher {path} "
                f"({_class_set(teacher)}) have other class sets: agreement needs the same classes"
            )
    clips = unlabelled_set(sources)
    scores = agreement_metrics(
        predict([model], clips, batch_size), predict(ensemble, clips, batch_size)
    )
    return {"student": model_name(student), "teachers": [model_name(t) for t in teachers],
            "clips": len(clips), **scores}  # fmt: skip


def _class_set(model: CED) -> str:
    names = model.config.labels
    shown = f": {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}" if names else ""
    return f"{model.config.num_classes} classes{shown}"
