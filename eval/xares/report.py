"""The X-ARES report of a run: one row per task, beside the published X-ARES scores."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ced_common.files import write_text
from ced_common.tables import markdown_table
from eval.xares import published

COLUMNS = ("task", "X-ARES task", "metric", "MLP", "kNN", f"{published.BASELINE} MLP",
           f"{published.BASELINE} kNN", "CED (published)", "status")  # fmt: skip


def rows(results: list[dict]) -> list[tuple]:
    """Scores as X-ARES reports them (fractions); blank where there is none."""
    table = []
    for result in results:
        name = result.get("name") or ""
        table.append((
            result["task"], result.get("formal_name") or name, result.get("metric") or "",
            _score(result.get("mlp")), _score(result.get("knn")),
            _score(published.MLP.get(name)), _score(published.KNN.get(name)),
            "",  # X-ARES publishes no CED scores
            result["status"],
        ))  # fmt: skip
    return table


def write_report(out: Path, results: list[dict]) -> dict[str, Path]:
    """``report.md`` and ``report.csv`` in ``out``; returns their paths."""
    table = rows(results)
    failed = [r for r in results if r["status"] != "ok"]
    notes = [
        f"Published scores: {published.SOURCE}. X-ARES publishes no CED scores; "
        "that column is empty.",
    ] + [f"- {r['task']}: {r.get('error')}" for r in failed]
    markdown = "\n\n".join(
        ["# X-ARES", markdown_table(COLUMNS, table, align="lllrrrrrl"), *notes[:1]]
    )
    if failed:
        markdown += "\n\nFailed tasks:\n\n" + "\n".join(notes[1:])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(table)
    return {
        "markdown": write_text(out / "report.md", markdown + "\n"),
        "csv": write_text(out / "report.csv", buffer.getvalue()),
    }


def _score(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"
