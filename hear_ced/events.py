"""Sound events: onset/offset segments per class from a timeline's window probabilities.

Torch-free. Each window of a ``hear_ced.timeline.Timeline`` speaks for the
stretch of time nearest its centre: from the midpoint with the previous
window's centre to the midpoint with the next (the first from 0, the last to
the recording's end), so with a hop of H seconds an event's times fall on a
grid of H. Per class, the window probabilities are median-filtered over
``median`` windows, then thresholded with hysteresis: a run of windows at or
above ``offset_threshold`` is an event when one of them reaches
``onset_threshold``. Events of a class at most ``merge_gap`` seconds apart are
joined, and events shorter than ``min_duration`` seconds are dropped. The
output is DCASE's event list (filename, onset, offset, event_label) as TSV, or
one JSON object per file.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from hear_ced.timeline import Timeline

TSV_COLUMNS = ("filename", "onset", "offset", "event_label")


@dataclass(frozen=True)
class EventRule:
    """How window probabilities become events; the defaults are ``hear-ced tag --events``'s."""

    onset_threshold: float = 0.5
    offset_threshold: float = 0.3
    median: int = 3  # windows, odd
    min_duration: float = 0.0  # seconds
    merge_gap: float = 0.0  # seconds

    def __post_init__(self) -> None:
        if not 0 < self.onset_threshold <= 1:
            raise ValueError(f"the onset threshold must be in (0, 1], got {self.onset_threshold}")
        if not 0 < self.offset_threshold <= self.onset_threshold:
            raise ValueError(
                f"the offset threshold must be in (0, onset threshold {self.onset_threshold}], "
                f"got {self.offset_threshold}"
            )
        if self.median < 1 or self.median % 2 == 0:
            raise ValueError(f"the median filter needs an odd number of windows, got {self.median}")
        if self.min_duration < 0 or self.merge_gap < 0:
            raise ValueError(
                "the minimum duration and the merge gap must be at least 0 s, got "
                f"{self.min_duration} and {self.merge_gap}"
            )


@dataclass(frozen=True)
class Event:
    onset: float
    offset: float
    index: int
    label: str


def median_filter(values: np.ndarray, size: int) -> np.ndarray:
    """Running median of (windows, classes) over ``size`` windows, the ends repeated."""
    if size == 1:
        return values
    padded = np.pad(values, ((size // 2, size // 2), (0, 0)), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, size, axis=0)
    return np.median(windows, axis=-1)


def active_runs(probs: np.ndarray, on: float, off: float) -> list[tuple[int, int]]:
    """[first, last + 1) window ranges at or above ``off`` that reach ``on`` (hysteresis)."""
    above = np.concatenate([[False], probs >= off, [False]])
    edges = np.flatnonzero(np.diff(above.astype(np.int8)))
    return [(a, b) for a, b in zip(edges[::2], edges[1::2], strict=True) if probs[a:b].max() >= on]


def detect_events(line: Timeline, labels: list[str], rule: EventRule) -> list[Event]:
    """A recording's events, by onset, then class index."""
    centres = (line.starts + line.ends) / 2
    middles = (centres[1:] + centres[:-1]) / 2
    lows = np.concatenate([[0.0], middles])
    highs = np.concatenate([middles, [line.ends.max()]])
    smoothed = median_filter(line.probabilities, rule.median)
    events = []
    for index in np.flatnonzero(smoothed.max(axis=0) >= rule.onset_threshold):
        spans: list[list[float]] = []
        for first, stop in active_runs(
            smoothed[:, index], rule.onset_threshold, rule.offset_threshold
        ):
            onset, offset = float(lows[first]), float(highs[stop - 1])
            if spans and onset - spans[-1][1] <= rule.merge_gap:
                spans[-1][1] = offset
            else:
                spans.append([onset, offset])
        events += [
            Event(round(a, 4), round(b, 4), int(index), labels[index])
            for a, b in spans
            if b - a >= rule.min_duration
        ]
    return sorted(events, key=lambda e: (e.onset, e.index))


def events_tsv_header() -> str:
    return "\t".join(TSV_COLUMNS) + "\n"


def render_events(path: str, events: list[Event], as_json: bool) -> str:
    """A file's events as DCASE TSV rows (no header), or one JSON line."""
    if as_json:
        return json.dumps({"file": path, "events": [asdict(e) for e in events]}) + "\n"
    out = io.StringIO()
    writer = csv.writer(out, delimiter="\t", lineterminator="\n")
    writer.writerows((path, e.onset, e.offset, e.label) for e in events)
    return out.getvalue()
