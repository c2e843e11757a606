"""Measured throughput of a run, and an estimate of the whole benchmark from it.

Throughput comes from what the runner records per task: the files embedded
(``clips``), their total duration (``audio_seconds``) and the wall-clock
seconds of each step (``seconds``: embeddings, mlp, linear).

The estimate needs the cost of a step on a task the run did not measure. A
step's wall-clock time is modelled, per step and embedding type (scene and
event embeddings cost differently), as a sum of non-negative terms:

- embeddings: ``start-up + per clip x clips + per second x audio seconds``;
- MLP and linear probe: ``start-up + per clip x clips`` on scene tasks and
  ``start-up + per second x audio seconds`` on event tasks (their downstream
  models see one row per timestamp, so their cost follows the audio's length).

The coefficients are fitted to the measured tasks by non-negative least
squares, keeping at least one more task than coefficients: with fewer tasks
the per-clip term, then the start-up term, is left out, as they are when the
fit gives no positive cost per unit; with a single term the cost is the run's
mean rate (total seconds over total units). A task the
run measured keeps its measured time. Start-up (process start, imports, model
loading) is only separated from the per-unit cost when the measured tasks
differ enough in size; otherwise it inflates the per-unit cost, so rates
measured on small tasks overstate the cost of large ones. A task that reused
another task's embeddings for some of its files (``reused_clips``, Beehive's
second fold) did not embed its whole size, so its embedding time is left out
of the fit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.optimize import nnls

from eval.tasks import HEAR_TASKS, TASK_BY_DIRECTORY, FolderSize

log = logging.getLogger(__name__)

STEPS = ("embeddings", "mlp", "linear")
TERM_NAMES = {"start-up": "s start-up", "clip": "s per clip", "audio": "s per s of audio"}


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
            log.warning(
                "size of %s unknown: unreadable audio file %s (%s)", task_dir.name, path, exc
            )
            return None
        clips += 1
        seconds += info.frames / info.samplerate
    if clips == 0:
        return None
    return FolderSize(clips, seconds, "counted in the task folder")


def term_sets(step: str, embedding_type: str | None) -> tuple[tuple[str, ...], ...]:
    """The model's terms for a step, richest first (see the module docstring)."""
    if step == "embeddings":
        return (("start-up", "clip", "audio"), ("start-up", "audio"), ("audio",))
    unit = "audio" if embedding_type == "event" else "clip"
    return (("start-up", unit), (unit,))


def term_values(size: FolderSize | None, terms: tuple[str, ...]) -> list[float] | None:
    """The size in the model's terms; None when a needed figure is unknown."""
    if size is None:
        return None
    values = {"start-up": 1.0, "clip": float(size.clips), "audio": size.audio_seconds}
    row = [values[term] for term in terms]
    return None if any(v is None for v in row) else row  # type: ignore[return-value]


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
    reused = result.get("reused_clips")
    return TaskTiming(task, embedding_type, size, seconds, reused if isinstance(reused, int) else 0)


@dataclass(frozen=True)
class CostModel:
    """Seconds of one step on tasks of one embedding type, as a function of their size."""

    step: str
    embedding_type: str
    terms: tuple[str, ...]
    coefficients: tuple[float, ...]
    tasks: int  # measured tasks it was fitted to

    def seconds(self, size: FolderSize | None) -> float | None:
        row = term_values(size, self.terms)
        return None if row is None else float(np.dot(row, self.coefficients))

    def describe(self) -> str:
        terms = " + ".join(
            f"{value:.4g} {TERM_NAMES[term]}"
            for term, value in zip(self.terms, self.coefficients, strict=True)
        )
        how = "mean rate" if len(self.terms) == 1 else "non-negative least squares"
        return (
            f"{self.step}, {self.embedding_type} tasks: {terms} ({how} over {self.tasks} task(s))"
        )


def fit_cost(step: str, embedding_type: str, timings: list[TaskTiming]) -> CostModel | None:
    """The richest model the measured tasks support (None: no task measured this step)."""
    for terms in term_sets(step, embedding_type):
        points = [(term_values(t.size, terms), t.seconds[step]) for t in timings
                  if t.embedding_type == embedding_type and step in t.seconds
                  and not (step == "embeddings" and t.reused_clips)]  # fmt: skip
        points = [(row, seconds) for row, seconds in points if row is not None]
        if not points:
            continue
        design = np.array([row for row, _ in points], dtype=np.float64)
        target = np.array([seconds for _, seconds in points], dtype=np.float64)
        if len(terms) == 1:
            if design.sum() > 0:
                return CostModel(
                    step, embedding_type, terms, (target.sum() / design.sum(),), len(points)
                )
            return None
        if len(points) > len(terms) and np.linalg.matrix_rank(design) == len(terms):
            coefficients, _ = nnls(design, target)
            if not any(c > 0 for term, c in zip(terms, coefficients, strict=True)
                       if term != "start-up"):  # fmt: skip
                continue  # all start-up and no cost per unit: not a credible model of size
            return CostModel(step, embedding_type, terms, tuple(float(c) for c in coefficients),
                             len(points))  # fmt: skip
    return None


def fit_costs(timings: list[TaskTiming]) -> dict[tuple[str, str], CostModel]:
    """(step, embedding type) -> its cost model, for every pair the run measured."""
    models = {}
    for step in STEPS:
        for embedding_type in ("scene", "event"):
            model = fit_cost(step, embedding_type, timings)
            if model:
                models[(step, embedding_type)] = model
    return models


@dataclass(frozen=True)
class EstimateRow:
    """Estimated wall-clock seconds of one HEAR task folder."""

    task: str
    column: str
    size: FolderSize | None
    seconds: dict[str, float | None]  # step -> estimate (None: not estimable)
    cost_source: dict[str, str]  # step -> "measured" | "run model" | "none"

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
    when the task was measured, or a cost model of its type exists and the
    sizes it needs are known.
    """
    measured = {timing.task: timing for timing in timings}
    models = fit_costs(timings)
    steps = tuple(step for step in STEPS if any(key[0] == step for key in models))
    rows = []
    for hear_task in HEAR_TASKS:
        for directory in hear_task.directories:
            own = measured.get(directory)
            seconds: dict[str, float | None] = {}
            source: dict[str, str] = {}
            for step in steps:
                if own and step in own.seconds:
                    seconds[step], source[step] = own.seconds[step], "measured"
                    continue
                model = models.get((step, hear_task.embedding_type))
                seconds[step] = model.seconds(sizes.get(directory)) if model else None
                source[step] = "run model" if model else "none"
            rows.append(
                EstimateRow(directory, hear_task.column, sizes.get(directory), seconds, source)
            )
    return rows
