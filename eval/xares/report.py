"""The X-ARES report of a run: one row per task, beside the published X-ARES scores.

Published scores, by X-ARES task name: the X-ARES README (github.com/jimbozhang/xares,
commit 161f0ef of 2025-09-02), "MLP Result" and "kNN Result" tables, column ``dasheng``
(the benchmark's baseline encoder). LibriSpeech-100h's MLP score is the one the README
gives for v0.1.3, the X-ARES version this project runs. X-ARES publishes no scores for
CED.
"""

from __future__ import annotations

from pathlib import Path

from hear_ced.common.files import write_text
from hear_ced.common.tables import csv_text, markdown_table

SOURCE = "X-ARES README (github.com/jimbozhang/xares @ 161f0ef, 2025-09-02), dasheng baseline"
BASELINE = "dasheng"

MLP = {
    "asvspoof2015": 0.964, "clotho": 0.029, "cremad": 0.767, "desed": 0.537, "esc50": 0.857,
    "fluentspeechcommands": 0.946, "freemusicarchive": 0.643, "fsd50k": 0.409,
    "fsdkaggle2018": 0.534, "gtzan_genre": 0.851, "libricount": 0.681, "librispeech": 0.724,
    "librispeechmalefemale": 0.986, "maestro": 0.524, "nsynthinstument": 0.688, "ravdess": 0.749,
    "speechcommandsv1": 0.969, "urbansound8k": 0.833, "vocalimitations": 0.253,
    "vocalsound": 0.910, "voxceleb1": 0.780, "voxlingua33": 0.814, "key_scratching": 0.999,
    "finger_snap": 0.870, "inside_outside_car": 0.972, "liveenv": 0.986,
    "subway_broadcast": 0.972,
}  # fmt: skip

KNN = {
    "asvspoof2015": 0.869, "cremad": 0.380, "esc50": 0.618, "fluentspeechcommands": 0.260,
    "freemusicarchive": 0.592, "gtzan_genre": 0.758, "libricount": 0.311,
    "librispeechmalefemale": 0.791, "nsynthinstument": 0.499, "ravdess": 0.408,
    "speechcommandsv1": 0.903, "urbansound8k": 0.662, "vocalimitations": 0.107,
    "vocalsound": 0.382, "voxceleb1": 0.262, "voxlingua33": 0.376, "key_scratching": 0.955,
    "finger_snap": 0.848, "inside_outside_car": 0.798, "subway_broadcast": 0.949,
}  # fmt: skip

COLUMNS = ("task", "X-ARES task", "metric", "MLP", "kNN", f"{BASELINE} MLP", f"{BASELINE} kNN",
           "status")  # fmt: skip


def rows(results: list[dict]) -> list[tuple]:
    """Scores as X-ARES reports them (fractions); blank where there is none."""
    table = []
    for result in results:
        name = result.get("name") or ""
        table.append((
            result["task"], result.get("formal_name") or name, result.get("metric") or "",
            _score(result.get("mlp")), _score(result.get("knn")),
            _score(MLP.get(name)), _score(KNN.get(name)), result["status"],
        ))  # fmt: skip
    return table


def write_report(out: Path, results: list[dict]) -> dict[str, Path]:
    """``report.md`` and ``report.csv`` in ``out``; returns their paths."""
    table = rows(results)
    failed = [r for r in results if r["status"] != "ok"]
    markdown = "\n\n".join(
        [
            "# X-ARES",
            markdown_table(COLUMNS, table, align="lllrrrrl"),
            f"Published scores: {SOURCE}.",
        ]
    )
    if failed:
        markdown += "\n\nFailed tasks:\n\n" + "\n".join(
            f"- {r['task']}: {r.get('error')}" for r in failed
        )
    return {
        "markdown": write_text(out / "report.md", markdown + "\n"),
        "csv": write_text(out / "report.csv", csv_text(COLUMNS, table)),
    }


def _score(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"
