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
from typing import BinaryIO, Generic, TypeVar

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


def read_clip(path: str | os.PathLike | BinaryIO) -> np.ndarray:
    """Any file soundfile reads (wav, flac, ogg ...) -> mono float32 at 16 kHz, whole.

    ``path`` may also be an open binary file (an encoded file's bytes in memory).

    The blocks of ``read_blocks`` joined: soxr's streaming resampler gives the
    samples its one-shot resampling of the whole file would, so there is one
    reader (and one check of what it refuses) for every use.
    """
    return np.concatenate([np.zeros(0, np.float32), *read_blocks(path)])


def header_samples(path: str | os.PathLike) -> int | None:
    """How many 16 kHz samples a file holds, by its header; None if it cannot be read."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError):
        return None
    return round(info.frames * SAMPLE_RATE / info.samplerate)


def resampled(blocks: Iterable[np.ndarray], rate: int) -> Iterator[np.ndarray]:
    """Consecutive mono float32 blocks at ``rate`` as 16 kHz blocks, none of them empty.

    soxr's ``ResampleStream`` in its high-quality mode, which keeps the band
    below 8 kHz, all the model sees, free of aliasing, is flushed at the end:
    the samples are those of resampling the whole recording at once, however
    it is cut into blocks.
    """
    if rate == SAMPLE_RATE:
        yield from (block for block in blocks if block.size)
        return
    import soxr  # only when resampling: keeps it out of a 16 kHz file's start-up

    stream = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
    for block in blocks:
        if (out := stream.resample_chunk(block)).size:
            yield out
    if (rest := stream.resample_chunk(np.zeros(0, np.float32), last=True)).size:
        yield rest


def read_blocks(path: str | os.PathLike | BinaryIO) -> Iterator[np.ndarray]:
    """A file's samples as consecutive 16 kHz mono float32 blocks (``resampled``).

    Blocks of ``BLOCK_FRAMES`` are decoded and down-mixed one at a time.
    Raises ValueError (while iterating) for what no model can use: a file
    soundfile cannot read, one without samples, NaN or infinite samples.
    """

    def mono_blocks(f: sf.SoundFile) -> Iterator[np.ndarray]:
        received = 0
        for block in f.blocks(blocksize=BLOCK_FRAMES, dtype="float32", always_2d=True):
            mono = np.ascontiguousarray(block.mean(axis=1), dtype=np.float32)
            if not np.isfinite(mono).all():
                raise ValueError(f"{path} holds NaN or infinite samples")
            received += mono.size
            yield mono
        if received == 0:
            raise ValueError(f"{path} holds no audio samples")

    try:
        with sf.SoundFile(path if hasattr(path, "read") else str(path)) as f:
            yield from resampled(mono_blocks(f), f.samplerate)
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


def audio_files(inputs: Iterable[str | os.PathLike], required: bool = False) -> list[str]:
    """Files as given, and each folder's audio files (recursively, by extension, sorted).

    A file named on its own is kept whatever its name, so that reading it
    reports what is wrong with it; in folders only names ending in one of
    ``audio_extensions`` count. A folder without any is warned about; when
    ``required`` and nothing at all is found, that is one ValueError instead.
    """
    inputs, files, empty = list(inputs), [], []
    for item in inputs:
        path = Path(item)
        if not path.is_dir():
            files.append(str(item))
            continue
        found = sorted(
            p for p in path.rglob("*") if p.suffix[1:].lower() in audio_extensions() and p.is_file()
        )
        if not found:
            empty.append(str(item))
        files.extend(str(p) for p in found)
    if required and not files:
        raise ValueError(f"no audio files in {', '.join(map(str, inputs))}")
    for item in empty:
        log.warning("%s holds no audio files", item)
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
