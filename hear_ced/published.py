"""The embeddings of the original CED HEAR wrapper, for like-for-like comparisons.

The published CED HEAR scores were made with the authors' wrapper, whose
method differs from this project's default (``hear_ced.hear``).
``load_model(published=True)`` reproduces it for a clip embedded alone:

* Scene: the whole clip through the model, final-norm tokens averaged. Past
  1012 frames (10.11 s) the BatchNormed log-mel is cut into 1012-frame
  chunks; a short last chunk is zero-padded after the BatchNorm to 1012
  frames, a frame count that is an exact multiple of 1012 loses its last
  chunk, and the tokens of all chunks, padding included, are averaged
  together.
* Timestamps: k * 50 ms for k = 0 .. n_samples // 800. The waveform is
  zero-padded by 3838 samples on the left and 3839 on the right and cut into
  7677-sample windows (48 frames: 3 time x 4 frequency patches) every 800
  samples; each window goes through the whole model on its own (its own dB
  floor, time positions 0-2) and its 12 tokens are averaged.

The original took the dB floor over the whole batch it was handed, so a
clip's vectors depended on its batch mates; here the floor is per clip
(scene) and per window (timestamps), which is what the original gives a clip
embedded alone. Windows and chunks run in batches only for speed: every
floor and normalisation is per item, so a batch gives the vectors one item at
a time would. Clips under 160 ms (no patch at all, where the original has no
tokens to average) are zero-padded to 160 ms for the scene embedding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hear_ced.embedder import HearEmbedder
from hear_ced.frontend import SAMPLE_RATE
from hear_ced.model import CED

EMBEDDING_METHOD = "published"
WINDOW_SAMPLES = 7677  # 1 + 7677 // 160 = 48 frames = 3 time patches
PAD_LEFT = 3838
PAD_RIGHT = 3839
STEP_SAMPLES = 800
STEP_MS = 1000.0 * STEP_SAMPLES / SAMPLE_RATE  # 50 ms


class PublishedEmbedder(HearEmbedder):
    """A CED model embedding as the original HEAR wrapper did.

    ``batch_size`` clips are embedded at once for the scene; ``chunks_per_pass``
    1012-frame chunks and ``window_batch`` timestamp windows go through the
    transformer together, which bounds memory for long clips.
    """

    embedding_method = EMBEDDING_METHOD

    def __init__(
        self, model: CED, batch_size: int = 16, chunks_per_pass: int = 8, window_batch: int = 256
    ) -> None:
        for name, value in (
            ("batch_size", batch_size),
            ("chunks_per_pass", chunks_per_pass),
            ("window_batch", window_batch),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        super().__init__(model, batch_size, chunks_per_pass)
        self.window_batch = window_batch


def scene_chunks(normed: torch.Tensor, length: int) -> list[torch.Tensor]:
    """The original's chunks of BatchNormed features (B, mels, frames).

    Up to ``length`` frames the clip is one chunk as it is. Longer: chunks of
    ``length`` frames, the last one zero-padded to ``length`` or, when it is
    already full, dropped.
    """
    if normed.shape[-1] <= length:
        return [normed]
    chunks = list(normed.split(length, dim=-1))
    last = chunks.pop()
    if last.shape[-1] < length:
        chunks.append(F.pad(last, (0, length - last.shape[-1])))
    return chunks


@torch.no_grad()
def scene_embeddings(audio: torch.Tensor, embedder: PublishedEmbedder) -> torch.Tensor:
    """Checked (n_sounds, n_samples) audio -> (n_sounds, D): mean of all chunks' tokens."""
    model = embedder.model
    step = embedder.chunks_per_pass
    out = []
    for batch in audio.split(embedder.batch_size):
        chunks = scene_chunks(model.init_bn(model.mel(batch)), model.config.target_length)
        # All chunks hold the same number of tokens, so the mean of all tokens
        # is the mean of the chunk means.
        total = torch.zeros(batch.shape[0], model.embed_dim, device=batch.device)
        for i in range(0, len(chunks), step):
            group = chunks[i : i + step]
            tokens = model.normed_tokens(torch.cat(group)).float()
            total += tokens.mean(dim=(1, 2)).view(len(group), batch.shape[0], -1).sum(dim=0)
        out.append(total / len(chunks))
    return torch.cat(out)


@torch.no_grad()
def timestamp_embeddings(
    audio: torch.Tensor, n_samples: int, embedder: PublishedEmbedder
) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked audio, of which the first ``n_samples`` are real -> (n, T, D), (n, T) ms."""
    model = embedder.model
    padded = F.pad(audio[:, :n_samples], (PAD_LEFT, PAD_RIGHT))
    windows = padded.unfold(1, WINDOW_SAMPLES, STEP_SAMPLES)  # a view: (n, T, 7677)
    n_sounds, n_windows = windows.shape[:2]
    flat = torch.arange(n_sounds * n_windows, device=audio.device)
    vectors = []
    for index in flat.split(embedder.window_batch):
        # Only this group of windows is copied out of the view.
        group = windows[index // n_windows, index % n_windows]
        vectors.append(model.tokens(model.mel(group)).float().mean(dim=(1, 2)))
    embeddings = torch.cat(vectors).view(n_sounds, n_windows, -1)
    times = torch.arange(n_windows, dtype=torch.float64, device=audio.device) * STEP_MS
    return embeddings, times.float().expand(n_sounds, -1).contiguous()
