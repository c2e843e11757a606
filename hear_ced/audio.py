"""Reading audio files as 16 kHz mono float32, and finding them in folders.

``read_clip`` reads a whole file; ``read_blocks`` decodes and resamples it a
block at a time (soxr's streaming resampler), so that tagging a file over
time, or with an exported graph, holds a block and a pass of audio instead of
the whole recording.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np
import soundfile as sf

from hear_ced.specs import SAMPLE_RATE

log = logging.getLogger(__name__)

T = TypeVar("T")

# Frames decoded per block by ``read_blocks``: 10 s at 44.1 kHz.
BLOCK_FRAMES = 441_000

# File name endings of soundfile's formats whose names are not their usual extension.
_EXTENSION_ALIASES = {
    "AIFF": ("aif", "aifc"),
    "OGG": ("oga", "opus"),
    "NIST": ("sph",),
    "MAT4": ("mat",),
    "MAT5": ("mat",),
    "IRCAM": ("sf",),
    "WAVEX": ("wav",),
}


def read_clip(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Any file soundfile reads (wav, flac, ogg ...) -> mono float32 at ``sample_rate``.

    Refuses what no model can use: no samples, NaN or infinite samples.
    soxr's high-quality mode keeps the band below 8 kHz, all the model sees,
    free of aliasing.
    """
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise ValueError(f"cannot read audio file {path}: {exc}") from exc
    audio = audio.mean(axis=1)
    if audio.size == 0:
        raise ValueError(f"{path} holds no audio samples")
    if not np.isfinite(audio).all():
        raise ValueError(f"{path} holds NaN or infinite samples")
    if rate != sample_rate:
        import soxr  # only when resampling: keeps it out of a 16 kHz file's start-up

        audio = soxr.resample(audio, rate, sample_rate, quality="HQ")
    return np.ascontiguousarray(audio, dtype=np.float32)


def header_samples(path: str | os.PathLike) -> int | None:
    """How many 16 kHz samples a file holds, by its header; None if it cannot be read."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError):
        return None
    return round(info.frames * SAMPLE_RATE / info.samplerate)


def read_blocks(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """``read_clip``'s samples as consecutive 16 kHz mono float32 blocks.

    Each block of ``BLOCK_FRAMES`` is down-mixed and fed to soxr's
    ``ResampleStream`` (the HQ filter of ``read_clip``), which is flushed
    at the end; the blocks together are ``read_clip``'s samples to float
    rounding. Raises ValueError (while iterating) for what ``read_clip``
    refuses.
    """
    try:
        with sf.SoundFile(str(path)) as f:
            resampler = None
            if f.samplerate != SAMPLE_RATE:
                import soxr

                resampler = soxr.ResampleStream(
                    f.samplerate, SAMPLE_RATE, 1, dtype="float32", quality="HQ"
                )
            received = 0
            for block in f.blocks(blocksize=BLOCK_FRAMES, dtype="float32", always_2d=True):
                mono = np.ascontiguousarray(block.mean(axis=1), dtype=np.float32)
                if not np.isfinite(mono).all():
                    raise ValueError(f"{path} holds NaN or infinite samples")
                received += mono.size
                if resampler is not None:
                    mono = resampler.resample_chunk(mono)
                if mono.size:
                    yield mono
            if received == 0:
                raise ValueError(f"{path} holds no audio samples")
            if resampler is not None:
                rest = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
                if rest.size:
                    yield rest
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise ValueError(f"cannot read audio file {path}: {exc}") from exc


@lru_cache(maxsize=1)
def audio_extensions() -> frozenset[str]:
    """Lower-case file name endings (no dot) of the formats this soundfile reads."""
    extensions = set()
    for name in sf.available_formats():
        if name == "RAW":  # headerless: soundfile needs its rate and encoding given
            continue
        extensions.add(name.lower())
        extensions.update(_EXTENSION_ALIASES.get(name, ()))
    return frozenset(extensions)


def audio_files(inputs: Iterable[str | os.PathLike]) -> list[str]:
    """Files as given, and each folder's audio files (recursively, by extension, sorted).

    A file named on its own is kept whatever its name, so that reading it
    reports what is wrong with it; in folders only names ending in one of
    ``audio_extensions`` count.
    """
    files = []
    for item in inputs:
        path = Path(item)
        if not path.is_dir():
            files.append(str(item))
            continue
        found = sorted(
            p for p in path.rglob("*") if p.suffix[1:].lower() in audio_extensions() and p.is_file()
        )
        if not found:
            log.warning("%s holds no audio files", item)
        files.extend(str(p) for p in found)
    return files


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """What one file gave (its audio, probabilities, timeline ...), or why it gave nothing."""

    path: str
    result: T | None = None
    error: str | None = None


def read_outcomes(paths: Iterable[str]) -> Iterator[Outcome[np.ndarray]]:
    """Each file's 16 kHz audio (``read_clip``), or why it cannot be read."""
    for path in paths:
        try:
            yield Outcome(path, read_clip(path))
        except ValueError as exc:
            yield Outcome(path, error=str(exc))
