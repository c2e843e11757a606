"""Audio data: wav lists -> HDF5 shards and row tables.

Layout written by ``prepare`` (the original CED layout)::

    outdir/hdf5/<list>_00000.h5    one int16 dataset per file, named by basename
    outdir/labels/<list>.tsv       the input table plus an ``hdf5path`` column

Relative ``filename`` and ``hdf5path`` entries of a table are resolved
against the table's own folder, so a prepared folder can be moved.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from hear_ced.audio import read_clip
from hear_ced.common.files import atomic_path, remove_stale_temporaries, write_bytes
from hear_ced.common.logs import Progress, progress_bar
from hear_ced.common.tables import check_columns
from hear_ced.frontend import SAMPLE_RATE
from hear_ced.labels import NUM_AUDIOSET_CLASSES, ClassLabels, multi_hot, read_label_file

log = logging.getLogger(__name__)

INT16_SCALE = 32768.0
LOAD_WINDOW = 64
# A corpus declares its classes in a file of this name beside its lists
# (``synth`` writes one; ``prepare`` copies it beside the prepared list).
CLASS_LABELS_NAME = "class_labels_indices.csv"
AUDIOSET_CLASS_LABELS = Path(
    str(resources.files("hear_ced").joinpath("data/audioset_class_labels_indices.csv"))
)


@dataclass(frozen=True)
class PrepareResult:
    """What ``prepare`` did: the labels TSV to train from and what it left out."""

    labels_tsv: Path
    n_written: int
    skipped: list[tuple[str, str]]
    shards: list[Path]


@dataclass(frozen=True)
class Row:
    """A training row: samples [start, end) of one file stored in an HDF5 shard."""

    filename: str
    hdf5path: str
    start: int
    end: int
    labels: str = ""

    @property
    def key(self) -> str:
        """The file's dataset name inside the shard."""
        return os.path.basename(self.filename)


def read_table(path: str | os.PathLike, required: Sequence[str] = ("filename",)) -> pd.DataFrame:
    """A tab-separated table as strings, with relative paths made absolute.

    Raises a ValueError naming the file and the missing columns, or the
    FileNotFoundError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"table not found: {path}")
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot parse {path} as a tab-separated table: {exc}") from exc
    check_columns(path, list(table.columns), required, "\t")
    base = path.resolve().parent
    for column in ("filename", "hdf5path"):
        if column in table.columns:
            table[column] = [
                p if not p or os.path.isabs(p) else os.path.normpath(base / p)
                for p in table[column]
            ]
    return table


def usable_workers(requested: int, key: str) -> int:
    """Data-loading workers: ``requested``, at most one per CPU core this process may use.

    Lowered with a warning rather than refused: the worker count changes no
    result (every row's input is a function of its seed), only the speed,
    and a recipe written for a large machine should still run on a laptop.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    if requested > cores:
        log.warning(
            "%s=%d exceeds the %d usable CPU core(s); using %d", key, requested, cores, cores
        )
        return cores
    return requested


def try_load(filename: str) -> tuple[np.ndarray | None, str]:
    """``read_clip``'s audio or (None, reason): one bad file must not end a long run."""
    try:
        return read_clip(filename), ""
    except Exception as exc:  # any decoder or resampler failure is reported per file
        return None, f"{type(exc).__name__}: {exc}"


def _finished_shard(path: Path, digest: str) -> list[tuple[str, str]]:
    """Skipped files recorded in a shard written earlier for the same file list."""
    with h5py.File(path, "r") as shard:
        if shard.attrs.get("source_digest") != digest:
            raise ValueError(
                f"{path} was written for a different file list; remove it or choose another outdir"
            )
        return [tuple(item) for item in json.loads(shard.attrs["skipped"])]


def _write_shard(
    path: Path,
    items: list[tuple[str, str]],
    digest: str,
    workers: int,
    bar: Progress,
) -> list[tuple[str, str]]:
    """Write one shard atomically: it exists only once complete."""
    skipped: list[tuple[str, str]] = []
    remove_stale_temporaries(path)  # a partial shard of a killed run
    with (
        atomic_path(path) as tmp,
        ThreadPoolExecutor(max(1, workers)) as pool,
        h5py.File(tmp, "w") as shard,
    ):
        # Decoding runs ahead of writing by at most one window, bounding memory.
        for lo in range(0, len(items), LOAD_WINDOW):
            window = items[lo : lo + LOAD_WINDOW]
            loaded = pool.map(lambda item: try_load(item[0]), window)
            for (filename, key), (audio, reason) in zip(window, loaded, strict=True):
                if audio is None:
                    skipped.append((filename, reason))
                else:
                    # float [-1, 1] -> int16: value * 32768, rounded, clipped
                    int16 = np.clip(np.rint(audio * INT16_SCALE), -32768, 32767)
                    shard.create_dataset(key, data=int16.astype(np.int16))
                bar.update()
        shard.attrs["source_digest"] = digest
        shard.attrs["sample_rate"] = SAMPLE_RATE
        shard.attrs["skipped"] = json.dumps(skipped)
    return skipped


def write_table_atomic(table: pd.DataFrame, path: Path) -> None:
    """A table as TSV, the format ``read_table`` reads."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False)


def prepare(
    wavlist_tsv: str | os.PathLike,
    outdir: str | os.PathLike,
    shard_size: int = 50_000,
    workers: int = 4,
    progress: bool = True,
) -> PrepareResult:
    """Pack the files of a wav list (column ``filename``) into int16 HDF5 shards.

    Audio is down-mixed and resampled to 16 kHz. Unreadable, empty
    or duplicate-named files are skipped and reported (a long batch job over
    a large corpus, of which a few broken downloads are expected). A
    ``class_labels_indices.csv`` beside the list is copied beside the
    prepared list, where training and evaluation look for the class names. Each shard is written
    to a temporary name and renamed when complete, so re-running after a
    crash keeps the finished shards and redoes only the rest.
    """
    if shard_size <= 0:
        raise ValueError("shard_size must be positive")
    wavlist_tsv = Path(wavlist_tsv)
    table = read_table(wavlist_tsv)
    outdir = Path(outdir).resolve()
    (outdir / "hdf5").mkdir(parents=True, exist_ok=True)
    (outdir / "labels").mkdir(parents=True, exist_ok=True)
    filenames = list(table["filename"])
    keys = [os.path.basename(f) for f in filenames]
    first_of: dict[str, int] = {}
    duplicate = [first_of.setdefault(key, i) != i for i, key in enumerate(keys)]
    skipped: list[tuple[str, str]] = []
    shard_of = np.full(len(table), -1)
    shards = []
    with progress_bar(
        total=len(table), desc="prepare", unit="file", logger=log, disable=not progress
    ) as bar:
        for index, lo in enumerate(range(0, len(table), shard_size)):
            hi = min(lo + shard_size, len(table))
            path = outdir / "hdf5" / f"{wavlist_tsv.stem}_{index:05d}.h5"
            for i in range(lo, hi):
                if duplicate[i]:
                    skipped.append(
                        (filenames[i], f"duplicate basename of {filenames[first_of[keys[i]]]}")
                    )
            items = [(filenames[i], keys[i]) for i in range(lo, hi) if not duplicate[i]]
            listed = "\n".join(f"{f}\t{SAMPLE_RATE}" for f, _ in items)
            digest = hashlib.sha256(listed.encode()).hexdigest()
            if path.exists():
                shard_skipped = _finished_shard(path, digest)
                bar.update(hi - lo)
            else:
                shard_skipped = _write_shard(path, items, digest, workers, bar)
            skipped += shard_skipped
            bad = {f for f, _ in shard_skipped}
            for i in range(lo, hi):
                if not duplicate[i] and filenames[i] not in bad:
                    shard_of[i] = index
            shards.append(path)
    keep = shard_of >= 0
    labels_dir = outdir / "labels"
    written = table[keep].copy()
    written["hdf5path"] = [os.path.relpath(shards[s], labels_dir) for s in shard_of[keep]]
    labels_tsv = labels_dir / f"{wavlist_tsv.stem}.tsv"
    write_table_atomic(written, labels_tsv)
    declared = wavlist_tsv.parent / CLASS_LABELS_NAME
    if declared.is_file():  # the corpus's classes travel with its prepared lists
        write_bytes(labels_dir / CLASS_LABELS_NAME, declared.read_bytes())
    return PrepareResult(labels_tsv, int(keep.sum()), skipped, shards)


class AudioStore:
    """Reads samples from HDF5 shards, keeping one open handle per shard and process.

    Handles are reopened after a fork (DataLoader workers) and never pickled.
    """

    def __init__(self) -> None:
        self._files: dict[str, h5py.File] = {}
        self._pid = os.getpid()

    def _dataset(self, hdf5path: str, key: str) -> h5py.Dataset:
        if self._pid != os.getpid():
            self._files, self._pid = {}, os.getpid()
        shard = self._files.get(hdf5path)
        if shard is None:
            try:
                shard = h5py.File(hdf5path, "r")
            except OSError as exc:
                raise FileNotFoundError(f"cannot open HDF5 shard {hdf5path}: {exc}") from exc
            self._files[hdf5path] = shard
        if key not in shard:
            raise KeyError(f"{key!r} is not in shard {hdf5path}")
        return shard[key]

    def length(self, hdf5path: str, key: str) -> int:
        return int(self._dataset(hdf5path, key).shape[0])

    def read(self, hdf5path: str, key: str, start: int = 0, end: int | None = None) -> np.ndarray:
        """Samples [start, end) as float32 (int16 / 32768)."""
        return self._dataset(hdf5path, key)[start:end].astype(np.float32) / INT16_SCALE

    def close(self) -> None:
        for shard in self._files.values():
            shard.close()
        self._files = {}

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()


def chunk_rows(
    table: pd.DataFrame,
    chunk_seconds: float = 10.0,
    min_seconds: float = 1.0,
    store: AudioStore | None = None,
) -> list[Row]:
    """Cut every file of a prepared table (with ``hdf5path``) into rows of ``chunk_seconds``.

    Every chunk is kept except trailing ones shorter than ``min_seconds``
    (the original stopped at the first chunk shorter than 5 s instead). The
    columns and lengths were checked where the user gave them (``read_table``,
    the commands' configs).
    """
    store = store or AudioStore()
    chunk = int(round(chunk_seconds * SAMPLE_RATE))
    minimum = int(round(min_seconds * SAMPLE_RATE))
    labels = table["labels"] if "labels" in table.columns else [""] * len(table)
    rows = []
    for filename, hdf5path, label in zip(table["filename"], table["hdf5path"], labels, strict=True):
        n = store.length(hdf5path, os.path.basename(filename))
        for start in range(0, n, chunk):
            end = min(start + chunk, n)
            if start == 0 or end - start >= minimum:  # the first chunk keeps short clips in
                rows.append(Row(filename, hdf5path, start, end, label))
    return rows


def dataset_fingerprint(rows: Sequence[Row]) -> str:
    """sha256 over (basename, start, end) of every row: the identity of a row list.

    Paths are left out so moving a prepared folder keeps stored logits valid.
    """
    digest = hashlib.sha256()
    for row in rows:
        digest.update(f"{row.key}\t{row.start}\t{row.end}\n".encode())
    return digest.hexdigest()


def class_labels_for(
    setting: str | None,
    table: str | os.PathLike | None,
    num_classes: int,
    key: str,
    stored: Sequence[str] | None = None,
    stored_in: str = "",
) -> ClassLabels | None:
    """The classes of a run: the ``key`` setting, else the corpus's label file, else AudioSet's.

    The corpus's file is ``class_labels_indices.csv`` beside ``table``;
    AudioSet's shipped list applies to a 527-class model; else the names
    ``stored`` with the models (a checkpoint's, the teachers', a logit
    store's), named by ``stored_in``. A label file of another class count
    than the model's is refused, naming ``key``.
    """
    beside = Path(table).parent / CLASS_LABELS_NAME if table else None
    if setting:
        path = Path(setting)
        if not path.is_file():
            raise FileNotFoundError(f"{key}: label file not found: {path}")
    elif beside is not None and beside.is_file():
        path = beside
    elif num_classes == NUM_AUDIOSET_CLASSES:
        path = AUDIOSET_CLASS_LABELS
    elif stored:
        return ClassLabels(list(stored), [""] * len(stored), stored_in)
    else:
        return None
    try:
        return read_label_file(path, num_classes)
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None


def table_targets(
    labels: Sequence[str], num_classes: int, classes: ClassLabels | None, where: Sequence[str]
) -> np.ndarray:
    """(rows, classes) multi-hot targets of a table's ``labels`` cells (``"3;17"``).

    With ``classes``, a label may also be a MID (``/m/09x0r``) or a display
    name (``Speech``) of that label file. An unknown label names ``where[i]``, its row.
    """
    targets = np.zeros((len(labels), num_classes), dtype=np.float32)
    known = f", a MID or a display name in {classes.path}" if classes else ""
    for i, cell in enumerate(labels):
        indices = []
        for part in filter(None, (p.strip() for p in str(cell).split(";"))):
            index = int(part) if part.isdigit() else classes.index(part) if classes else None
            if index is None or index >= num_classes:
                raise ValueError(
                    f"{where[i]}: label {part!r} is not a class index in 0..{num_classes - 1}{known}"
                )
            indices.append(index)
        targets[i] = multi_hot(indices, num_classes)
    return targets
