"""Checkpoints in the published layouts, made from random weights.

The published files cannot be downloaded here, so tests write files with the
same key names, shapes and wrapping as the originals.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from hear_ced.frontend import mel_filterbank
from hear_ced.model import CED


def original_state(model: CED) -> dict[str, torch.Tensor]:
    """Keys as in the Zenodo .pt files (161 for mini)."""
    state = {
        k.replace("init_bn.", "init_bn.1.", 1): v.clone() for k, v in model.state_dict().items()
    }
    state["front_end.0.spectrogram.window"] = torch.hann_window(512)
    state["front_end.0.mel_scale.fb"] = mel_filterbank()
    return state


def huggingface_state(model: CED) -> dict[str, torch.Tensor]:
    """Keys as in the mispeech/ced-* ports."""
    return {
        (k if k.startswith("outputlayer.") else f"encoder.{k}"): v.clone().contiguous()
        for k, v in model.state_dict().items()
    }


def save_original(model: CED, path: Path, wrapped: bool = True) -> Path:
    state = original_state(model)
    torch.save({"model": state} if wrapped else state, path)
    return path


def save_huggingface(model: CED, folder: Path, safetensors: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    state = huggingface_state(model)
    if safetensors:
        save_file(state, folder / "model.safetensors")
    else:
        torch.save(state, folder / "pytorch_model.bin")
    return folder


def randomize_batchnorm(model: CED, seed: int = 0) -> CED:
    """Non-trivial BatchNorm statistics, so tests see them applied."""
    gen = torch.Generator().manual_seed(seed)
    bn = model.init_bn
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen) * 5 - 20)
        bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) * 50 + 10)
        bn.weight.copy_(1 + 0.1 * torch.randn(bn.num_features, generator=gen))
        bn.bias.copy_(0.1 * torch.randn(bn.num_features, generator=gen))
    return model.eval()
