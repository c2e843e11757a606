"""The two torchaudio functions X-ARES calls, on soundfile and soxr.

torchaudio has no build for the torch this project runs on, yet X-ARES
imports it at module level, resamples with ``torchaudio.functional.resample``
and decodes every audio member through webdataset's ``torch_audio``
decoder, which calls ``torchaudio.load``. This folder is put first on the
import path of the processes ``ced-eval xares`` starts, and only there
(:mod:`hear_ced.eval.xares.launch`); it is never installed.

X-ARES's webdataset handler turns a decode error into a warning and drops
the clip, so a failed decode is also appended to the file named by
``CED_XARES_DECODE_LOG`` (:data:`hear_ced.eval.xares.launch.DECODE_LOG`): the run reads it after encoding.
"""

from __future__ import annotations

import os

import numpy as np
import soundfile
import torch

from hear_ced.eval.xares.launch import DECODE_LOG

from . import functional

__version__ = "0+ced-eval-shim"
__all__ = ["functional", "load"]


def load(
    uri,
    frame_offset: int = 0,
    num_frames: int = -1,
    normalize: bool = True,
    channels_first: bool = True,
    format: str | None = None,  # noqa: A002 (torchaudio's name)
    **_backend_options,
) -> tuple[torch.Tensor, int]:
    """Audio as torchaudio returns it: float32 (channels, frames) in [-1, 1], and the rate."""
    try:
        data, rate = soundfile.read(
            uri, start=frame_offset, frames=num_frames, dtype="float32", always_2d=True
        )
    except Exception as exc:
        _record_failure(uri, exc)
        raise
    audio = torch.from_numpy(np.ascontiguousarray(data.T if channels_first else data))
    return audio, int(rate)


def _record_failure(uri, exc: Exception) -> None:
    path = os.environ.get(DECODE_LOG)
    if path:
        message = " ".join(f"{type(exc).__name__}: {exc}".split())
        with open(path, "a") as handle:  # one line per failure; read once the step ended
            handle.write(f"{uri}\t{message}\n")
