"""Reading audio files as 16 kHz mono float32."""

from __future__ import annotations

import os

import numpy as np
import soundfile as sf

from hear_ced.frontend import SAMPLE_RATE


def to_mono_16k(audio: np.ndarray, sample_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Down-mix (samples, channels) or (samples,) audio and resample it.

    soxr's high-quality mode keeps the band below 8 kHz, all the model sees,
    free of aliasing.
    """
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    elif audio.ndim != 1:
        raise ValueError(
            f"expected (samples,) or (samples, channels) audio, got shape {audio.shape}"
        )
    if sample_rate != target_rate:
        import soxr  # only when resampling: keeps it out of a 16 kHz file's start-up

        audio = soxr.resample(audio, sample_rate, target_rate, quality="HQ")
    return np.ascontiguousarray(audio, dtype=np.float32)


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Any file soundfile reads (wav, flac, ogg ...) -> mono float32 at ``sample_rate``."""
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise ValueError(f"cannot read audio file {path}: {exc}") from exc
    return to_mono_16k(audio, rate, sample_rate)
