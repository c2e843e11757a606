"""AudioSet class names, shipped with the package."""

from __future__ import annotations

import csv
from functools import lru_cache
from importlib import resources

NUM_AUDIOSET_CLASSES = 527


@lru_cache(maxsize=1)
def audioset_labels() -> list[str]:
    """The 527 display names, in the order of the model's outputs."""
    text = (
        resources.files("hear_ced").joinpath("data/audioset_class_labels_indices.csv").read_text()
    )
    rows = list(csv.DictReader(text.splitlines()))
    labels = [row["display_name"] for row in sorted(rows, key=lambda r: int(r["index"]))]
    if len(labels) != NUM_AUDIOSET_CLASSES:
        raise RuntimeError(f"class list holds {len(labels)} names, expected {NUM_AUDIOSET_CLASSES}")
    return labels
