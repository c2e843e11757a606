"""Reports of ``ced-eval hear`` runs: Markdown and CSV.

One row per task as the leaderboard counts them: the two Beehive folds are
averaged into one row, k-fold tasks use heareval's mean over folds (what the
runner stores), other tasks keep their folder name. Each run is one column
group: its scores beside the published CED score of its size (when its module
is ``hear_ced.<size>`` or its checkpoint has a published size's shape) and the
difference; then means over the tasks (those every run scored, so that they
compare across runs, and each run's own), and each run's measured times with
an estimate of the whole benchmark's time. Provenance stays in each run's ``run.json``.

The published CED numbers were made with the original wrapper's embeddings
(REFERENCE.md section 7). A run made with the ``published`` embedding method
compares like for like on every task; a run made with the ``default`` method
does not on the event tasks and on tasks with clips over 10.11 s, and the
report marks those rows.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import soundfile as sf

from hear_ced.common.files import write_text
from hear_ced.common.tables import markdown_table
from hear_ced.eval.hear_run.task_checks import audio_totals
from hear_ced.eval.tasks import (
    HEAR_TASKS,
    TASK_BY_COLUMN,
    TASK_BY_DIRECTORY,
    FolderSize,
    percent,
    size_of_module,
)

PARTS = ("mlp", "linear")
NUMBERS = (*PARTS, "published", "difference")  # the numbers of a run's column group
UNKNOWN = "unknown (not recorded by this run)"
# why a default-method score is not like for like with the published one (footnotes)
CAVEATS = {
    "event": "event task: each published timestamp vector comes from its own 0.48 s window "
    "(3 x 4 tokens) every 50 ms; the default method takes each timestamp from tokens of "
    "the whole clip (two passes shifted by 80 ms, interpolated to 50 ms)",
    "long": "clips over 10.11 s: the published scene embeddings average the tokens of a "
    "zero-padded last chunk (padding included; 44 % of the time patches on Vocal "
    "Imitation's 11.26 s clips); the default method averages only real tokens",
    "variable": "clip lengths vary: the clips over 10.11 s are affected as on the long-clip "
    "tasks, the others are not; how many there are is not recorded here",
}
LIKE_FOR_LIKE = {None: "yes", "event": "no", "long": "no", "variable": "partly"}


class ReportError(ValueError):
    """A run folder that cannot be reported on."""


@dataclass(frozen=True)
class Run:
    folder: Path
    module: str
    model: str | None
    results: dict[str, dict]  # task folder -> result record
    info: dict  # run.json as written
    ced_size: str | None = None  # published CED size the model matches, if any
    name: str | None = None  # the column group's name when not the run's own (name_runs)

    @property
    def label(self) -> str:
        """Name of the run's column group: module, weights file stem and embedding method."""
        if self.name:
            return self.name
        stem = [Path(self.model).stem] if self.model else []
        return f"{self.module} ({', '.join([*stem, self.embedding_method])})"

    @property
    def provenance(self) -> dict:
        return self.info["provenance"]

    @property
    def embedding_method(self) -> str:
        """As the module check recorded it (before any task of the run)."""
        return self.provenance["embedding_method"]


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ReportError(f"{path} does not hold a JSON object")
    return data


def load_run(folder: str | os.PathLike) -> Run:
    """Read run.json, module.json and results/*.json of a run folder."""
    folder = Path(folder)
    run_file = folder / "run.json"
    if not run_file.is_file():
        raise ReportError(f"{folder} is not a ced-eval run folder (no run.json)")
    info = _read_json(run_file)
    missing = [key for key in ("module", "model_options", "provenance") if key not in info]
    if missing:
        raise ReportError(f"{run_file} lacks {', '.join(missing)}: not written by ced-eval hear")
    results = {}
    for path in sorted((folder / "results").glob("*.json")):
        try:
            results[path.stem] = _read_json(path)
        except ReportError as exc:  # an unreadable result fails its task, not the report
            results[path.stem] = {"task": path.stem, "status": "failed",
                                  "errors": {"result": str(exc)}}  # fmt: skip
    if not results:
        raise ReportError(f"{folder} has no task results yet")
    module_file = folder / "module.json"
    module_info = _read_json(module_file) if module_file.exists() else {}
    size = size_of_module(info["module"]) or module_info.get("ced_size")
    return Run(folder, info["module"], info.get("model"), results, info, size)


def name_runs(runs: Sequence[Run], names: Sequence[str] = ()) -> list[Run]:
    """Give each run a unique column group name: the i-th of ``names``, else its own label,
    with its folder's name (then path) added where two runs would share one."""
    if len(names) > len(runs):
        raise ReportError(f"{len(names)} names for {len(runs)} run folder(s)")
    if any(not name.strip() for name in names):
        raise ReportError("a run's name is empty")
    labels = [*names, *(run.label for run in runs[len(names) :])]
    for where in (lambda run: run.folder.name, lambda run: str(run.folder)):
        counts = Counter(labels)
        for i in range(len(names), len(runs)):
            if counts[labels[i]] > 1:
                labels[i] = f"{runs[i].label} [{where(runs[i])}]"
    repeated = sorted(label for label, count in Counter(labels).items() if count > 1)
    if repeated:
        raise ReportError(f"two runs are named {repeated[0]!r}; give each its own --name")
    return [replace(run, name=label) for run, label in zip(runs, labels, strict=True)]


def _score(result: dict | None, part: str) -> float | None:
    if not result or result.get("status") != "ok":
        return None
    score = result.get(part, {}).get("score")
    return float(score) if score is not None and math.isfinite(score) else None


def unit_scores(run: Run, part: str) -> dict[str, float | None]:
    """Score per report row: HEAR column (folds of a column averaged) or task folder."""
    scores: dict[str, float | None] = {}
    for task in HEAR_TASKS:
        if not any(d in run.results for d in task.directories):
            continue
        values = [_score(run.results.get(d), part) for d in task.directories]
        scores[task.column] = (
            None if any(v is None for v in values) else sum(values) / len(values)  # type: ignore[arg-type]
        )
    for name, result in run.results.items():
        if name not in TASK_BY_DIRECTORY:
            scores[name] = _score(result, part)
    return scores


def _metric(run: Run, unit: str) -> str:
    if unit in TASK_BY_COLUMN:
        return TASK_BY_COLUMN[unit].primary_metric
    return run.results[unit].get("primary_metric") or "-"


def _cells(run: Run, unit: str, scores: dict[str, dict[str, float | None]]) -> dict:
    """One run's numbers on one report row (its column group)."""
    hear_task = TASK_BY_COLUMN.get(unit)
    published = hear_task.published(run.ced_size) if hear_task and run.ced_size else None
    mlp = scores["mlp"].get(unit)
    caveat = None
    if hear_task and published is not None and run.embedding_method != "published":
        caveat = hear_task.comparison_caveat
    return {
        "mlp": mlp,
        "linear": scores["linear"].get(unit),
        "published": published,
        "difference": None if mlp is None or published is None else mlp - published,
        "like_for_like": LIKE_FOR_LIKE[caveat] if published is not None else None,
        "caveat": caveat,
    }


def build_rows(runs: Sequence[Run]) -> list[dict]:
    """Rows of the report: ``task``, ``metric`` and ``runs``, one dict of numbers per run.

    Numbers are fractions, None where there is none (a task the run lacks or
    failed). ``published`` is the published CED score of the run's size;
    ``like_for_like`` says whether the difference to it compares the same
    embedding method: "yes", "no", "partly" (None without a published score);
    ``caveat`` names the reason (a key of :data:`CAVEATS`). HEAR tasks come in
    the registry's order, then the other tasks as the runs list them.
    """
    scores = [{part: unit_scores(run, part) for part in PARTS} for run in runs]
    present = [unit for own in scores for unit in own["mlp"]]
    units = [task.column for task in HEAR_TASKS if task.column in present]
    units += [unit for unit in dict.fromkeys(present) if unit not in TASK_BY_COLUMN]
    pairs = list(zip(runs, scores, strict=True))
    rows = []
    for unit in units:
        source = next(run for run, own in pairs if unit in own["mlp"])
        cells = [_cells(run, unit, own) for run, own in pairs]
        rows.append({"task": unit, "metric": _metric(source, unit), "runs": cells})
    return rows


def _scored(cells: dict) -> bool:
    return cells["mlp"] is not None or cells["linear"] is not None


def _means(cells: list[dict], keys: tuple[str, ...]) -> dict:
    """Each of ``keys`` averaged over the cells with a number there, and how many that is."""
    means: dict = {}
    for key in NUMBERS:
        values = [c[key] for c in cells if c[key] is not None] if key in keys else []
        means[key] = sum(values) / len(values) if values else None
        means[f"{key}_tasks"] = len(values)
    return means


def aggregate_rows(rows: list[dict]) -> list[dict]:
    """Means over the report rows; ``tasks`` counts the row's set of tasks.

    The sets are the same for every run, so that their means compare across runs:

    - the tasks every run scored ("all tasks" with one run): MLP and linear;
    - of those, the tasks with a published score (mean published score, mean difference);
    - of those, the tasks like for like in every run with a published score.

    Each mean also says how many numbers it averages (``<key>_tasks``): fewer
    than its set where a column lacks some.
    """
    if not rows:
        return []
    count = len(rows[0]["runs"])
    several = count > 1
    shared = [row for row in rows if all(_scored(cells) for cells in row["runs"])]
    sized = [
        i for i in range(count) if any(row["runs"][i]["published"] is not None for row in rows)
    ]
    sets = [("mean, shared tasks" if several else "mean, all tasks", shared, PARTS)]
    published = [
        row
        for row in shared
        if sized and all(row["runs"][i]["published"] is not None for i in sized)
    ]
    if published:
        like = [
            row for row in published if all(row["runs"][i]["like_for_like"] == "yes" for i in sized)
        ]
        sets += [("mean, shared tasks with a published score" if several
                  else "mean, tasks with a published score", published, NUMBERS),
                 ("mean, shared tasks like for like only" if several
                  else "mean, like for like only", like, NUMBERS)]  # fmt: skip
    aggregates = [
        {"task": f"{label} ({len(members)})", "metric": "-", "tasks": len(members),
         "runs": [_means([row["runs"][i] for row in members], keys) for i in range(count)]}
        for label, members, keys in sets
    ]  # fmt: skip
    return aggregates


# Timings: what the runner records per task (``clips``, ``audio_seconds`` and the
# wall-clock ``seconds`` of each step), completed for every HEAR folder at the run's rates.
log = logging.getLogger(__name__)
STEPS = ("embeddings", "mlp", "linear")


def measure_folder(task_dir: Path) -> FolderSize | None:
    """Clips and audio of a prepared task folder, counted as a run records them.

    Counted at its lowest rate (durations do not depend on the rate). None when
    the folder holds no audio or cannot be read (logged).
    """
    rates = sorted(int(p.name) for p in task_dir.glob("*") if p.is_dir() and p.name.isdigit())
    if not rates:
        return None
    try:
        splits = json.loads((task_dir / "task_metadata.json").read_text())["splits"]
        clips, seconds = audio_totals(task_dir, rates[0], splits)
    except (OSError, ValueError, KeyError, TypeError, sf.LibsndfileError) as exc:
        log.warning("size of %s unknown: %s", task_dir.name, exc)
        return None
    return FolderSize(clips, seconds, "counted in the task folder") if clips else None


def _units(size: FolderSize | None, unit: str) -> float | None:
    """The size in ``unit`` (``clip`` or ``audio`` seconds); None when that figure is unknown."""
    if size is None:
        return None
    return float(size.clips) if unit == "clip" else size.audio_seconds


@dataclass(frozen=True)
class TaskTiming:
    """Wall-clock seconds of one task folder per step: measured by the run, else estimated."""

    task: str
    embedding_type: str | None
    size: FolderSize | None
    seconds: dict[str, float | None]  # step -> seconds (None: not estimable)
    cost_source: dict[str, str]  # step -> "measured" | "run rate" | "none"

    @property
    def total(self) -> float | None:
        values = list(self.seconds.values())
        return None if any(v is None for v in values) else sum(values)  # type: ignore[arg-type]


def task_timing(task: str, result: dict) -> TaskTiming:
    """What one result record measured; a step counts only when it produced a score."""
    recorded = result.get("seconds") or {}
    clips, audio = result.get("clips"), result.get("audio_seconds")
    size = FolderSize(clips, audio, "recorded by the run") if clips and audio else None
    done = {
        "embeddings": "embeddings" not in (result.get("errors") or {})
        and any(result.get(part, {}).get("score") is not None for part in ("mlp", "linear")),
        "mlp": result.get("mlp", {}).get("score") is not None,
        "linear": result.get("linear", {}).get("score") is not None,
    }
    seconds: dict[str, float | None] = {
        step: float(recorded[step])
        for step in STEPS
        if done[step] and isinstance(recorded.get(step), (int, float)) and recorded[step] > 0
    }
    hear_task = TASK_BY_DIRECTORY.get(task)
    embedding_type = hear_task.embedding_type if hear_task else result.get("embedding_type")
    return TaskTiming(task, embedding_type, size, seconds, dict.fromkeys(seconds, "measured"))


@dataclass(frozen=True)
class Rate:
    """Seconds of one step per unit of size, on tasks of one embedding type."""

    step: str
    embedding_type: str
    unit: str
    per_unit: float
    tasks: int  # measured tasks it averages

    def seconds(self, size: FolderSize | None) -> float | None:
        count = _units(size, self.unit)
        return None if count is None else count * self.per_unit


def fit_rates(timings: list[TaskTiming]) -> dict[tuple[str, str], Rate]:
    """(step, embedding type) -> its mean rate, for every pair the run measured.

    A rate is total seconds over total units of the measured tasks: seconds of
    audio for the embeddings and for event tasks' downstream models (one row per
    timestamp), clips for scene tasks' downstream models. Start-up is part of
    it, so rates from small tasks overstate large ones.
    """
    rates = {}
    for step in STEPS:
        for embedding_type in ("scene", "event"):
            unit = "audio" if step == "embeddings" or embedding_type == "event" else "clip"
            points = [(_units(t.size, unit), t.seconds[step]) for t in timings
                      if t.embedding_type == embedding_type and t.cost_source.get(step) == "measured"]  # fmt: skip
            points = [(count, seconds) for count, seconds in points if count]
            if points:
                per_unit = sum(s for _, s in points) / sum(c for c, _ in points)  # type: ignore[misc]
                rates[(step, embedding_type)] = Rate(step, embedding_type, unit, per_unit,
                                                     len(points))  # fmt: skip
    return rates


def estimate_benchmark(
    timings: list[TaskTiming],
    tasks_dir: str | os.PathLike | None = None,
) -> list[TaskTiming]:
    """The run's timings, completed for every HEAR folder and each step the run measured.

    HEAR folders come in the registry's order, then the run's other tasks. A
    folder's size is the run's where it measured the folder, else counted in
    ``tasks_dir``, else the registry's (:attr:`hear_ced.eval.tasks.HearTask.size`);
    a step the run did not measure on a folder is estimated when a rate of the
    folder's embedding type exists and the size it needs is known.
    """
    measured = {timing.task: timing for timing in timings}
    rates = fit_rates(timings)
    steps = tuple(step for step in STEPS if any(step in t.seconds for t in timings))
    hear = [(d, task) for task in HEAR_TASKS for d in task.directories]
    rows = []
    for directory, hear_task in [
        *hear,
        *((t, None) for t in measured if t not in TASK_BY_DIRECTORY),
    ]:
        own = measured.get(directory)
        size = own.size if own else None
        if size is None and hear_task and tasks_dir and (Path(tasks_dir) / directory).is_dir():
            size = measure_folder(Path(tasks_dir) / directory)
        size = size or (hear_task.size if hear_task else None)
        embedding_type = hear_task.embedding_type if hear_task else own.embedding_type
        seconds: dict[str, float | None] = {}
        source: dict[str, str] = {}
        for step in steps:
            if own and step in own.seconds:
                seconds[step], source[step] = own.seconds[step], "measured"
                continue
            rate = rates.get((step, embedding_type))  # type: ignore[arg-type]
            seconds[step] = rate.seconds(size) if rate else None
            source[step] = "run rate" if rate else "none"
        rows.append(TaskTiming(directory, embedding_type, size, seconds, source))
    return rows


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _hours(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 3600:,.2f}"


def _mean_cell(means: dict, key: str, tasks: int | None) -> str:
    """A mean in %, with its own count where it differs from its row's."""
    text = percent(means[key], signed=key == "difference")
    count = means[f"{key}_tasks"]
    return text if means[key] is None or count == tasks else f"{text} ({count})"


def _describe(run: Run) -> str:
    beside = (f"beside the published CED-{run.ced_size.capitalize()} scores" if run.ced_size else
              "no published CED score (its model is not a CED of a published size)")  # fmt: skip
    return f"- **{run.label}**: embedding method `{run.embedding_method}`; {beside}."


def _score_table(runs: Sequence[Run], rows: list[dict], aggregates: list[dict]) -> list[str]:
    header = ["task", "metric"]
    for run in runs:
        header += [f"{run.label} MLP", f"{run.label} linear"]
        if run.ced_size:
            header += [f"{run.label} published CED-{run.ced_size.capitalize()}",
                       f"{run.label} MLP - published", f"{run.label} like for like"]  # fmt: skip
    caveats = {cells["caveat"] for row in rows for cells in row["runs"] if cells["caveat"]}
    notes = sorted(caveats, key=list(CAVEATS).index)
    body = []
    for row in rows:
        line = [row["task"], row["metric"]]
        for run, cells in zip(runs, row["runs"], strict=True):
            line += [percent(cells["mlp"]), percent(cells["linear"])]
            if run.ced_size:
                mark = f" [{notes.index(cells['caveat']) + 1}]" if cells["caveat"] else ""
                line += [percent(cells["published"]), percent(cells["difference"], signed=True),
                         (cells["like_for_like"] or "") + mark]  # fmt: skip
        body.append(line)
    for row in aggregates:
        line = [f"**{row['task']}**", row["metric"]]
        for run, means in zip(runs, row["runs"], strict=True):
            keys = NUMBERS if run.ced_size else PARTS
            line += [_mean_cell(means, key, row["tasks"]) for key in keys]
            line += [""] if run.ced_size else []
        body.append(line)
    lines = [markdown_table(header, body)]
    if any(run.ced_size for run in runs):
        lines += ["", "Like for like assumes each clip embedded alone: the published runs took "
                  "the features' 120 dB floor over the batch heareval passed, which changes only "
                  "bins more than 120 dB below the batch's loudest."]  # fmt: skip
    if notes:
        differing = [f"**{run.label}**" for run in runs
                     if run.ced_size and run.embedding_method != "published"]  # fmt: skip
        lines += ["", f"Not like for like ({', '.join(differing)}): an embedding method other than "
                  "the original wrapper's, with which the published CED numbers were made "
                  "(`--model-options '{\"published\": true}'` reproduces it):"]  # fmt: skip
        lines += [f"{i}. {CAVEATS[note]}." for i, note in enumerate(notes, start=1)]
    return lines


def _timings_section(estimate: list[TaskTiming], run: Run) -> list[str]:
    """The run's measured times per task folder, and an estimate for every HEAR folder."""
    steps = [step for step in STEPS if estimate and step in estimate[0].seconds]
    if not steps:
        return ["No task timed."]
    rates = fit_rates(estimate)
    lines = [
        "Wall-clock seconds of each step as recorded by the run (a step resumed from an earlier "
        "invocation keeps that invocation's time), start-up of each step's process included. ",
        "",
    ]
    if not rates:
        lines[0] += "No task of this run has a recorded size: no rate, no estimate."
    else:
        lines[0] += (
            "**The cells costed at a run rate are an estimate, not a measurement**: the run's "
            "mean rate per step and embedding type, seconds per second of audio for the "
            "embeddings and for event tasks' downstream models, per clip for scene tasks' "
            "downstream models. Start-up is part of each rate, so rates from small tasks "
            "overstate large ones. Valid for this run's device "
            f"({run.provenance.get('device') or UNKNOWN}), embedding method "
            f"({run.embedding_method}) and heareval grid. The run's rates:"
        )
        lines += [
            f"- {r.step}, {r.embedding_type} tasks: {r.per_unit:.4g} s per "
            f"{'clip' if r.unit == 'clip' else 's of audio'} (mean over {r.tasks} task(s))"
            for r in rates.values()
        ] + [""]  # fmt: skip
    titles = {"embeddings": "embeddings s", "mlp": "MLP s", "linear": "linear s"}
    header = ["task", "clips", "audio h", "size from", *[titles[s] for s in steps], "total h",
              "costs"]  # fmt: skip
    cells = []
    for row in estimate:
        size = row.size
        clips = _number(size.clips, 0) if size else "-"
        sources = sorted({row.cost_source[s] for s in steps if row.seconds[s] is not None})
        cells.append([
            row.task, clips,
            _hours(size.audio_seconds) if size else "-", size.source if size else "unknown",
            *[_number(row.seconds[step]) for step in steps], _hours(row.total), ", ".join(sources) or "-",
        ])  # fmt: skip
    totals = {step: sum(r.seconds[step] or 0.0 for r in estimate) for step in steps}
    cells.append(["**total of the estimable cells**", "", "", "",
                  *[_number(totals[step]) for step in steps], _hours(sum(totals.values())), ""])  # fmt: skip
    lines.append(markdown_table(header, cells))
    missing = [r.task if all(r.seconds[s] is None for s in steps) else
               f"{r.task} ({', '.join(s for s in steps if r.seconds[s] is None)})"
               for r in estimate if r.total is None]  # fmt: skip
    if missing:
        lines += ["", f"Not estimable (size or cost unknown), left out of the total, which is "
                  f"therefore a lower bound: {'; '.join(missing)}. Pass `--tasks-dir` with the "
                  "prepared tasks to count their sizes."]  # fmt: skip
    return lines


def render_markdown(
    runs: Sequence[Run], rows: list[dict], audioset: dict | None, timings: list[list[TaskTiming]]
) -> str:
    """report.md: scores, failures, AudioSet and the timings of each run."""
    several = len(runs) > 1
    lines = [
        f"# HEAR evaluation: {', '.join(run.label for run in runs)}",
        "",
        "Scores in % (two decimals, as the published CED numbers). MLP: heareval's downstream "
        "grid search; linear: logistic-regression probe on the same embeddings and splits. "
        "k-fold tasks: mean over folds; Beehive: mean of its two folds. A task a run lacks or "
        "failed is blank (-) in its columns.",
        "",
        "Runs, one column group each:" if several else "The run:",
        "",
        *(_describe(run) for run in runs),
        "",
        "Each run's provenance (weights sha256, model options, versions, device, start) is in "
        "its folder's run.json.",
        "",
        "Means (bold rows) are over the tasks counted in parentheses in their names, as in "
        "`mean, all tasks (3)`; a mean over fewer (a column without a number on some of them) "
        "gives its own count after it.",
        "",
        *_score_table(runs, rows, aggregate_rows(rows)),
    ]
    for run in runs:
        failed = [name for name, r in run.results.items() if r.get("status") != "ok"]
        if failed:
            lines += ["", f"Failed tasks of {run.label}:"]
            lines += [f"- {name}: {run.results[name].get('errors')}" for name in failed]
    if audioset:
        lines += ["", "## AudioSet-style tagging", "",
                  markdown_table(["clips", "mAP %", "mAUC %", "d'"],
                                 [[audioset["clips"], percent(audioset["mAP"]),
                                   percent(audioset["mAUC"]), f"{audioset['d_prime']:.3f}"]])]  # fmt: skip
    lines += ["", "## Timings, and an estimate for the whole benchmark (19 tasks, 20 folders)"]
    for run, section in zip(runs, timings, strict=True):
        heading = [f"### {run.label}", ""] if several else []
        lines += ["", *heading, *_timings_section(section, run)]
    lines += ["", f"Report written {datetime.date.today().isoformat()}."]
    return "\n".join(lines) + "\n"


CSV_FIELDS = ("run", "task", "metric", *NUMBERS, "like_for_like", "caveat",
              *(f"{key}_tasks" for key in NUMBERS))  # fmt: skip


def render_csv(runs: Sequence[Run], rows: list[dict]) -> str:
    """report.csv, one line per run and task, then per run and mean; scores as fractions.

    ``<key>_tasks``: on a mean's line, how many tasks that mean averages.
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows + aggregate_rows(rows):
        for run, cells in zip(runs, row["runs"], strict=True):
            values = {"run": run.label, "task": row["task"], "metric": row["metric"], **cells}
            writer.writerow({k: ("" if v is None else (f"{v:.6f}" if isinstance(v, float) else v))
                             for k, v in values.items()})  # fmt: skip
    return buffer.getvalue()


def load_audioset(path: str | os.PathLike) -> dict:
    """The single model's (or ensemble's) metrics from ``ced-distill evaluate`` JSON."""
    data = json.loads(Path(path).read_text())
    metrics = data.get("model") or data.get("ensemble")
    if not isinstance(metrics, dict) or not {"mAP", "mAUC", "d_prime"} <= set(metrics):
        raise ReportError(
            f"{path} is not a ced-distill evaluate result (no model mAP/mAUC/d_prime)"
        )
    return {
        "clips": data.get("clips", "-"),
        **{k: float(metrics[k]) for k in ("mAP", "mAUC", "d_prime")},
    }


def run_timings(run: Run) -> list[TaskTiming]:
    """What the run measured on each of its task folders."""
    return [task_timing(task, result) for task, result in run.results.items()]


def write_report(
    run_dirs: Sequence[str | os.PathLike],
    names: Sequence[str] = (),
    audioset_json: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    tasks_dir: str | os.PathLike | None = None,
) -> dict[str, Path]:
    """Write report.md and report.csv of one or more runs; returns their paths.

    ``names``: column group names of the first runs (the others keep their
    own); ``out_dir`` defaults to the first run's folder; ``tasks_dir``:
    prepared HEAR task folders whose sizes complete each run's
    whole-benchmark estimate for tasks the run did not cover.
    """
    if not run_dirs:
        raise ReportError("no run folder to report on")
    runs = name_runs([load_run(folder) for folder in run_dirs], names)
    audioset = load_audioset(audioset_json) if audioset_json else None
    if tasks_dir is not None and not Path(tasks_dir).is_dir():
        raise ReportError(f"tasks folder {tasks_dir} does not exist")
    rows = build_rows(runs)
    timings = [estimate_benchmark(run_timings(run), tasks_dir) for run in runs]
    out = Path(out_dir) if out_dir else runs[0].folder
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "report.md", "csv": out / "report.csv"}
    write_text(paths["markdown"], render_markdown(runs, rows, audioset, timings))
    write_text(paths["csv"], render_csv(runs, rows))
    return paths
