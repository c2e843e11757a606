"""Torch-free facts about CED shared by the torch model and the ONNX runtime.

The sample rate, STFT size and hop of the features, the chunks of at most
10.11 s a clip is cut into (``chunk_spans``), the sizes with published
weights, and the folder the project caches files in (``cache_dir``). They live here, away from torch, so that ``hear-ced tag --onnx``
(``hear_ced.runtime``) uses the very rules the torch path does without
importing it.

A tagging pass (``hear_ced.runtime.pass_inputs``) is handed the samples of
its frames plus ``CONTEXT_FRAMES`` frames of the clip's own neighbouring
samples on each side (reflected only at the clip's ends), so a pass computed
on its own has exactly the frames of the whole clip's log-mel; its 120 dB
floor is taken over the pass's frames.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

SAMPLE_RATE = 16_000
N_FFT = 512
HOP_LENGTH = 160
# Frames of samples either side of a pass that its edge frames see: a frame
# is centred on its hop and spans N_FFT samples, half of them on each side.
CONTEXT_FRAMES = math.ceil(N_FFT / 2 / HOP_LENGTH)
CONTEXT_SAMPLES = CONTEXT_FRAMES * HOP_LENGTH

# The folder of downloaded weights and of decisions kept between runs: this variable,
# else ~/.cache/hear_ced.
ENV_CACHE = "HEAR_CED_CACHE"


def cache_dir() -> Path:
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "hear_ced")


# The sizes with published weights (and HEAR modules); "large" exists only as a teacher size.
PUBLISHED_SIZES: tuple[str, ...] = ("tiny", "mini", "small", "base")


def max_pass_samples(target_length: int) -> int:
    """The longest input of one pass (and of an exported graph): ``1 + n // hop <= target_length``."""
    return target_length * HOP_LENGTH - 1


def chunk_spans(n_frames: int, target_length: int, patch_size: int) -> list[tuple[int, int]]:
    """Frame ranges of the transformer passes over a clip of ``n_frames``.

    Full chunks of ``target_length`` frames, then the remainder at its real
    length. A remainder shorter than one patch holds no patch and is left
    out, as leftover frames inside a chunk are.
    """
    if n_frames < patch_size:
        raise ValueError(
            f"input has {n_frames} frames, fewer than one {patch_size}-frame patch "
            "(pad clips shorter than 160 ms before calling the model)"
        )
    spans = []
    for start in range(0, n_frames, target_length):
        end = min(start + target_length, n_frames)
        if end - start >= patch_size:
            spans.append((start, end))
    return spans
