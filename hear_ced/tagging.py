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
    return load_model_file(resolve_weights(variant, option="--model"), variant=variant)


@torch.no_grad()
def clip_probabilities(model: CED, mel: torch.Tensor) -> torch.Tensor:
    """Class probabilities (B, classes) of log-mel clips (B, 64, frames) of any length.

    Clips longer than one pass (10.11 s) are cut into chunks, and the chunks'
    probabilities (not their logits) are averaged, weighted by their number
    of time patches, as the published model averages its chunks' outputs.
    """
    probabilities, weights = [], []
    for _, tokens in model.encode(mel):
        probabilities.append(torch.sigmoid(model.head(tokens.mean(dim=(1, 2)))))
        weights.append(tokens.shape[2])
    w = torch.tensor(weights, dtype=probabilities[0].dtype, device=probabilities[0].device)
    return torch.einsum("c,cbk->bk", w / w.sum(), torch.stack(probabilities))


def pad_to_patch(model: CED, waveform: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A checked 1-D float32 clip, zero-padded at the end to one patch (160 ms)."""
    wave = torch.as_tensor(waveform, dtype=torch.float32)
    if wave.ndim != 1 or wave.numel() == 0:
        raise ValueError(f"expected a non-empty 1-D waveform, got shape {tuple(wave.shape)}")
    padded = model.config.patch_samples
    if wave.numel() < padded:
        wave = torch.nn.functional.pad(wave, (0, padded - wave.numel()))
    return wave


@torch.no_grad()
def predict(model: CED, waveform: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Class probabilities (classes,) of one 16 kHz mono clip of any length."""
    device = next(model.parameters()).device
    wave = pad_to_patch(model, waveform).to(device)
    return clip_probabilities(model, model.mel(wave[None]))[0].cpu()


def top_tags(probabilities: torch.Tensor, labels: list[str], top: int = 5) -> list[Tag]:
    values, indices = probabilities.topk(min(top, probabilities.numel()))
    return [
        Tag(labels[i], i, float(v)) for v, i in zip(values.tolist(), indices.tolist(), strict=True)
    ]


def model_labels(model: CED) -> list[str]:
    """The class names stored with the model, else AudioSet's."""
    labels = model.labels or audioset_labels()
    if len(labels) != model.config.num_classes:
        raise ValueError(f"model has {model.config.num_classes} outputs but {len(labels)} labels")
    return labels


def tag_file(model: CED, path: str | os.PathLike, top: int = 5) -> list[Tag]:
    return top_tags(predict(model, load_audio(path)), model_labels(model), top)
