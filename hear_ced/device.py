"""The torch device a command runs on, from its ``--device`` text."""

from __future__ import annotations

import torch


def torch_device(spec: str) -> torch.device:
    """The device named ``spec`` (auto, cpu, cuda, cuda:N, mps), refused unless it is here.

    ``auto`` is CUDA when a GPU is visible, else the CPU.
    """
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {spec!r} (cpu, cuda, cuda:N or mps)") from exc
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"no CUDA device here for {spec!r}; use --device cpu")
        if device.index is not None and device.index >= count:
            raise ValueError(f"no device {spec!r}: this machine has cuda:0 .. cuda:{count - 1}")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"no MPS device here for {spec!r}; use --device cpu")
    elif device.type != "cpu":
        raise ValueError(f"unsupported device {spec!r} (cpu, cuda, cuda:N or mps)")
    return device
