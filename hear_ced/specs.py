"""Torch-free facts about CED shared by the torch model and the ONNX runtime.

The sample rate and hop of the features, the passes of at most 10.11 s a
clip is cut into, and the sizes with published weights. They live here, away
from torch, so that ``hear-ced tag --onnx`` (``hear_ced.runtime``) uses the
very rules the torch path does without importing it.
"""

from __future__ import annotations

SAMPLE_RATE = 16_000
HOP_LENGTH = 160

# The sizes with published weights (and HEAR modules); "large" exists only as a teacher size.
PUBLISHED_SIZES: tuple[str, ...] = ("tiny", "mini", "small", "base")


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
