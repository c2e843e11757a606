"""save-logits and verify-logits (stub)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from distill.augment import AugmentConfig


@dataclass
class SaveLogitsConfig:
    teachers: list[str]
    train_tsv: str
    out_dir: str
    k: int = 20
    epochs: int = 10
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    batch_size: int = 32
    run_seed: int = 0
    clip_seconds: float = 10.0
    min_chunk_seconds: float = 1.0
    num_workers: int = 0
    block_rows: int = 1024
    device: str = "cpu"


@dataclass(frozen=True)
class SaveLogitsResult:
    path: Path
    n_rows: int
    epochs: int
    bytes_per_sample_epoch: float


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    checked: int
    mismatches: list


def save_logits(cfg: SaveLogitsConfig) -> SaveLogitsResult:
    raise NotImplementedError


def verify_logits(logits_dir: str | os.PathLike, n_rows: int = 64, seed: int = 0) -> VerifyReport:
    raise NotImplementedError
