"""Measured throughput of a run, and an estimate of the whole benchmark from it.

Throughput comes from what the runner records per task: the files embedded
(``clips``), their total duration (``audio_seconds``) and the wall-clock
seconds of each step (``seconds``: embeddings, mlp, linear). Each step's cost
is expressed in seconds per unit:

- embeddings: per second of audio;
- MLP and linear probe: per clip on scene tasks, per second of audio on event
  tasks (their downstream models see one row per timestamp, so their cost
  follows the audio's length, not the number of files).

The whole-benchmark estimate multiplies the units of each of the 20 HEAR task
folders by a cost per unit: the task's own when the run measured it, else the
run's pooled mean (total seconds over total units of the measured tasks of the
same unit). Wall-clock costs include each step's fixed start-up (process
start, imports, model loading), so costs measured on small tasks overstate the
cost of large ones; the estimate is only as good as the tasks it was measured
on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from eval.tasks import HEAR_TASKS, TASK_BY_DIRECTORY, FolderSize

logger = logging.getLogger(__name__)

STEPS = ("embeddings", "mlp", "linear")


def measure_folder(task_dir: Path, sample_rate: int | None = None) -> FolderSize | None:
    """Count the wav files of a task folder (all splits) and sum their durations.

    Uses the ``<sample_rate>/`` folder when there is one, else the first
    sample-rate folder (durations do not depend on the rate). None when the
    folder holds no audio or a file cannot be read (logged).
    """
    rate_dirs = sorted(
        (p for p in task_dir.glob("*") if p.is_dir() and p.name.isdigit()),
        key=lambda p: (p.name != str(sample_rate), int(p.name)),
    )
    if not rate_dirs:
        return None
    clips, seconds = 0, 0.0
    for path in sorted(rate_dirs[0].glob("*/*.wav")):
        if path.name.startswith(".") or path.parent.name.startswith("."):
            continue  # a writer's temporary or scratch file
        try:
            info = sf.info(str(path))
        except (sf.LibsndfileError, RuntimeError) as exc:
            logger.warning(
                "size of %s unknown: unreadable audio file %s (%s)", task_dir.name, path, exc
            )
            return None
        clips += 1
        seconds += info.frames / info.samplerate
    if clips == 0:
        return None
    return FolderSize(clips, seconds, f"counted in {task_dir}/{rate_dirs[0].name}")


def unit_kind(step: str, embedding_type: str | None) -> str:
    """The unit a step's cost is counted in: "audio" (seconds of audio) or "clip"."""
    return "audio" if step == "embeddings" or embedding_type == "event" else "clip"


def units(size: FolderSize | None, kind: str) -> float | None:
    if size is None:
        return None
    return size.audio_seconds if kind == "audio" else float(size.clips)


@dataclass(frozen=True)
class TaskTiming:
    """What a run measured on one task folder."""

    task: str
    embedding_type: str | None
    size: FolderSize | None
    seconds: dict[str, float]  # step -> wall-clock seconds, steps that succeeded only

    def seconds_per_unit(self, step: str) -> float | None:
        count = units(self.size, unit_kind(step, self.embedding_type))
        if step not in self.seconds or not count:
            return None
        return self.seconds[step] / count

    @property
    def clips_per_second(self) -> float | None:
        seconds = self.seconds.get("embeddings")
        return self.size.clips / seconds if self.size and seconds else None

    @property
    def audio_per_second(self) -> float | None:
        cost = self.seconds_per_unit("embeddings")
        return 1.0 / cost if cost else None


def task_timing(task: str, result: dict, size: FolderSize | None) -> TaskTiming:
    """The timing of one result record; a step counts only when it produced a score."""
    recorded = result.get("seconds") or {}
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
    return TaskTiming(task, embedding_type, size, seconds)


def pooled_costs(timings: list[TaskTiming]) -> dict[tuple[str, str], tuple[float, int]]:
    """(step, unit kind) -> (seconds per unit over all measured tasks, how many tasks)."""
    totals: dict[tuple[str, str], list[float]] = {}
    for timing in timings:
        for step, seconds in timing.seconds.items():
            kind = unit_kind(step, timing.embedding_type)
            count = units(timing.size, kind)
            if count:
                entry = totals.setdefault((step, kind), [0.0, 0.0, 0])
                entry[0] += seconds
                entry[1] += count
                entry[2] += 1
    return {key: (seconds / count, int(tasks)) for key, (seconds, count, tasks) in totals.items()}


@dataclass(frozen=True)
class EstimateRow:
    """Estimated wall-clock seconds of one HEAR task folder."""

    task: str
    column: str
    size: FolderSize | None
    seconds: dict[str, float | None]  # step -> estimate (None: not estimable)
    cost_source: dict[str, str]  # step -> "measured" | "run mean" | "none"

    @property
    def total(self) -> float | None:
        values = list(self.seconds.values())
        return None if any(v is None for v in values) else sum(values)  # type: ignore[arg-type]


def estimate_benchmark(
    timings: list[TaskTiming], sizes: dict[str, FolderSize]
) -> list[EstimateRow]:
    """Estimated seconds of every HEAR folder for each step the run measured somewhere.

    ``sizes`` holds the best known size of each HEAR folder (measured in the
    run, counted in a task folder, or the registry's); a step is estimable
    when the folder's size in its unit and a cost (own or run mean) are known.
    See the module docstring for the cost model.
    """
    measured = {timing.task: timing for timing in timings}
    pooled = pooled_costs(timings)
    steps = tuple(step for step in STEPS if any(key[0] == step for key in pooled))
    rows = []
    for hear_task in HEAR_TASKS:
        for directory in hear_task.directories:
            size = sizes.get(directory)
            own = measured.get(directory)
            seconds: dict[str, float | None] = {}
            source: dict[str, str] = {}
            for step in steps:
                kind = unit_kind(step, hear_task.embedding_type)
                cost = own.seconds_per_unit(step) if own else None
                source[step] = "measured"
                if cost is None:
                    cost = pooled.get((step, kind), (None, 0))[0]
                    source[step] = "run mean" if cost is not None else "none"
                count = units(size, kind)
                seconds[step] = None if cost is None or count is None else cost * count
            rows.append(EstimateRow(directory, hear_task.column, size, seconds, source))
    return rows
