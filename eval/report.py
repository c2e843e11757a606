"""Reports of a ``ced-eval hear`` run: Markdown, CSV and a bar chart.

One row per task as the leaderboard counts them: the two Beehive folds are
averaged into one row, k-fold tasks use heareval's mean over folds (what the
runner stores), other tasks keep their folder name. Next to the model's
scores stand the published CED score for the same size (when the module is
``hear_ced.<size>``), the difference, and optionally a second run.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from eval.tasks import HEAR_TASKS, TASK_BY_COLUMN, TASK_BY_DIRECTORY, size_of_module
from hear_ced.atomic import atomic_path, write_text_atomic

PARTS = ("mlp", "linear")


class ReportError(ValueError):
    """A run folder that cannot be reported on."""


@dataclass(frozen=True)
class Run:
    folder: Path
    module: str
    model: str | None
    results: dict[str, dict]  # task folder -> result record
    ced_size: str | None = None  # published CED size the model matches, if any

    @property
    def label(self) -> str:
        return self.module if not self.model else f"{self.module} ({Path(self.model).name})"


def load_run(folder: str | os.PathLike) -> Run:
    """Read run.json and results/*.json of a run folder."""
    folder = Path(folder)
    run_file = folder / "run.json"
    if not run_file.is_file():
        raise ReportError(f"{folder} is not a ced-eval run folder (no run.json)")
    info = json.loads(run_file.read_text())
    results = {
        path.stem: json.loads(path.read_text())
        for path in sorted((folder / "results").glob("*.json"))
    }
    if not results:
        raise ReportError(f"{folder} has no task results yet")
    module_file = folder / "module.json"
    found = json.loads(module_file.read_text()).get("ced_size") if module_file.exists() else None
    return Run(
        folder, info["module"], info.get("model"), results, size_of_module(info["module"]) or found
    )


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
    """Rows of the report, as fractions (None where there is no number)."""
    size = run.ced_size
    own = {part: unit_scores(run, part) for part in PARTS}
    other = {part: unit_scores(compare, part) for part in PARTS} if compare else None
    units = list(own["mlp"]) + [u for u in (other["mlp"] if other else {}) if u not in own["mlp"]]
    rows = []
    for unit in units:
        published = (
            TASK_BY_COLUMN[unit].published(size) if unit in TASK_BY_COLUMN and size else None
        )
        mlp = own["mlp"].get(unit)
        row = {
            "task": unit,
            "metric": _metric(
                run if unit in run.results or unit in TASK_BY_COLUMN else compare, unit
            ),
            "mlp": mlp,
            "linear": own["linear"].get(unit),
            "published": published,
            "difference": None if mlp is None or published is None else mlp - published,
        }
        if other:
            row["compare_mlp"] = other["mlp"].get(unit)
            row["compare_linear"] = other["linear"].get(unit)
        rows.append(row)
    return rows


def _percent(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:+.2f}" if signed else f"{100 * value:.2f}"


def render_markdown(run: Run, rows: list[dict], compare: Run | None, audioset: dict | None) -> str:
    size = run.ced_size
    published_name = f"published CED-{size.capitalize()}" if size else "published CED"
    header = [
        "task",
        "metric",
        f"{run.label} MLP",
        f"{run.label} linear",
        published_name,
        "MLP - published",
    ]
    if compare:
        header += [f"{compare.label} MLP", f"{compare.label} linear"]
    lines = [
        f"# HEAR evaluation: {run.label}",
        "",
        "Scores in percent. MLP: heareval's downstream grid search; linear: logistic-regression "
        "probe on the same embeddings and splits. k-fold tasks: mean over folds; Beehive: mean of "
        "its two folds.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        cells = [row["task"], row["metric"], _percent(row["mlp"]), _percent(row["linear"]),
                 _percent(row["published"]), _percent(row["difference"], signed=True)]  # fmt: skip
        if compare:
            cells += [_percent(row["compare_mlp"]), _percent(row["compare_linear"])]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [name for name, r in run.results.items() if r.get("status") != "ok"]
    if failed:
        lines += ["", "Failed tasks:"]
        lines += [f"- {name}: {run.results[name].get('errors')}" for name in failed]
    if audioset:
        lines += ["", "## AudioSet-style tagging", "", "| clips | mAP | mAUC | d' |", "|---|---|---|---|",
                  f"| {audioset['clips']} | {_percent(audioset['mAP'])} | {_percent(audioset['mAUC'])} "
                  f"| {audioset['d_prime']:.3f} |"]  # fmt: skip
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

    series = [("mlp", f"{run.label} MLP"), ("linear", f"{run.label} linear"),
              ("published", "published CED")]  # fmt: skip
    if compare:
        series += [
            ("compare_mlp", f"{compare.label} MLP"),
            ("compare_linear", f"{compare.label} linear"),
        ]
    series = [(key, name) for key, name in series if any(row.get(key) is not None for row in rows)]
    height = 0.8 / max(1, len(series))
    figure, axes = plt.subplots(figsize=(9, 2.0 + 0.25 * len(rows) * max(1, len(series))))
    for offset, (key, name) in enumerate(series):
        positions = [i + offset * height for i in range(len(rows))]
        values = [100 * row[key] if row.get(key) is not None else 0.0 for row in rows]
        axes.barh(positions, values, height=height, label=name)
    axes.set_yticks([i + height * (len(series) - 1) / 2 for i in range(len(rows))])
    axes.set_yticklabels([row["task"] for row in rows])
    axes.invert_yaxis()
    axes.set_xlabel("score (%)")
    axes.set_xlim(0, 100)
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize="small")
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=100)
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


def write_report(
    run_dir: str | os.PathLike,
    compare_dir: str | os.PathLike | None = None,
    audioset_json: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
) -> dict[str, Path]:
    """Write report.md, report.csv and report.png; returns their paths."""
    run = load_run(run_dir)
    compare = load_run(compare_dir) if compare_dir else None
    audioset = load_audioset(audioset_json) if audioset_json else None
    rows = build_rows(run, compare)
    out = Path(out_dir) if out_dir else run.folder
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "report.md", "csv": out / "report.csv", "chart": out / "report.png"}
    for key, text in (
        ("markdown", render_markdown(run, rows, compare, audioset)),
        ("csv", render_csv(rows)),
    ):
        write_text_atomic(paths[key], text)
    plot(rows, run, compare, paths["chart"])
    return paths
