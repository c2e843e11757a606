"""Which task folders a run takes, and that each is sound before heareval sees it.

heareval reports a bad task with a bare ``assert`` deep in a run; these checks
name the problem and the file instead.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import soundfile as sf

from hear_ced.eval.hear_run.settings import RunError, TaskError

KNOWN_METRICS = frozenset(
    {
        "top1_acc", "pitch_acc", "chroma_acc", "mAP", "d_prime", "aucroc", "segment_1s_er",
        "event_onset_200ms_fms", "event_onset_50ms_fms", "event_onset_offset_50ms_20perc_fms",
    }
)  # fmt: skip
SPLIT_MODES = ("trainvaltest", "new_split_kfold", "presplit_kfold")


def select_task_dirs(tasks_dir: Path, selected: tuple[str, ...]) -> list[Path]:
    """The task folders of ``tasks_dir`` (hidden ones aside), only ``selected`` if given."""
    if not tasks_dir.is_dir():
        raise RunError(f"tasks folder {tasks_dir} does not exist")
    present = sorted(p for p in tasks_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if selected:
        unknown = sorted(set(selected) - {p.name for p in present})
        if unknown:
            raise RunError(f"tasks {unknown} not found in {tasks_dir}")
        present = [p for p in present if p.name in selected]
    if not present:
        raise RunError(f"no task folders in {tasks_dir}")
    return present


def read_json(path: Path, what: str):
    if not path.is_file():
        raise TaskError(f"missing {what} ({path.name})")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TaskError(f"{path.name} is not valid JSON: {exc}") from exc


def _read_vocabulary(task_dir: Path) -> set[str]:
    path = task_dir / "labelvocabulary.csv"
    if not path.is_file():
        raise TaskError("missing labelvocabulary.csv")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"idx", "label"} <= set(rows[0]):
        raise TaskError("labelvocabulary.csv needs an 'idx,label' header and at least one row")
    indices = sorted(int(row["idx"]) for row in rows)
    if indices != list(range(len(rows))):
        raise TaskError("labelvocabulary.csv indices must be 0..n-1")
    return {str(row["label"]) for row in rows}


def check_task(task_dir: Path, sample_rate: int) -> dict:
    """Validate a task folder; returns its metadata.

    Names missing or malformed metadata, labels outside the vocabulary, no
    audio at the module's sample rate, missing or unreadable wav files.
    """
    metadata = read_json(task_dir / "task_metadata.json", "task metadata")
    if not isinstance(metadata, dict):
        raise TaskError("task_metadata.json must hold a JSON object")
    required = ("task_name", "embedding_type", "prediction_type", "split_mode", "splits")
    absent = [key for key in (*required, "evaluation", "sample_duration") if key not in metadata]
    if absent:
        raise TaskError(f"task_metadata.json lacks {absent}")
    allowed = {
        "embedding_type": ("scene", "event"),
        "prediction_type": ("multiclass", "multilabel"),
        "split_mode": SPLIT_MODES,
    }
    for key, values in allowed.items():
        if metadata[key] not in values:
            raise TaskError(f"task_metadata.json {key}={metadata[key]!r}, expected one of {values}")
    unknown = [m for m in metadata["evaluation"] if m not in KNOWN_METRICS]
    if not metadata["evaluation"] or unknown:
        raise TaskError(
            f"task_metadata.json evaluation {metadata['evaluation']!r} has no/unknown metrics"
        )
    vocabulary = _read_vocabulary(task_dir)
    rate_dir = task_dir / str(sample_rate)
    if not rate_dir.is_dir():
        have = sorted(p.name for p in task_dir.iterdir() if p.is_dir() and p.name.isdigit())
        raise TaskError(
            f"no audio at the module's {sample_rate} Hz: folder {rate_dir.name}/ missing "
            f"(task has {', '.join(have) or 'no sample-rate folders'}); "
            f"make it with `ced-eval prepare-tasks TASK --out DIR --rate {sample_rate}`"
        )
    for split in metadata["splits"]:
        labels = read_json(task_dir / f"{split}.json", f"labels of split {split}")
        if not isinstance(labels, dict) or not labels:
            raise TaskError(f"{split}.json must map file names to labels and not be empty")
        for name, file_labels in labels.items():
            names = [e["label"] if isinstance(e, dict) else e for e in file_labels]
            outside = [str(label) for label in names if str(label) not in vocabulary]
            if outside:
                raise TaskError(
                    f"{split}.json: {name} has labels {outside} not in labelvocabulary.csv"
                )
            _check_wav(rate_dir / split / name, sample_rate)
    return metadata


def _check_wav(path: Path, sample_rate: int) -> None:
    if not path.is_file():
        raise TaskError(
            f"missing audio file {path.parent.parent.name}/{path.parent.name}/{path.name}"
        )
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise TaskError(f"unreadable audio file {path}: {exc}") from exc
    if info.samplerate != sample_rate:
        raise TaskError(f"{path} is {info.samplerate} Hz but sits in the {sample_rate} Hz folder")


def audio_totals(task_dir: Path, sample_rate: int, splits: list[str]) -> tuple[int, float]:
    """Number of audio files of a checked task and their total duration in seconds."""
    clips, seconds = 0, 0.0
    for split in splits:
        for name in json.loads((task_dir / f"{split}.json").read_text()):
            info = sf.info(str(task_dir / str(sample_rate) / split / name))
            clips += 1
            seconds += info.frames / info.samplerate
    return clips, round(seconds, 3)
