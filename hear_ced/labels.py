"""Class names: AudioSet's, shipped with the package, or the ones a model stores."""

from __future__ import annotations

import csv
import logging
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path

log = logging.getLogger(__name__)

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


def known_class_names(stored: list[str] | None, num_classes: int) -> list[str] | None:
    """A model's class names when they are known: its own, or AudioSet's for 527 outputs."""
    if stored is not None:
        if len(stored) != num_classes:
            raise ValueError(
                f"the model has {num_classes} outputs but stores {len(stored)} class names"
            )
        return list(stored)
    return audioset_labels() if num_classes == NUM_AUDIOSET_CLASSES else None


def class_names(stored: list[str] | None, num_classes: int) -> list[str]:
    """The names to print for a model's outputs: ``known_class_names``, else ``class 0`` ...

    A model that stores no names and has another class count than AudioSet's
    (a distilled student, say) still tags, under numbered names, with one
    warning saying why.
    """
    names = known_class_names(stored, num_classes)
    if names is not None:
        return names
    log.warning(
        "the model stores no class names and has %d outputs, not AudioSet's %d; "
        "printing them as 'class 0' .. 'class %d'",
        num_classes,
        NUM_AUDIOSET_CLASSES,
        num_classes - 1,
    )
    return [f"class {i}" for i in range(num_classes)]


def read_label_file(path: str | os.PathLike, num_classes: int) -> list[str]:
    """Class names from a file: a CSV with a ``display_name`` column (AudioSet's
    ``class_labels_indices.csv`` layout, ordered by its ``index`` column when it
    has one), else one name per line. Refused unless it names every output once."""
    text = Path(path).read_text(encoding="utf-8-sig")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines and "display_name" in next(csv.reader(lines[:1])):
        rows = list(csv.DictReader(lines))
        if rows and "index" in rows[0]:
            try:
                rows.sort(key=lambda row: int(row["index"]))
            except ValueError as exc:
                raise ValueError(f"{path}: its index column is not whole numbers") from exc
        names = [row["display_name"] for row in rows]
    else:
        names = lines
    if len(names) != num_classes:
        raise ValueError(
            f"{path} holds {len(names)} class names; the model has {num_classes} outputs"
        )
    return names
