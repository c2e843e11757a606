"""A procedurally generated, AudioSet-like multi-label corpus (stub)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SYNTH_CLASSES: list[str] = []


@dataclass(frozen=True)
class Event:
    """One sound event in a clip: class and its time span in seconds."""

    class_index: int
    onset_s: float
    offset_s: float


@dataclass(frozen=True)
class SynthCorpus:
    """Paths written by ``synthesize``."""

    root: Path
    train_tsv: Path
    eval_tsv: Path
    class_labels_csv: Path
    n_train: int
    n_eval: int


def render_event(
    class_index: int, duration_s: float, rng: np.random.Generator, sample_rate: int = 16000
) -> np.ndarray:
    """One event of a class, float32 mono, peak-normalised, with soft edges."""
    raise NotImplementedError


def render_clip(
    rng: np.random.Generator,
    duration_s: float,
    n_events: tuple[int, int] = (1, 3),
    snr_db: tuple[float, float] = (0.0, 20.0),
    sample_rate: int = 16000,
    classes: list[int] | None = None,
) -> tuple[np.ndarray, list[Event]]:
    """A clip of 1-3 events over background noise; returns (wave, events)."""
    raise NotImplementedError


def synthesize(
    outdir: str | os.PathLike,
    n_train: int,
    n_eval: int,
    clip_seconds: float = 10.0,
    seed: int = 0,
) -> SynthCorpus:
    """Write wav files, train.tsv / eval.tsv and class_labels_indices.csv."""
    raise NotImplementedError
