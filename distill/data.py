"""Audio data: wav lists -> HDF5 shards, row tables, augmented clips (stub)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from distill.augment import AugmentConfig


@dataclass(frozen=True)
class PrepareResult:
    labels_tsv: Path
    n_written: int
    skipped: list[tuple[str, str]]
    shards: list[Path]


@dataclass(frozen=True)
class Row:
    """A training row: samples [start, end) of one file in an HDF5 shard."""

    filename: str
    hdf5path: str
    start: int
    end: int

    @property
    def key(self) -> str:
        return os.path.basename(self.filename)


def read_table(path: str | os.PathLike, required: Sequence[str] = ("filename",)) -> pd.DataFrame:
    raise NotImplementedError


def prepare(
    wavlist_tsv: str | os.PathLike,
    outdir: str | os.PathLike,
    shard_size: int = 50_000,
    sample_rate: int = 16_000,
) -> PrepareResult:
    raise NotImplementedError


class AudioStore:
    def read(self, hdf5path: str, key: str, start: int = 0, end: int | None = None) -> np.ndarray:
        raise NotImplementedError


def chunk_rows(
    table: pd.DataFrame, chunk_seconds: float = 10.0, min_seconds: float = 1.0
) -> list[Row]:
    raise NotImplementedError


def dataset_fingerprint(rows: Sequence[Row]) -> str:
    raise NotImplementedError


def multi_hot(labels: str, num_classes: int) -> np.ndarray:
    raise NotImplementedError


class AugmentedClips(torch.utils.data.Dataset):
    def __init__(
        self,
        rows: Sequence[Row],
        store: AudioStore,
        seeds: np.ndarray | None,
        augment: AugmentConfig,
        clip_samples: int,
    ) -> None:
        raise NotImplementedError
