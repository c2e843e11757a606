"""The base of the HEAR embedders: a CED in eval mode, the attributes the HEAR API reads,
and the input checks every embedding method shares.

Its own module so that ``hear_ced.hear`` (the default method and the API) and
``hear_ced.published`` (the original wrapper's method) both build on it
without importing each other.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from hear_ced.frontend import SAMPLE_RATE
from hear_ced.model import CED


class HearEmbedder(nn.Module):
    """A CED in eval mode with the attributes the HEAR API reads.

    Subclasses name their method in ``embedding_method`` (recorded with the
    scores of a run) and compute it in ``scene_embeddings(audio)`` and
    ``timestamp_embeddings(audio, n_samples)``, on audio checked by ``prepare``;
    the API functions of ``hear_ced.hear`` call them.
    """

    embedding_method: str
    sample_rate = SAMPLE_RATE

    def __init__(self, model: CED, batch_size: int, chunks_per_pass: int) -> None:
        super().__init__()
        self.model = model.eval()
        self.batch_size = batch_size
        self.chunks_per_pass = chunks_per_pass
        self.scene_embedding_size = model.embed_dim
        self.timestamp_embedding_size = model.embed_dim

    def batches(self, audio: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        """(index of the first sound, batch) over ``batch_size`` sounds at a time.

        Callers write each batch's output into a tensor sized for all the
        sounds, so a batch of no sounds gives an empty output of the right shape.
        """
        return ((i, audio[i : i + self.batch_size]) for i in range(0, len(audio), self.batch_size))

    def prepare(self, audio: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, int]:
        """Checked float32 audio on the model's device, padded to one patch; real length."""
        if isinstance(audio, np.ndarray):
            audio = torch.from_numpy(audio)
        if not isinstance(audio, torch.Tensor):
            raise TypeError(f"audio must be a torch.Tensor, got {type(audio).__name__}")
        if audio.ndim != 2:
            raise ValueError(f"audio must be (n_sounds, n_samples), got shape {tuple(audio.shape)}")
        if not audio.is_floating_point():
            raise TypeError(
                f"audio must be floating point in [-1, 1], got {audio.dtype}; "
                "scale integer PCM first (int16: divide by 32768)"
            )
        if audio.shape[1] == 0:
            raise ValueError("audio is empty (0 samples)")
        if not torch.isfinite(audio).all():
            raise ValueError("audio contains NaN or Inf values")
        device = next(self.model.parameters()).device
        audio = audio.to(device=device, dtype=torch.float32)
        n_samples = audio.shape[1]
        # Shorter clips are zero-padded to one patch.
        min_samples = self.model.config.patch_samples
        if n_samples < min_samples:
            audio = torch.nn.functional.pad(audio, (0, min_samples - n_samples))
        return audio, n_samples
