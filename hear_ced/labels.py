"""Class names: AudioSet's, shipped with the package, or the ones a model stores."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from hear_ced.common.tables import check_columns

log = logging.getLogger(__name__)

NUM_AUDIOSET_CLASSES = 527


@lru_cache(maxsize=1)
def audioset_labels() -> list[str]:
    """The 527 display names, in the order of the model's outputs."""
    table = resources.files("hear_ced").joinpath("data/audioset_class_labels_indices.csv")
    return read_label_file(str(table), NUM_AUDIOSET_CLASSES).names


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


@dataclass(frozen=True)
class ClassLabels:
    """A label file's classes in the model's output order, with their MIDs when it has them."""

    names: list[str]
    mids: list[str]
    path: str

    def __len__(self) -> int:
        return len(self.names)

    def index(self, label: str) -> int | None:
        """The class of a MID or a display name; None for neither."""
        for column in (self.mids, self.names):
            if label in column:
                return column.index(label)
        return None


def read_label_file(path: str | os.PathLike, num_classes: int | None = None) -> ClassLabels:
    """The classes of a label file, refused unless it names ``num_classes`` (when given).

    A file with a ``display_name`` column is a table in AudioSet's
    ``class_labels_indices.csv`` layout (CSV, or TSV for a ``.tsv`` name): an
    ``index`` column, when present, must number the rows 0, 1, ... in some
    order (the model's output order) and ``mid`` is optional. Any other file
    holds one name per line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file not found: {path}")
    lines = [line for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    if lines and "display_name" in lines[0]:
        rows = _label_rows(path, lines)
        names = [row["display_name"] for row in rows]
        mids = [row.get("mid") or "" for row in rows]
    else:
        names = [line.strip() for line in lines]
        mids = [""] * len(names)
    if not names:
        raise ValueError(f"{path} lists no classes")
    if num_classes is not None and len(names) != num_classes:
        raise ValueError(f"{path} holds {len(names)} classes; the model has {num_classes} outputs")
    return ClassLabels(names, mids, str(path))


def _label_rows(path: Path, lines: list[str]) -> list[dict[str, str]]:
    """A label table's rows, ordered by its ``index`` column when it has one."""
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.DictReader(lines, delimiter=delimiter)
    check_columns(path, list(reader.fieldnames or []), ("display_name",), delimiter)
    rows = list(reader)
    if "index" not in rows[0]:
        return rows
    try:
        order = [int(row["index"]) for row in rows]
    except ValueError as exc:
        raise ValueError(f"{path}: the index column holds a non-integer ({exc})") from exc
    if sorted(order) != list(range(len(rows))):
        raise ValueError(f"{path}: the index column must number the classes 0..{len(rows) - 1}")
    return [row for _, row in sorted(zip(order, rows, strict=True), key=lambda pair: pair[0])]


def multi_hot(indices: Iterable[int], num_classes: int) -> np.ndarray:
    """The float32 training target of a clip holding the classes ``indices``."""
    target = np.zeros(num_classes, dtype=np.float32)
    target[list(indices)] = 1.0
    return target
