"""Stored teacher top-K probabilities (stub)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch


class LogitStoreMismatch(ValueError):
    """Stored logits were made for other data or settings."""


@dataclass(frozen=True)
class LogitHeader:
    k: int
    num_classes: int
    epochs: int
    augment: dict
    teachers: list
    dataset_fingerprint: str
    run_seed: int
    n_rows: int
    world_size: int
    clip_samples: int
    format_version: int = 1


class LogitStore:
    def __init__(self, path: str | os.PathLike) -> None:
        raise NotImplementedError

    def read(self, epoch: int, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    def seeds(self, epoch: int) -> np.ndarray:
        raise NotImplementedError

    def dense_targets(self, epoch: int, indices: np.ndarray) -> torch.Tensor:
        raise NotImplementedError

    def check_matches(self, fingerprint: str, k: int | None = None, augment=None) -> None:
        raise NotImplementedError
