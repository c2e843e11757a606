"""Which classes to report for a clip, and the text, JSON and CSV they are printed as.

Torch-free: it takes probabilities as plain arrays, whatever computed them.
One schema for every output: a tag is ``{"index", "label", "probability"}``;
a file is ``{"file", "tags"}``, or with a timeline ``{"file", "windows"}``,
each window ``{"start", "end", "tags"}`` (``listen`` prints the windows).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

Format = Literal["text", "json", "csv"]
# Clips (or timeline windows) per model call.
DEFAULT_BATCH_SIZE = 16
# How many classes a file reports when neither --top nor --threshold says.
DEFAULT_TOP = 5
CSV_COLUMNS = ("file", "rank", "index", "label", "probability")
TIMELINE_CSV_COLUMNS = ("file", "start", "end", "rank", "index", "label", "probability")


@dataclass(frozen=True)
class Tag:
    index: int
    label: str
    probability: float


def select_tags(
    probabilities: Sequence[float] | np.ndarray,
    labels: Sequence[str],
    top: int | None = DEFAULT_TOP,
    threshold: float | None = None,
) -> list[Tag]:
    """The classes at or above ``threshold``, at most ``top`` of them, most probable first.

    ``top=None`` means no limit on the count (all classes at or above the
    threshold); ties keep the class order.
    """
    probs = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    order = np.argsort(-probs, kind="stable")
    if threshold is not None:
        order = order[probs[order] >= threshold]
    if top is not None:
        order = order[:top]
    return [Tag(int(i), labels[i], float(probs[i])) for i in order]


Window = tuple[float, float, list[Tag]]  # start s, end s, tags


def window_record(start: float, end: float, tags: list[Tag]) -> dict:
    """One window as JSON: its times in seconds and its tags."""
    return {"start": round(start, 4), "end": round(end, 4), "tags": [asdict(t) for t in tags]}


def window_line(start: float, end: float, tags: list[Tag]) -> str:
    """One window as a line of text: times, then the tags."""
    labels = "  ".join(f"{t.probability:.3f} {t.label}" for t in tags)
    return f"{start:9.2f} {end:9.2f}  {labels}"


def _csv(rows: Iterable[Sequence]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def csv_header(timeline: bool) -> str:
    return _csv([TIMELINE_CSV_COLUMNS if timeline else CSV_COLUMNS])


def render_tags(path: str, tags: list[Tag], fmt: Format) -> str:
    """A file's tags as text (its name, then a line per tag), one JSON line or CSV rows.

    CSV gives no row to a file without tags (none at or above the threshold).
    """
    if fmt == "json":
        return json.dumps({"file": path, "tags": [asdict(t) for t in tags]}) + "\n"
    if fmt == "csv":
        return _csv((path, rank, t.index, t.label, t.probability) for rank, t in enumerate(tags, 1))
    return "".join([f"{path}\n"] + [f"  {t.probability:6.3f}  {t.label}\n" for t in tags])


def render_timeline(path: str, windows: list[Window], fmt: Format) -> str:
    """A file's windows as text (its name, then a line per window), one JSON line or CSV rows."""
    if fmt == "json":
        records = [window_record(start, end, tags) for start, end, tags in windows]
        return json.dumps({"file": path, "windows": records}) + "\n"
    if fmt == "csv":
        return _csv(
            (path, round(start, 4), round(end, 4), rank, t.index, t.label, t.probability)
            for start, end, tags in windows
            for rank, t in enumerate(tags, 1)
        )
    return "".join([f"{path}\n"] + [window_line(*w) + "\n" for w in windows])
