"""Measured throughput of a run, and an estimate of the whole benchmark from it.

Throughput comes from what the runner records per task: the files embedded
(``clips``), their total duration (``audio_seconds``) and the wall-clock
seconds of each step (``seconds``: embeddings, mlp, linear).

A task the run did not measure is costed at the run's mean rate for that step
and embedding type (scene and event embeddings cost differently): total
seconds over total units of the measured tasks. The unit is a second of audio
for the embeddings and for the downstream models of event tasks (they see one
row per timestamp), a clip for those of scene tasks. Start-up (process start,
imports, model loading) is part of the rate, so rates measured on small tasks
overstate the cost of large ones. A task that reused another task's embeddings
(``reused_clips``, Beehive's second fold) did not embed its whole size, so its
embedding time stays out of the rate.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from hear_ced.eval.hear_run.task_checks import audio_totals
from hear_ced.eval.tasks import HEAR_TASKS, TASK_BY_DIRECTORY, FolderSize

log = logging.getLogger(__name__)

STEPS = ("embeddings", "mlp", "linear")
UNIT_NAMES = {"clip": "clip", "audio": "s of audio"}


def measure_folder(task_dir: Path, sample_rate: int | None = None) -> FolderSize | None:
    """Clips and audio of a prepared task folder, counted as a run records them.

    Counted at ``sample_rate`` when the folder has it, else at its first rate
    (durations do not depend on the rate). None when the folder holds no audio
    or cannot be read (logged).
    """
    rates = sorted(
        (p.name for p in task_dir.glob("*") if p.is_dir() and p.name.isdigit()),
        key=lambda name: (name != str(sample_rate), int(name)),
    )
    if not rates:
        return None
    try:
        splits = json.loads((task_dir / "task_metadata.json").read_text())["splits"]
        clips, seconds = audio_totals(task_dir, int(rates[0]), splits)
    except (OSError, ValueError, KeyError, TypeError, sf.LibsndfileError) as exc:
        log.warning("size of %s unknown: %s", task_dir.name, exc)
        return None
    return FolderSize(clips, seconds, "counted in the task folder") if clips else None


def cost_unit(step: str, embedding_type: str | None) -> str:
    """What a step's time is proportional to (see the module docstring)."""
    return "audio" if step == "embeddings" or embedding_type == "event" else "clip"


def units(size: FolderSize | None, unit: str) -> float | None:
    """The size in ``unit``; None when that figure is unknown."""
    if size is None:
        return None
    return float(size.clips) if unit == "clip" else size.audio_seconds


@dataclass(frozen=True)
class TaskTiming:
    """What a run measured on one task folder."""

    task: str
    embedding_type: str | None
    size: FolderSize | None
    seconds: dict[str, float]  # step -> wall-clock seconds, steps that succeeded only
    reused_clips: int = 0  # files whose embeddings came from a twin task (Beehive's folds)

    @property
    def clips_per_second(self) -> float | None:
        seconds = self.seconds.get("embeddings")
        return self.size.clips / seconds if self.size and seconds else None

    @property
    def audio_per_second(self) -> float | None:
        seconds = self.seconds.get("embeddings")
        audio = self.size.audio_seconds if self.size else None
        return audio / seconds if audio and seconds else None


def task_timing(task: str, result: dict) -> TaskTiming:
    """The timing of one result record; a step counts only when it produced a score."""
    recorded = result.get("seconds") or {}
    clips, audio = result.get("clips"), result.get("audio_seconds")
    size = FolderSize(clips, audio, "recorded by the run") if clips and audio else None
    done = {
        "embeddings": "embeddings" not in (result.get("errors") or {})
        and any(result.get(part, {}).get("score") is not None for part in ("mlp", "linear")),
        "mlp": result.get("mlp", {}).get("score") is not None,
        "linear": result.get("linear", {}).get("score") is not None,
    }
    seconds = {
        step: float(recorded[step])
        for step in STEPS
        if done[step] and isinstance(recorded.get(step), (int, float)) and recorded[step] > 0
    }
    hear_task = TASK_BY_DIRECTORY.get(task)
    embedding_type = hear_task.embedding_type if hear_task else result.get("embedding_type")
    reused = result.get("reused_clips")
    return TaskTiming(task, embedding_type, size, seconds, reused if isinstance(reused, int) else 0)


@dataclass(frozen=True)
class Rate:
    """Seconds of one step per unit of size, on tasks of one embedding type."""

    step: str
    embedding_type: str
    unit: str
    per_unit: float
    tasks: int  # measured tasks it averages

    def seconds(self, size: FolderSize | None) -> float | None:
        count = units(size, self.unit)
        return None if count is None else count * self.per_unit

    def describe(self) -> str:
        return (
            f"{self.step}, {self.embedding_type} tasks: {self.per_unit:.4g} s per "
            f"{UNIT_NAMES[self.unit]} (mean over {self.tasks} task(s))"
        )


def fit_rates(timings: list[TaskTiming]) -> dict[tuple[str, str], Rate]:
    """(step, embedding type) -> its mean rate, for every pair the run measured."""
    rates = {}
    for step in STEPS:
        for embedding_type in ("scene", "event"):
            unit = cost_unit(step, embedding_type)
            points = [(units(t.size, unit), t.seconds[step]) for t in timings
                      if t.embedding_type == embedding_type and step in t.seconds
                      and not (step == "embeddings" and t.reused_clips)]  # fmt: skip
            points = [(count, seconds) for count, seconds in points if count]
            if points:
                per_unit = sum(s for _, s in points) / sum(c for c, _ in points)  # type: ignore[misc]
                rates[(step, embedding_type)] = Rate(step, embedding_type, unit, per_unit,
                                                     len(points))  # fmt: skip
    return rates


@dataclass(frozen=True)
class EstimateRow:
    """Estimated wall-clock seconds of one HEAR task folder."""

    task: str
    size: FolderSize | None
    seconds: dict[str, float | None]  # step -> estimate (None: not estimable)
    cost_source: dict[str, str]  # step -> "measured" | "run rate" | "none"

    @property
    def total(self) -> float | None:
        values = list(self.seconds.values())
        return None if any(v is None for v in values) else sum(values)  # type: ignore[arg-type]


def estimate_benchmark(
    timings: list[TaskTiming],
    tasks_dir: str | os.PathLike | None = None,
    sample_rate: int | None = None,
) -> list[EstimateRow]:
    """Estimated seconds of every HEAR folder for each step the run measured somewhere.

    A folder's size is the run's where it measured the folder, else counted in
    ``tasks_dir``, else the registry's (:attr:`hear_ced.eval.tasks.HearTask.size`); a
    step is estimable when the task was measured, or a rate of its type exists
    and the size it needs is known.
    """
    measured = {timing.task: timing for timing in timings}
    rates = fit_rates(timings)
    steps = tuple(step for step in STEPS if any(key[0] == step for key in rates))
    rows = []
    for hear_task in HEAR_TASKS:
        for directory in hear_task.directories:
            own = measured.get(directory)
            size = own.size if own else None
            if size is None and tasks_dir and (Path(tasks_dir) / directory).is_dir():
                size = measure_folder(Path(tasks_dir) / directory, sample_rate)
            size = size or hear_task.size
            seconds: dict[str, float | None] = {}
            source: dict[str, str] = {}
            for step in steps:
                if own and step in own.seconds:
                    seconds[step], source[step] = own.seconds[step], "measured"
                    continue
                rate = rates.get((step, hear_task.embedding_type))
                seconds[step] = rate.seconds(size) if rate else None
                source[step] = "run rate" if rate else "none"
            rows.append(EstimateRow(directory, size, seconds, source))
    return rows
