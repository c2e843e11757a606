"""Stored teacher top-K probabilities: the writer (resumable) and the reader.

Layout of a logits folder::

    header.json                      LogitHeader: what the logits were made from
    epoch_EEE_rank_RRR.h5            topk_values (n, K) float16, topk_indexes (n, K)
                                     int16, seeds (n,) int32 of one epoch and rank
    parts/epoch_EEE_rank_RRR/        blocks of an epoch still being written

Rank r of a run with world size W holds rows r, r + W, r + 2W, ... in that
order, so the epoch files need no per-row table: the rows are those the
header's dataset fingerprint names, in their own order. An epoch file
exists only when complete; until then finished blocks are separate files,
each written atomically, so a killed run loses at
most the block in flight.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch

from hear_ced.common.config import from_dict, to_plain
from hear_ced.common.files import (
    FolderClaimed,
    atomic_path,
    claim_folder,
    read_json,
    remove_stale_temporaries,
)
from hear_ced.distill.augment import AugmentConfig

FORMAT_VERSION = 1
HEADER_NAME = "header.json"
# Header fields a resumed store may change: where the TSV lies, the class
# names, the clip settings as given, and the epoch count (more epochs extend it).
_NOT_COMPARED = ("train_tsv", "labels", "extra", "epochs")


class LogitStoreMismatch(ValueError):
    """Stored logits were made for other data or settings."""


@dataclass(frozen=True)
class LogitHeader:
    """What a logits folder was made from; ``teachers`` entries hold name and sha256."""

    k: int
    num_classes: int
    epochs: int
    augment: dict
    teachers: list
    dataset_fingerprint: str
    run_seed: int
    n_rows: int
    world_size: int = 1
    clip_samples: int = 160_000
    block_rows: int = 1024
    train_tsv: str = ""
    format_version: int = FORMAT_VERSION
    # Class names in output order, when known; passed on to the students.
    labels: list | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.k <= self.num_classes:
            raise ValueError(f"k must be in 1..{self.num_classes}, got {self.k}")
        if self.num_classes > np.iinfo(np.int16).max + 1:
            raise ValueError("class indices are stored as int16: at most 32768 classes")
        from_dict(AugmentConfig, self.augment, "augment")


def epoch_file_name(epoch: int, rank: int) -> str:
    return f"epoch_{epoch:03d}_rank_{rank:03d}.h5"


def read_header(directory: str | os.PathLike) -> LogitHeader:
    path = Path(directory) / HEADER_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {HEADER_NAME} in {directory}: not a logits folder")
    return from_dict(LogitHeader, read_json(path))


def _compared(values: dict) -> dict:
    """What a resumed store must share with the stored one (the teachers by their sha256)."""
    header = to_plain(from_dict(LogitHeader, values))
    header["teachers"] = [t["sha256"] for t in header["teachers"]]
    return {k: v for k, v in header.items() if k not in _NOT_COMPARED}


def open_for_writing(directory: str | os.PathLike, header: LogitHeader) -> Path:
    """Create a logits folder, or check that an existing one was made with the same settings.

    More epochs than stored extend the folder: the header is rewritten with
    the new count and the stored epochs are kept (each epoch's seeds depend
    on the run seed and the epoch alone). Raises LogitStoreMismatch naming
    every differing setting, or for fewer epochs than stored.
    """
    directory = Path(directory)
    if (directory / HEADER_NAME).is_file():
        stored = read_header(directory)
        if header.epochs < stored.epochs:
            raise LogitStoreMismatch(
                f"{directory} holds {stored.epochs} epochs; --epochs {header.epochs} asks for "
                f"fewer: pass --epochs {stored.epochs} (or more, to add epochs), or --restart"
            )
    try:
        claim_folder(
            directory,
            to_plain(header),
            HEADER_NAME,
            compared=_compared,
            advice="choose another --out, or pass --restart to delete it and start over",
        )
    except FolderClaimed as err:
        raise LogitStoreMismatch(str(err)) from None
    return directory


class EpochWriter:
    """Writes one (epoch, rank) file block by block; finished blocks survive a kill."""

    def __init__(
        self, directory: str | os.PathLike, header: LogitHeader, epoch: int, rank: int = 0
    ) -> None:
        self.header = header
        self.epoch = epoch
        self.path = Path(directory) / epoch_file_name(epoch, rank)
        self.parts = Path(directory) / "parts" / self.path.stem
        self.rows = np.arange(rank, header.n_rows, header.world_size, dtype=np.int64)
        self.n_blocks = -(-len(self.rows) // header.block_rows)

    def _block_path(self, block: int) -> Path:
        return self.parts / f"block_{block:07d}.npz"

    def block_rows(self, block: int) -> np.ndarray:
        """Global row indices of a block, in stored order."""
        size = self.header.block_rows
        return self.rows[block * size : (block + 1) * size]

    def missing_blocks(self) -> list[int]:
        if self.path.is_file():
            return []
        return [b for b in range(self.n_blocks) if not self._block_path(b).is_file()]

    def write_block(
        self, block: int, values: np.ndarray, indexes: np.ndarray, seeds: np.ndarray
    ) -> None:
        """Store one block's top-K values, class indices and seeds (its rows') atomically."""
        self.parts.mkdir(parents=True, exist_ok=True)
        with atomic_path(self._block_path(block)) as tmp, open(tmp, "wb") as handle:
            np.savez(
                handle,
                values=values.astype(np.float16),
                indexes=indexes.astype(np.int16),
                seeds=seeds.astype(np.int32),
            )

    def finish(self) -> Path:
        """Join the blocks into the epoch file (temporary name, then rename)."""
        if self.path.is_file():
            return self.path
        missing = self.missing_blocks()
        if missing:
            raise RuntimeError(f"{self.path.name}: blocks {missing[:5]} ... not written yet")
        n, k = len(self.rows), self.header.k
        chunk = (min(max(n, 1), 16_384),)
        remove_stale_temporaries(self.path)  # a partial epoch file of a killed run
        with atomic_path(self.path) as tmp, h5py.File(tmp, "w") as handle:
            datasets = {
                name: handle.create_dataset(
                    name, (n, k), dtype, chunks=chunk + (k,), compression="gzip", shuffle=True
                )
                for name, dtype in (("topk_values", np.float16), ("topk_indexes", np.int16))
            }
            datasets["seeds"] = handle.create_dataset("seeds", (n,), np.int32, chunks=chunk)
            size = self.header.block_rows
            for block in range(self.n_blocks):
                with np.load(self._block_path(block)) as part:
                    span = slice(block * size, block * size + len(part["seeds"]))
                    datasets["topk_values"][span] = part["values"]
                    datasets["topk_indexes"][span] = part["indexes"]
                    datasets["seeds"][span] = part["seeds"]
            handle.attrs.update(
                epoch=self.epoch,
                world_size=self.header.world_size,
                dataset_fingerprint=self.header.dataset_fingerprint,
            )
        shutil.rmtree(self.parts, ignore_errors=True)
        with contextlib.suppress(OSError):  # other epochs may still be in progress
            self.parts.parent.rmdir()
        return self.path


class LogitStore:
    """Reads a logits folder; one epoch is held in memory at a time (about 84 bytes a row)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.header = read_header(self.path)
        self._epoch: int | None = None
        self._arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    @property
    def num_epochs(self) -> int:
        return self.header.epochs

    def complete_epochs(self) -> list[int]:
        world = self.header.world_size
        return [
            e
            for e in range(self.header.epochs)
            if all((self.path / epoch_file_name(e, r)).is_file() for r in range(world))
        ]

    def _load(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._epoch == epoch and self._arrays is not None:
            return self._arrays
        n, k, world = self.header.n_rows, self.header.k, self.header.world_size
        values = np.empty((n, k), np.float16)
        indexes = np.empty((n, k), np.int16)
        seeds = np.empty(n, np.int32)
        for rank in range(world):
            file = self.path / epoch_file_name(epoch, rank)
            if not file.is_file():
                raise FileNotFoundError(
                    f"{file} missing: save-logits has not finished epoch {epoch}"
                )
            with h5py.File(file, "r") as handle:
                values[rank::world] = handle["topk_values"][:]
                indexes[rank::world] = handle["topk_indexes"][:]
                seeds[rank::world] = handle["seeds"][:]
        self._epoch, self._arrays = epoch, (values, indexes, seeds)
        return self._arrays

    def read(self, epoch: int, indices) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-K values (n, K) float16, class indices (n, K) int16, seeds (n,) int32 of rows."""
        values, indexes, seeds = self._load(epoch)
        indices = np.asarray(indices, dtype=np.int64)
        return values[indices], indexes[indices], seeds[indices]

    def seeds(self, epoch: int) -> np.ndarray:
        return self._load(epoch)[2].copy()

    def dense_targets(self, epoch: int, indices) -> torch.Tensor:
        """(n, classes) float32 teacher probabilities, zero outside each row's top-K."""
        values, indexes, _ = self.read(epoch, indices)
        targets = torch.zeros(len(values), self.header.num_classes)
        targets.scatter_(
            1,
            torch.from_numpy(indexes.astype(np.int64)),
            torch.from_numpy(values.astype(np.float32)),
        )
        return targets

    def mismatches(self, fingerprint: str, augment: AugmentConfig | None = None) -> list[str]:
        """Every way the store differs from the rows (and, when given, the augmentation) asked for."""
        problems = []
        if fingerprint != self.header.dataset_fingerprint:
            problems.append(
                "the training rows differ from the rows the logits were made for "
                f"(fingerprint {fingerprint[:12]} vs stored {self.header.dataset_fingerprint[:12]})"
            )
        wanted = {} if augment is None else to_plain(augment)
        changed = sorted(
            f"{key} (stored {self.header.augment.get(key)!r}, wanted {value!r})"
            for key, value in wanted.items()
            if value != self.header.augment.get(key)
        )
        if changed:
            problems.append(f"augmentation differs from the stored one in {', '.join(changed)}")
        return problems

    def bytes_on_disk(self) -> dict[str, int]:
        """Sizes: all epoch files together, and the whole folder."""
        epoch_bytes = sum(p.stat().st_size for p in self.path.glob("epoch_*_rank_*.h5"))
        total = sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())
        return {"epoch_files": epoch_bytes, "total": total}
