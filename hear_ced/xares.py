"""CED as an X-ARES audio encoder.

X-ARES expects a ``torch.nn.Module`` whose class name ends in ``Encoder``,
with ``sampling_rate``, ``output_dim`` and ``hop_size_in_ms``, whose
``forward(audio[B, T])`` returns frames ``[B, T', output_dim]``.

The frames come from the token grid, as the HEAR timestamp embeddings do
(``hear_ced.hear``): each time patch's four frequency tokens averaged,
``passes`` shifted passes filling the 160 ms patch grid in to
``160 / passes`` ms, and the vectors linearly interpolated to the centres
of consecutive ``160 / passes`` ms frames: T' = T // hop samples (at least
one). Long input is encoded in 10.11 s chunks, a few at a time, so 10
minutes of audio need no more transformer memory than 80 s.
"""

from __future__ import annotations

import torch
from torch import nn

from hear_ced.frontend import SAMPLE_RATE
from hear_ced.hear import DEFAULT_PASSES, CEDEmbedder, load


class CEDEncoder(nn.Module):
    """A CED model (a published size, or any checkpoint) as an X-ARES encoder.

    ``variant=None`` with a ``model_file_path`` takes whatever size the file holds.
    """

    sampling_rate = SAMPLE_RATE

    def __init__(
        self,
        variant: str | None = "mini",
        model_file_path: str = "",
        passes: int = DEFAULT_PASSES,
        batch_size: int = 16,
    ) -> None:
        super().__init__()
        self.embedder: CEDEmbedder = load(
            model_file_path, variant=variant, passes=passes, batch_size=batch_size
        )
        patch = self.embedder.model.config.patch_size
        self.hop_samples = patch * 160 // passes
        self.hop_size_in_ms = 1000.0 * self.hop_samples / SAMPLE_RATE
        self.output_dim = self.embedder.model.embed_dim

    def frame_count(self, n_samples: int) -> int:
        """T' for an input of ``n_samples``: one frame per full hop, at least one."""
        return max(1, n_samples // self.hop_samples)

    @torch.no_grad()
    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """Audio (B, T) at 16 kHz in [-1, 1] -> frames (B, T', output_dim) every hop_size_in_ms."""
        audio, n_samples = self.embedder.prepare(audio)
        n_frames = self.frame_count(n_samples)
        times = (torch.arange(n_frames, dtype=torch.float64) + 0.5) * self.hop_size_in_ms
        return self.embedder.vectors_at(audio, times)
