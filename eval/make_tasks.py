"""Small synthetic tasks in the exact on-disk layout hear-eval-kit reads.

Real HEAR archives are tens of gigabytes; these tasks exercise every code path
of the evaluation (scene multiclass, scene multilabel k-fold, event detection
with onset scoring) in seconds, so the whole pipeline can run in CI.

Layout written per task (the same as the HEAR 2021 archives)::

    <out>/<task>/task_metadata.json
    <out>/<task>/labelvocabulary.csv          idx,label
    <out>/<task>/<split>.json                 {file: [label, ...]} or {file: [{label,start,end}]}
    <out>/<task>/<rate>/<split>/<file>.wav    one folder per sample rate

Event times are in milliseconds. Clips are rendered at 16 kHz with
``hear_ced.distill.synth`` and resampled for every other requested rate, so models with
another input rate (hearbaseline's naive model reads 44.1 kHz) see the same sounds.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from hear_ced.common.files import atomic_path, write_text

RENDER_RATE = 16000
DEFAULT_SAMPLE_RATES = (16000, 44100)
N_CLASSES = 4


@dataclass(frozen=True)
class SyntheticTask:
    """What one synthetic task looks like: its metadata and how many clips per split."""

    name: str
    embedding_type: str  # scene | event
    prediction_type: str  # multiclass | multilabel
    split_mode: str  # trainvaltest | new_split_kfold
    splits: tuple[str, ...]
    clips_per_split: int
    clip_seconds: float
    evaluation: tuple[str, ...]

    def metadata(self, sample_rates: Sequence[int]) -> dict:
        meta = {
            "task_name": self.name,
            "version": "synthetic-1",
            "embedding_type": self.embedding_type,
            "prediction_type": self.prediction_type,
            "split_mode": self.split_mode,
            "sample_duration": self.clip_seconds,
            "evaluation": list(self.evaluation),
            "splits": list(self.splits),
            "sample_rates": list(sample_rates),
        }
        if self.embedding_type == "event":
            # heareval's default post-processing grid is tuned for DCASE 2016 events
            # of several seconds; these events last 0.4-0.8 s.
            meta["evaluation_params"] = {
                "event_postprocessing_grid": {"median_filter_ms": [100], "min_duration": [50, 150]}
            }
        return meta


SYNTHETIC_TASKS: tuple[SyntheticTask, ...] = (
    SyntheticTask(
        name="synth_scene_multiclass",
        embedding_type="scene",
        prediction_type="multiclass",
        split_mode="trainvaltest",
        splits=("train", "valid", "test"),
        clips_per_split=12,
        clip_seconds=1.0,
        evaluation=("top1_acc",),
    ),
    SyntheticTask(
        name="synth_scene_multilabel",
        embedding_type="scene",
        prediction_type="multilabel",
        split_mode="new_split_kfold",
        splits=("fold00", "fold01", "fold02"),
        clips_per_split=10,
        clip_seconds=1.0,
        evaluation=("mAP", "aucroc"),
    ),
    SyntheticTask(
        name="synth_event",
        embedding_type="event",
        prediction_type="multilabel",
        split_mode="trainvaltest",
        splits=("train", "valid", "test"),
        clips_per_split=6,
        clip_seconds=3.0,
        evaluation=("event_onset_200ms_fms", "segment_1s_er"),
    ),
)
TASKS_BY_NAME = {task.name: task for task in SYNTHETIC_TASKS}

# A clip: (audio at RENDER_RATE, labels as written into <split>.json)
Clip = tuple[np.ndarray, list]


def _fit(audio: np.ndarray, n_samples: int) -> np.ndarray:
    """Crop or zero-pad to exactly ``n_samples``."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)[:n_samples]
    return np.pad(audio, (0, n_samples - audio.shape[0]))


def _normalise(audio: np.ndarray) -> np.ndarray:
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    return audio * (0.8 / peak) if peak > 0 else audio


def _scene_clip(task: SyntheticTask, index: int, rng: np.random.Generator) -> Clip:
    from hear_ced.distill.synth import SYNTH_CLASSES, render_event  # on use: a distill module

    n_samples = int(round(task.clip_seconds * RENDER_RATE))
    if task.prediction_type == "multiclass":
        classes = [index % N_CLASSES]
    else:
        # one or two classes, every class present in every fold
        first = index % N_CLASSES
        classes = (
            [first] if index % 3 == 0 else [first, (first + 1 + index // N_CLASSES) % N_CLASSES]
        )
        classes = sorted(set(classes))
    audio = sum(
        _fit(render_event(c, task.clip_seconds, rng, RENDER_RATE), n_samples) for c in classes
    )
    return _normalise(audio), [str(SYNTH_CLASSES[c]) for c in classes]


def _event_clip(task: SyntheticTask, index: int, rng: np.random.Generator) -> Clip:
    from hear_ced.distill.synth import SYNTH_CLASSES, render_event

    n_samples = int(round(task.clip_seconds * RENDER_RATE))
    audio = np.zeros(n_samples, dtype=np.float32)
    events = []
    # two events in disjoint halves of the clip, so onsets are unambiguous
    half = task.clip_seconds / 2
    for slot in range(2):
        cls = (index + slot * 2) % N_CLASSES
        duration = float(rng.uniform(0.4, 0.8))
        start = slot * half + float(rng.uniform(0.1, half - duration - 0.05))
        first = int(round(start * RENDER_RATE))
        sound = render_event(cls, duration, rng, RENDER_RATE)[: n_samples - first]
        audio[first : first + sound.shape[0]] += sound
        end = start + sound.shape[0] / RENDER_RATE
        events.append(
            {
                "label": str(SYNTH_CLASSES[cls]),
                "start": round(start * 1000, 3),
                "end": round(end * 1000, 3),
            }
        )
    audio += 0.003 * rng.standard_normal(n_samples).astype(np.float32)
    return _normalise(audio), events


def _write_task(task: SyntheticTask, folder: Path, sample_rates: Sequence[int], seed: int) -> None:
    """Every file of the task, each written atomically; ``task_metadata.json`` last."""
    from hear_ced.distill.synth import SYNTH_CLASSES

    make_clip = _event_clip if task.embedding_type == "event" else _scene_clip
    rng = np.random.default_rng(seed)
    vocabulary = io.StringIO(newline="")
    writer = csv.writer(vocabulary)
    writer.writerow(["idx", "label"])
    writer.writerows(enumerate(str(name) for name in SYNTH_CLASSES[:N_CLASSES]))
    write_text(folder / "labelvocabulary.csv", vocabulary.getvalue())
    clip_number = 0
    for split in task.splits:
        labels = {}
        for index in range(task.clips_per_split):
            audio, clip_labels = make_clip(task, index, rng)
            filename = f"{clip_number:04d}.wav"
            clip_number += 1
            labels[filename] = clip_labels
            for rate in sample_rates:
                resampled = (
                    audio if rate == RENDER_RATE else soxr.resample(audio, RENDER_RATE, rate)
                )
                with atomic_path(folder / str(rate) / split / filename) as tmp:
                    sf.write(tmp, np.clip(resampled, -1, 1), rate, subtype="PCM_16")
        write_text(folder / f"{split}.json", json.dumps(labels, indent=2))
    write_text(folder / "task_metadata.json", json.dumps(task.metadata(sample_rates), indent=2))


# Two events of up to 0.8 s, each in its own half of an event clip, with margins.
MIN_EVENT_CLIP_SECONDS = 2.0


def sized(task: SyntheticTask, clips_per_split: int | None, seconds: float | None) -> SyntheticTask:
    """``task`` with another number of clips per split and clip length (None: its own)."""
    if clips_per_split is not None and clips_per_split < 1:
        raise ValueError(f"--clips-per-split must be at least 1, got {clips_per_split}")
    if seconds is not None and seconds <= 0:
        raise ValueError(f"--seconds must be positive, got {seconds:g}")
    if seconds is not None and task.embedding_type == "event" and seconds < MIN_EVENT_CLIP_SECONDS:
        raise ValueError(
            f"--seconds {seconds:g}: the event task {task.name} needs clips of at least "
            f"{MIN_EVENT_CLIP_SECONDS:g} s (two events in separate halves)"
        )
    return dataclasses.replace(
        task,
        clips_per_split=clips_per_split or task.clips_per_split,
        clip_seconds=seconds or task.clip_seconds,
    )


def make_tasks(
    out_dir: str | os.PathLike,
    tasks: Sequence[str] | None = None,
    sample_rates: Sequence[int] = DEFAULT_SAMPLE_RATES,
    seed: int = 0,
    clips_per_split: int | None = None,
    seconds: float | None = None,
) -> list[Path]:
    """Write the synthetic tasks under ``out_dir``; returns their folders.

    ``clips_per_split`` and ``seconds`` replace every task's own sizes. A task
    folder holding ``task_metadata.json`` is kept as it is (refused where it
    was written with other sizes): every file is written atomically and the
    metadata, which makes a folder a HEAR task, last, so only a complete task
    has it. A folder without it (an interrupted run) is written again, file by
    file, with the same content.
    """
    wanted = list(tasks) if tasks else list(TASKS_BY_NAME)
    unknown = [name for name in wanted if name not in TASKS_BY_NAME]
    if unknown:
        raise ValueError(f"unknown synthetic task(s) {unknown}; known: {sorted(TASKS_BY_NAME)}")
    if not sample_rates:
        raise ValueError("need at least one sample rate")
    chosen = [sized(TASKS_BY_NAME[name], clips_per_split, seconds) for name in wanted]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    folders = []
    for offset, task in enumerate(chosen):
        folder = out / task.name
        metadata = folder / "task_metadata.json"
        if not metadata.is_file():
            _write_task(task, folder, sample_rates, seed + offset)
        else:
            _check_kept(task, folder)
        folders.append(folder)
    return folders


def _check_kept(task: SyntheticTask, folder: Path) -> None:
    """Refuse a task folder written with other sizes than those asked for now."""
    stored = json.loads((folder / "task_metadata.json").read_text())["sample_duration"]
    clips = len(json.loads((folder / f"{task.splits[0]}.json").read_text()))
    if (clips, stored) != (task.clips_per_split, task.clip_seconds):
        raise ValueError(
            f"{folder} holds {clips} clips of {stored:g} s per split, not the "
            f"{task.clips_per_split} of {task.clip_seconds:g} s asked for: use another folder"
        )
