"""Plain audio tagging: waveform -> top AudioSet labels."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from hear_ced.audio import load_audio
from hear_ced.checkpoints import load_model_file
from hear_ced.labels import audioset_labels
from hear_ced.model import CED
from hear_ced.weights import resolve_weights


@dataclass(frozen=True)
class Tag:
    label: str
    index: int
    probability: float


def load_tagger(variant: str = "mini", model_file: str | os.PathLike | None = None) -> CED:
    """A CED for tagging: ``model_file`` if given, else the published ``variant``."""
    if model_file:
        return load_model_file(model_file)
    return load_model_file(resolve_weights(variant), variant=variant)


@torch.no_grad()
def predict(model: CED, waveform: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Class probabilities (classes,) of one 16 kHz mono clip of any length."""
    wave = torch.as_tensor(waveform, dtype=torch.float32)
    if wave.ndim != 1 or wave.numel() == 0:
        raise ValueError(f"expected a non-empty 1-D waveform, got shape {tuple(wave.shape)}")
    min_samples = model.config.patch_size * 160
    if wave.numel() < min_samples:
        wave = torch.nn.functional.pad(wave, (0, min_samples - wave.numel()))
    device = next(model.parameters()).device
    return torch.sigmoid(model(wave.to(device)[None]))[0].cpu()


def top_tags(probabilities: torch.Tensor, labels: list[str], top: int = 5) -> list[Tag]:
    values, indices = probabilities.topk(min(top, probabilities.numel()))
    return [
        Tag(labels[i], i, float(v)) for v, i in zip(values.tolist(), indices.tolist(), strict=True)
    ]


def tag_file(model: CED, path: str | os.PathLike, top: int = 5) -> list[Tag]:
    labels = getattr(model, "labels", None) or audioset_labels()
    if len(labels) != model.config.num_classes:
        raise ValueError(f"model has {model.config.num_classes} outputs but {len(labels)} labels")
    return top_tags(predict(model, load_audio(path)), labels, top)
