"""What the two HEAR embedders (``hear.CEDEmbedder``, ``published.PublishedEmbedder``) share."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from hear_ced.frontend import SAMPLE_RATE
from hear_ced.model import CED


class HearEmbedder(nn.Module):
    """A CED in eval mode with the attributes the HEAR API reads.

    Subclasses name their method in ``embedding_method``; ``hear_ced.hear``
    dispatches on it.
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

    @property
    def min_samples(self) -> int:
        """Shorter clips are zero-padded to this many samples: one patch (``patch_samples``)."""
        return self.model.config.patch_samples

    def batches(self, audio: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        """(index of the first sound, batch) over ``batch_size`` sounds at a time.

        Callers write each batch's output into a tensor sized for all the
        sounds, so a batch of no sounds gives an empty output of the right shape.
        """
        return ((i, audio[i : i + self.batch_size]) for i in range(0, len(audio), self.batch_size))
