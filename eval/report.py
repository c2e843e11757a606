"""Reports of a ``ced-eval hear`` run: Markdown, CSV and a bar chart.

One row per task as the leaderboard counts them: the two Beehive folds are
averaged into one row, k-fold tasks use heareval's mean over folds (what the
runner stores), other tasks keep their folder name. Next to the model's
scores stand the published CED score for the same size (when the module is
``hear_ced.<size>``), the difference, and optionally a second run; then the
means over the tasks, the run's provenance, its measured throughput and an
estimate of the whole benchmark's time (:mod:`eval.estimate`).

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
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

from ced_common.files import atomic_path, write_text
from ced_common.tables import markdown_table
from eval.estimate import (
    STEPS,
    EstimateRow,
    TaskTiming,
    estimate_benchmark,
    fit_costs,
    measure_folder,
    task_timing,
)
from eval.tasks import (
    HEAR_TASKS,
    TASK_BY_COLUMN,
    TASK_BY_DIRECTORY,
    FolderSize,
    size_of_module,
)

PARTS = ("mlp", "linear")
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
    ced_size: str | None = None  # published CED size the model matches, if any
    info: dict | None = None  # run.json as written
    sample_rate: int | None = None  # the module's, from module.json
    name: str | None = None  # overrides the label (two runs of the same model)

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        return self.module if not self.model else f"{self.module} ({Path(self.model).name})"

    @property
    def provenance(self) -> dict:
        return dict((self.info or {}).get("provenance") or {})

    @property
    def model_options(self) -> dict:
        options = self.provenance.get("model_options", (self.info or {}).get("model_options"))
        return dict(options or {})

    @property
    def embedding_method(self) -> str:
        """The run's embedding method; runs recorded before the choice existed used "default"."""
        method = self.provenance.get("embedding_method")
        if method:
            return str(method)
        return "published" if self.model_options.get("published") else "default"


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ReportError(f"{path} does not hold a JSON object")
    return data


def _read_result(path: Path) -> dict:
    """A task's result; an unreadable file counts as a failed task, not a failed report."""
    try:
        return _read_json(path)
    except ReportError as exc:
        return {"task": path.stem, "status": "failed", "errors": {"result": str(exc)}}


def load_run(folder: str | os.PathLike) -> Run:
    """Read run.json, module.json and results/*.json of a run folder."""
    folder = Path(folder)
    run_file = folder / "run.json"
    if not run_file.is_file():
        raise ReportError(f"{folder} is not a ced-eval run folder (no run.json)")
    info = _read_json(run_file)
    if not isinstance(info.get("module"), str):
        raise ReportError(f"{run_file} names no module")
    results = {
        path.stem: _read_result(path) for path in sorted((folder / "results").glob("*.json"))
    }
    if not results:
        raise ReportError(f"{folder} has no task results yet")
    module_file = folder / "module.json"
    module_info = _read_json(module_file) if module_file.exists() else {}
    size = size_of_module(info["module"]) or module_info.get("ced_size")
    rate = module_info.get("sample_rate")
    return Run(folder, info["module"], info.get("model"), results, size, info,
               rate if isinstance(rate, int) else None)  # fmt: skip


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


def build_rows(run: Run, compare: Run | None = None) -> list[dict]:
    """Rows of the report, as fractions (None where there is no number).

    ``like_for_like`` says whether a task's difference to the published score
    compares the same embedding method: "yes", "no", "partly" (None without a
    published score); ``caveat`` names the reason (a key of :data:`CAVEATS`).
    """
    size = run.ced_size
    own = {part: unit_scores(run, part) for part in PARTS}
    other = {part: unit_scores(compare, part) for part in PARTS} if compare else None
    units = list(own["mlp"]) + [u for u in (other["mlp"] if other else {}) if u not in own["mlp"]]
    rows = []
    for unit in units:
        hear_task = TASK_BY_COLUMN.get(unit)
        published = hear_task.published(size) if hear_task and size else None
        mlp = own["mlp"].get(unit)
        caveat = None
        if hear_task and published is not None and run.embedding_method != "published":
            caveat = hear_task.comparison_caveat
        row = {
            "task": unit,
            "metric": _metric(run if unit in run.results or hear_task else compare, unit),
            "mlp": mlp,
            "linear": own["linear"].get(unit),
            "published": published,
            "difference": None if mlp is None or published is None else mlp - published,
            "like_for_like": LIKE_FOR_LIKE[caveat] if published is not None else None,
            "caveat": caveat,
        }
        if other:
            row["compare_mlp"] = other["mlp"].get(unit)
            row["compare_linear"] = other["linear"].get(unit)
        rows.append(row)
    return rows


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def aggregate_rows(rows: list[dict]) -> list[dict]:
    """Means over the report rows, each over one set of tasks (a column skips missing numbers).

    - all tasks with a score (MLP, linear, the compared run's);
    - the tasks with both an MLP score and a published one (mean difference);
    - of those, the like-for-like ones only.
    """
    if not rows:
        return []
    score_keys = [k for k in ("mlp", "linear", "compare_mlp", "compare_linear") if k in rows[0]]
    scored = [r for r in rows if any(r[k] is not None for k in score_keys)]
    sets = [("mean, all tasks", scored)]
    both = [r for r in rows if r["difference"] is not None]
    if both:
        sets += [("mean, tasks with a published score", both),
                 ("mean, like for like only", [r for r in both if r["like_for_like"] == "yes"])]  # fmt: skip
    aggregates = []
    for label, members in sets:
        row = {key: _mean([r[key] for r in members]) for key in rows[0] if key not in
               ("task", "metric", "like_for_like", "caveat")}  # fmt: skip
        if label == "mean, all tasks":
            row["published"] = row["difference"] = None
        aggregates.append({"task": f"{label} ({len(members)})", "metric": "-", **row,
                           "like_for_like": None, "caveat": None})  # fmt: skip
    return aggregates


def _percent(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:+.2f}" if signed else f"{100 * value:.2f}"


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _hours(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 3600:,.2f}"


def _score_table(
    run: Run, compare: Run | None, rows: list[dict], aggregates: list[dict]
) -> list[str]:
    size = run.ced_size
    compared = any(row["published"] is not None for row in rows)
    header = ["task", "metric", f"{run.label} MLP", f"{run.label} linear",
              f"published CED-{size.capitalize()}" if size else "published CED", "MLP - published"]  # fmt: skip
    if compare:
        header += [f"{compare.label} MLP", f"{compare.label} linear"]
    if compared:
        header.append("like for like")
    notes = sorted({row["caveat"] for row in rows if row["caveat"]}, key=list(CAVEATS).index)
    body = []
    for bold, row in [(False, row) for row in rows] + [(True, row) for row in aggregates]:
        cells = [f"**{row['task']}**" if bold else row["task"], row["metric"],
                 _percent(row["mlp"]), _percent(row["linear"]),
                 _percent(row["published"]), _percent(row["difference"], signed=True)]  # fmt: skip
        if compare:
            cells += [_percent(row["compare_mlp"]), _percent(row["compare_linear"])]
        if compared:
            mark = f" [{notes.index(row['caveat']) + 1}]" if row["caveat"] else ""
            cells.append((row["like_for_like"] or "") + mark)
        body.append(cells)
    lines = [markdown_table(header, body)]
    lines += ["", "Means (bold rows) are over the number of tasks in brackets; a column's mean "
              "skips the tasks without a number in that column."]  # fmt: skip
    if compared:
        lines += ["", "Like for like assumes each clip embedded alone: the published runs took "
                  "the features' 120 dB floor over the batch heareval passed, which changes only "
                  "bins more than 120 dB below the batch's loudest."]  # fmt: skip
    if notes:
        lines += ["", f"Not like for like: this run used the `{run.embedding_method}` embedding "
                  "method, the published CED numbers the original wrapper's "
                  "(`--model-options '{\"published\": true}'` reproduces it):"]  # fmt: skip
        lines += [f"{i}. {CAVEATS[note]}." for i, note in enumerate(notes, start=1)]
    return lines


def _provenance_table(runs: list[Run]) -> list[str]:
    def field(run: Run, key: str) -> str:
        provenance, info = run.provenance, run.info or {}
        value = provenance.get(key, info.get(key))
        if key == "weights_sha256":
            return f"`{value[:12]}`" if isinstance(value, str) and value else UNKNOWN
        if key == "embedding_method":
            return run.embedding_method
        if key == "model_options":
            return f"`{json.dumps(run.model_options, sort_keys=True)}`"
        if key == "versions":
            return ", ".join(f"{k} {v}" for k, v in sorted(value.items())) if value else UNKNOWN
        if key == "grid":
            return f"{info.get('grid', '?')}, {info.get('grid_points', '?')} points"
        if key == "model":
            return value or "(module default)"
        return str(value) if value not in (None, "") else UNKNOWN

    fields = [("module", "module"), ("model", "weights file"), ("weights_sha256", "weights sha256"),
              ("embedding_method", "embedding method"), ("model_options", "model options"),
              ("package_version", "hear-ced version"), ("grid", "heareval grid"),
              ("device", "device"), ("versions", "versions"), ("started", "started")]  # fmt: skip
    header = ["", *(run.label for run in runs)]
    return [markdown_table(header, [[name, *(field(run, key) for run in runs)]
                                    for key, name in fields])]  # fmt: skip


def _throughput_table(timings: list[TaskTiming]) -> list[str]:
    header = ["task", "clips", "audio s", "embeddings s", "clips/s", "audio s/s", "MLP s",
              "linear s"]  # fmt: skip
    rows = []
    for t in timings:
        size = t.size
        rows.append([
            t.task, (_number(size.clips, 0) if size else "-")
            + (f" ({t.reused_clips:,} reused)" if t.reused_clips else ""),
            _number(size.audio_seconds, 0) if size else "-", _number(t.seconds.get("embeddings")),
            _number(t.clips_per_second, 2), _number(t.audio_per_second, 2),
            _number(t.seconds.get("mlp")), _number(t.seconds.get("linear")),
        ])  # fmt: skip
    lines = [markdown_table(header, rows)]
    reused = ("; \"reused\": files whose embeddings came from a twin task (Beehive's folds), "
              "so clips/s and audio s/s overstate that task's rate"
              if any(t.reused_clips for t in timings) else "")  # fmt: skip
    sources = "; ".join(sorted({t.size.source for t in timings if t.size})) or "unknown"
    lines += ["", "Wall-clock seconds of each step as recorded by the run (a step resumed from an "
              "earlier invocation keeps that invocation's time), start-up of each step's "
              f"process included{reused}; sizes: {sources}."]  # fmt: skip
    return lines


def _estimate_section(
    timings: list[TaskTiming], estimate: list[EstimateRow], run: Run
) -> list[str]:
    models = fit_costs(timings)
    if not models:
        return ["No step of this run has a measured cost (its results lack `clips` / "
                "`audio_seconds` and its task folders are not at hand): no estimate."]  # fmt: skip
    lines = [
        "**This is an estimate, not a measurement.** Each HEAR task folder's size (clips, "
        "seconds of audio) through a cost model per step and embedding type, fitted to the "
        "tasks this run measured: a start-up term, a cost per clip and a cost per second of "
        "audio (downstream steps: per clip on scene tasks, per second of audio on event tasks), "
        "each kept only when there are more measured tasks than terms; with one term the model "
        "is the run's mean rate. Tasks the run measured keep their measured times; every other "
        "task is costed by the run's model. When start-up is not separated it inflates the "
        "per-unit cost, so models from small tasks overstate large ones. Valid for this run's "
        f"device ({run.provenance.get('device', UNKNOWN)}), embedding method "
        f"({run.embedding_method}) and heareval grid.",
        "",
        "Inputs, the run's cost models:",
        "",
        *[f"- {model.describe()}" for model in models.values()],
    ]
    steps = [step for step in STEPS if estimate and step in estimate[0].seconds]
    titles = {"embeddings": "embeddings h", "mlp": "MLP h", "linear": "linear h"}
    header = [
        "task",
        "clips",
        "audio h",
        "size from",
        *[titles[s] for s in steps],
        "total h",
        "costs",
    ]
    cells = []
    for row in estimate:
        size = row.size
        sources = sorted({row.cost_source[s] for s in steps if row.seconds[s] is not None})
        cells.append([
            row.task, _number(size.clips, 0) if size else "-",
            _hours(size.audio_seconds) if size else "-", size.source if size else "unknown",
            *[_hours(row.seconds[step]) for step in steps], _hours(row.total), ", ".join(sources) or "-",
        ])  # fmt: skip
    totals = {step: sum(r.seconds[step] or 0.0 for r in estimate) for step in steps}
    cells.append(["**total of the estimable cells**", "", "", "",
                  *[_hours(totals[step]) for step in steps], _hours(sum(totals.values())), ""])  # fmt: skip
    lines += ["", markdown_table(header, cells)]
    missing = [r.task if all(r.seconds[s] is None for s in steps) else
               f"{r.task} ({', '.join(s for s in steps if r.seconds[s] is None)})"
               for r in estimate if r.total is None]  # fmt: skip
    if missing:
        lines += ["", f"Not estimable (size or cost unknown), left out of the total, which is "
                  f"therefore a lower bound: {'; '.join(missing)}. Pass `--tasks-dir` with the "
                  "prepared tasks to count their sizes."]  # fmt: skip
    return lines


def render_markdown(
    run: Run,
    rows: list[dict],
    compare: Run | None,
    audioset: dict | None,
    timings: list[TaskTiming] | None = None,
    estimate: list[EstimateRow] | None = None,
) -> str:
    methods = f"embedding method `{run.embedding_method}`"
    if compare:
        methods += f"; compared run {compare.label}: `{compare.embedding_method}`"
    lines = [
        f"# HEAR evaluation: {run.label}",
        "",
        "Scores in percent. MLP: heareval's downstream grid search; linear: logistic-regression "
        "probe on the same embeddings and splits. k-fold tasks: mean over folds; Beehive: mean of "
        f"its two folds. This run: {methods}.",
        "",
        *_score_table(run, compare, rows, aggregate_rows(rows)),
    ]
    failed = [name for name, r in run.results.items() if r.get("status") != "ok"]
    if failed:
        lines += ["", "Failed tasks:"]
        lines += [f"- {name}: {run.results[name].get('errors')}" for name in failed]
    if audioset:
        lines += ["", "## AudioSet-style tagging", "",
                  markdown_table(["clips", "mAP", "mAUC", "d'"],
                                 [[audioset["clips"], _percent(audioset["mAP"]),
                                   _percent(audioset["mAUC"]), f"{audioset['d_prime']:.3f}"]])]  # fmt: skip
    lines += ["", "## Provenance", "", *_provenance_table([run, compare] if compare else [run]),
              "", f"Report written {datetime.date.today().isoformat()}."]  # fmt: skip
    if timings:
        lines += ["", "## Measured throughput", "", *_throughput_table(timings)]
    if estimate is not None:
        lines += ["", "## Estimate for the whole benchmark (19 tasks, 20 folders)", "",
                  *_estimate_section(timings or [], estimate, run)]  # fmt: skip
    return "\n".join(lines) + "\n"


def render_csv(rows: list[dict]) -> str:
    fields = list(rows[0]) if rows else ["task"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else (f"{v:.6f}" if isinstance(v, float) else v))
                         for k, v in row.items()})  # fmt: skip
    return buffer.getvalue()


def plot(rows: list[dict], run: Run, compare: Run | None, path: Path) -> None:
    """Grouped horizontal bars (percent) per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [("mlp", f"{run.label} MLP ({run.embedding_method})"),
              ("linear", f"{run.label} linear ({run.embedding_method})"),
              ("published", "published CED")]  # fmt: skip
    if compare:
        series += [
            ("compare_mlp", f"{compare.label} MLP ({compare.embedding_method})"),
            ("compare_linear", f"{compare.label} linear ({compare.embedding_method})"),
        ]
    series = [(key, name) for key, name in series if any(row.get(key) is not None for row in rows)]
    labels = [row["task"] + (" *" if row.get("caveat") else "") for row in rows]
    height = 0.8 / max(1, len(series))
    figure, axes = plt.subplots(figsize=(9, 2.0 + 0.25 * len(rows) * max(1, len(series))))
    for offset, (key, name) in enumerate(series):
        positions = [i + offset * height for i in range(len(rows))]
        values = [100 * row[key] if row.get(key) is not None else 0.0 for row in rows]
        axes.barh(positions, values, height=height, label=name)
    axes.set_yticks([i + height * (len(series) - 1) / 2 for i in range(len(rows))])
    axes.set_yticklabels(labels)
    axes.invert_yaxis()
    axes.set_xlabel("score (%)" + ("; * not like for like with the published score"
                                   if any(row.get("caveat") for row in rows) else ""))  # fmt: skip
    axes.set_xlim(0, 100)
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize="small")
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=100, bbox_inches="tight")  # keep the legend below
    plt.close(figure)


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


def _recorded_size(result: dict) -> FolderSize | None:
    clips, seconds = result.get("clips"), result.get("audio_seconds")
    if isinstance(clips, int) and clips > 0 and isinstance(seconds, (int, float)):
        return FolderSize(clips, float(seconds), "recorded by the run")
    return None


def run_timings(run: Run) -> list[TaskTiming]:
    """Per task folder of the run: sizes as recorded, else counted in the run's tasks folder."""
    tasks_dir = (run.info or {}).get("tasks_dir")
    timings = []
    for task, result in run.results.items():
        size = _recorded_size(result)
        if size is None and tasks_dir and (Path(tasks_dir) / task).is_dir():
            size = measure_folder(Path(tasks_dir) / task, run.sample_rate)
        timings.append(task_timing(task, result, size))
    return timings


def benchmark_sizes(
    timings: list[TaskTiming],
    tasks_dir: str | os.PathLike | None = None,
    sample_rate: int | None = None,
) -> dict[str, FolderSize]:
    """Best known size of each HEAR folder: this run's, else counted in ``tasks_dir``, else
    the registry's (:attr:`eval.tasks.HearTask.size`)."""
    sizes = {t.task: t.size for t in timings if t.size and t.task in TASK_BY_DIRECTORY}
    for hear_task in HEAR_TASKS:
        for directory in hear_task.directories:
            if directory in sizes:
                continue
            counted = None
            if tasks_dir and (Path(tasks_dir) / directory).is_dir():
                counted = measure_folder(Path(tasks_dir) / directory, sample_rate)
            if counted or hear_task.size:
                sizes[directory] = counted or hear_task.size  # type: ignore[assignment]
    return sizes


def write_report(
    run_dir: str | os.PathLike,
    compare_dir: str | os.PathLike | None = None,
    audioset_json: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    tasks_dir: str | os.PathLike | None = None,
) -> dict[str, Path]:
    """Write report.md, report.csv and report.png; returns their paths.

    ``tasks_dir``: prepared HEAR task folders whose sizes complete the
    whole-benchmark estimate for tasks the run did not cover.
    """
    run = load_run(run_dir)
    compare = load_run(compare_dir) if compare_dir else None
    if compare and compare.label == run.label:  # same model twice: tell them apart by folder
        run = replace(run, name=f"{run.label} [{run.folder.name}]")
        compare = replace(compare, name=f"{compare.label} [{compare.folder.name}]")
    audioset = load_audioset(audioset_json) if audioset_json else None
    if tasks_dir is not None and not Path(tasks_dir).is_dir():
        raise ReportError(f"tasks folder {tasks_dir} does not exist")
    rows = build_rows(run, compare)
    timings = run_timings(run)
    estimate = estimate_benchmark(timings, benchmark_sizes(timings, tasks_dir, run.sample_rate))
    out = Path(out_dir) if out_dir else run.folder
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "report.md", "csv": out / "report.csv", "chart": out / "report.png"}
    markdown = render_markdown(run, rows, compare, audioset, timings, estimate)
    for key, text in (("markdown", markdown), ("csv", render_csv(rows + aggregate_rows(rows)))):
        write_text(paths[key], text)
    plot(rows, run, compare, paths["chart"])
    return paths
