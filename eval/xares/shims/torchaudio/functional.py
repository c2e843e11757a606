"""``torchaudio.functional.resample`` on soxr (see the package docstring)."""

from __future__ import annotations

import numpy as np
import soxr
import torch

__all__ = ["resample"]


def resample(
    waveform: torch.Tensor, orig_freq: int, new_freq: int, *_args, **_kwargs
) -> torch.Tensor:
    """``waveform`` (..., time) from ``orig_freq`` to ``new_freq`` Hz, same dtype and leading dims."""
    orig_freq, new_freq = int(orig_freq), int(new_freq)
    if orig_freq == new_freq:
        return waveform
    leading, length = waveform.shape[:-1], waveform.shape[-1]
    channels = waveform.detach().cpu().reshape(-1, length).double().numpy().T  # (time, channels)
    out = soxr.resample(np.ascontiguousarray(channels), orig_freq, new_freq)
    return torch.from_numpy(np.ascontiguousarray(out.T)).to(waveform.dtype).reshape(*leading, -1)
