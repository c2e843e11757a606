"""One row for the HEAR 2021 leaderboard CSV from a ``ced-eval hear`` run.

The leaderboard reports heareval's downstream (MLP) score of every task as a
fraction, Beehive as the mean of its two folds, in a fixed column order
(:data:`hear_ced.eval.tasks.LEADERBOARD_COLUMNS`). A task that is missing or failed
makes the row incomplete; such a row is refused unless explicitly allowed,
and then the cell is left blank. A run without any task's score gives no row.

A row describes the model as submitted, under either embedding method: the
module's ``default`` one or the original wrapper's ``published`` one. Both are
legitimate rows, so neither is refused; a row from the ``published`` method
(or any other non-default one) comes with a note naming it
(:func:`method_note`), since the leaderboard's columns cannot record it.
"""

from __future__ import annotations

import csv
import datetime
import io
import os

from hear_ced.eval.report import Run, load_run, unit_scores
from hear_ced.eval.tasks import HEAR_TASKS, LEADERBOARD_COLUMNS


class LeaderboardError(ValueError):
    """The run cannot give a complete leaderboard row."""


def leaderboard_row(
    run_dir: str | os.PathLike,
    name: str,
    url: str,
    date: str | None = None,
    allow_partial: bool = False,
) -> dict[str, str]:
    """The row as column -> cell text."""
    if not name.strip():
        raise LeaderboardError("the row needs a model name")
    date = date or datetime.date.today().isoformat()
    try:
        datetime.date.fromisoformat(date)
    except ValueError as exc:
        raise LeaderboardError(f"date {date!r} is not YYYY-MM-DD") from exc
    scores = unit_scores(load_run(run_dir), "mlp")
    missing = [task.column for task in HEAR_TASKS if scores.get(task.column) is None]
    if len(missing) == len(HEAR_TASKS):
        raise LeaderboardError(
            f"{run_dir} has a score for none of the {len(HEAR_TASKS)} tasks: no row to write"
        )
    if missing and not allow_partial:
        raise LeaderboardError(
            f"{len(missing)} of {len(HEAR_TASKS)} tasks missing or failed: {', '.join(missing)} "
            "(evaluate them, or pass --allow-partial to leave them blank)"
        )
    row = {"Model": name, "URL": url, "Submission Date": date}
    for task in HEAR_TASKS:
        score = scores.get(task.column)
        row[task.column] = "" if score is None else f"{score:.4f}"
    return row


def method_note(run: Run) -> str | None:
    """What to tell the submitter about the run's embedding method (None for the default)."""
    if run.embedding_method == "default":
        return None
    return (
        f"note: these scores come from the {run.embedding_method!r} embedding method of "
        f"{run.module}, not its default one; say so in the submission"
    )


def render_row(row: dict[str, str], header: bool = True) -> str:
    """CSV text in the leaderboard's column order (quoted where needed)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(LEADERBOARD_COLUMNS), lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerow(row)
    return buffer.getvalue()
