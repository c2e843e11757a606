"""The consistency invariant: what a model sees of row ``i`` in epoch ``e``.

Consistent teaching only works if the teachers (``save-logits``), the
checker (``verify-logits``), the student (``train``) and the benchmarks build
the augmented view of a row in exactly the same way. Every one of them gets
its rows, its clip length, its seeded dataset and its augmented log-mel from
this module, so there is a single definition to keep right:

1. rows: the prepared table cut into ``clip_seconds`` chunks (``load_rows``);
2. the clip length in samples (``clip_samples``);
3. the wave view (``AugmentedClips``): the row's samples, consistent mixup
   with the partner row and weight derived from the row's seed, then the
   seeded shift;
4. the spectrogram view (``augmented_mel``): the model's log-mel of that wave,
   then the seeded time and frequency masks.

The per-row seeds of an epoch come from ``hear_ced.distill.augment.epoch_seeds`` when
logits are stored and from the logit store when the student trains.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import torch

from hear_ced.distill.augment import AugmentConfig, mixup_partner, shift_wave, spec_augment
from hear_ced.distill.data import AudioStore, Row, chunk_rows, read_table
from hear_ced.frontend import SAMPLE_RATE


def clip_samples(seconds: float) -> int:
    """Samples of a clip of ``seconds`` (positive: the commands' configs check it) at 16 kHz."""
    return int(round(seconds * SAMPLE_RATE))


def load_rows(
    tsv: str | os.PathLike,
    clip_seconds: float,
    min_chunk_seconds: float,
    required: Sequence[str] = ("filename", "hdf5path"),
) -> list[Row]:
    """The rows of a prepared table: every file cut into ``clip_seconds`` chunks."""
    table = read_table(tsv, required=tuple(required))
    return chunk_rows(table, chunk_seconds=clip_seconds, min_seconds=min_chunk_seconds)


class AugmentedClips(torch.utils.data.Dataset):
    """Rows as fixed-length waves with seeded wave-level augmentation applied.

    Item: ``{"wave": float32 (clip_samples,), "seed": int64, "index": int,
    "partner": int, "lam": float}``: consistent mixup (partner and lambda
    from the seed; wave = lam * own + (1 - lam) * partner) then the shift.
    ``clip(i)`` is row ``i`` un-augmented. Rows longer than ``clip_samples``
    are cut to their start, shorter ones zero-padded.
    """

    def __init__(
        self,
        rows: Sequence[Row],
        store: AudioStore,
        seeds: np.ndarray,
        augment: AugmentConfig,
        clip_samples: int,
    ) -> None:
        self.rows = list(rows)
        self.store = store
        self.seeds = np.asarray(seeds, dtype=np.int64)
        self.augment = augment
        self.clip_samples = clip_samples

    def __len__(self) -> int:
        return len(self.rows)

    def clip(self, index: int) -> np.ndarray:
        row = self.rows[index]
        end = min(row.end, row.start + self.clip_samples)
        wave = self.store.read(row.hdf5path, row.key, row.start, end)
        return np.pad(wave, (0, self.clip_samples - wave.shape[0]))

    def __getitem__(self, index: int) -> dict:
        wave = self.clip(index)
        seed = int(self.seeds[index])
        partner, lam = mixup_partner(seed, len(self.rows), self.augment)
        if partner >= 0:
            wave = (lam * wave + (1.0 - lam) * self.clip(partner)).astype(np.float32)
        wave = shift_wave(wave, seed, self.augment)
        return {"wave": wave, "seed": seed, "index": index, "partner": partner, "lam": lam}


@torch.no_grad()
def augmented_mel(
    frontend: Callable[[torch.Tensor], torch.Tensor],
    wave: torch.Tensor,
    seeds: torch.Tensor,
    augment: AugmentConfig,
) -> torch.Tensor:
    """The masked log-mel a model is fed: ``frontend(wave)`` then the seeded masks.

    ``frontend`` is a model's ``mel`` (the same fixed frontend for every CED);
    masks are computed on the spectrogram's device from each row's seed.
    """
    mel = frontend(wave)
    return spec_augment(mel, seeds.to(mel.device), augment)
