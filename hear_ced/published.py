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
  samples; each window goes through the whole model (time positions 0-2) and
  its 12 tokens are averaged. The original ran all the windows through the
  front end as one batch, so they share one dB floor: 120 dB below the
  loudest bin of any of the clip's windows. A floor per window would raise
  nothing in a quiet window and change the vectors near the clip's ends by
  several hundredths.

The original took the dB floor over the whole tensor it was handed, so a
clip's vectors depended on its batch mates; here the floor is per clip: the
clip's own maximum for the scene, the maximum over all of its windows for
the timestamps, which is what the original gives a clip embedded alone.
Clips, chunks and windows run in batches and groups only for speed and
memory: a batch gives the vectors each clip alone would. Clips under 160 ms
(no patch at all, where the original has no tokens to average) are
zero-padded to 160 ms for the scene embedding.

``tests/hear_ced/test_published.py`` checks both against an implementation
of that description on six clip lengths from 0.81 s to 25 s.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hear_ced.embedder import HearEmbedder
from hear_ced.frontend import SAMPLE_RATE, apply_floor, decibels
from hear_ced.model import CED

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

    embedding_method = "published"

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

    def scene_embeddings(self, audio: torch.Tensor) -> torch.Tensor:
        """Checked (n_sounds, n_samples) audio -> (n_sounds, D): mean of all chunks' tokens."""
        model = self.model
        step = self.chunks_per_pass
        out = audio.new_empty(audio.shape[0], model.embed_dim)
        for first, batch in self.batches(audio):
            chunks = scene_chunks(model.init_bn(model.mel(batch)), model.config.target_length)
            # All chunks hold the same number of tokens, so the mean of all tokens
            # is the mean of the chunk means.
            total = torch.zeros(batch.shape[0], model.embed_dim, device=batch.device)
            for i in range(0, len(chunks), step):
                group = chunks[i : i + step]
                tokens = model.normed_tokens(torch.cat(group)).float()
                total += tokens.mean(dim=(1, 2)).view(len(group), batch.shape[0], -1).sum(dim=0)
            out[first : first + len(batch)] = total / len(chunks)
        return out

    def timestamp_embeddings(
        self, audio: torch.Tensor, n_samples: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Checked audio, of which the first ``n_samples`` are real -> (n, T, D), (n, T) ms.

        All the windows of a clip share one dB floor, 120 dB below the loudest
        bin of any of its windows (each window's spectrogram with the front end's
        own reflect padding, as the original computed them in one batch). The
        windows run in groups of ``window_batch`` in two passes: the first finds
        each clip's peak, the second recomputes the groups' spectrograms, floors
        them at that peak and runs the model. Keeping the first pass's log-mels
        instead would hold 48 x 64 values per 50 ms, about four times the audio;
        recomputing them costs only the front end. Memory stays one group of
        windows plus the outputs.
        """
        model = self.model
        padded = F.pad(audio[:, :n_samples], (PAD_LEFT, PAD_RIGHT))
        windows = padded.unfold(1, WINDOW_SAMPLES, STEP_SAMPLES)  # a view: (n, T, 7677)
        n_sounds, n_windows = windows.shape[:2]
        total, size = n_sounds * n_windows, self.window_batch
        groups = [
            torch.arange(i, min(i + size, total), device=audio.device)
            for i in range(0, total, size)
        ]

        def window_db(index: torch.Tensor) -> torch.Tensor:
            # Only this group of windows is copied out of the view.
            return decibels(
                model.front_end.power_mel(windows[index // n_windows, index % n_windows])
            )

        window_peaks = audio.new_empty(total)
        for index in groups:
            window_peaks[index] = window_db(index).amax(dim=(-2, -1))
        clip_peaks = window_peaks.view(n_sounds, n_windows).amax(dim=1)
        embeddings = audio.new_empty(total, model.embed_dim)
        for index in groups:
            features = apply_floor(window_db(index), clip_peaks[index // n_windows].view(-1, 1, 1))
            embeddings[index] = model.tokens(features).float().mean(dim=(1, 2))
        times = torch.arange(n_windows, dtype=torch.float64, device=audio.device) * STEP_MS
        embeddings = embeddings.view(n_sounds, n_windows, model.embed_dim)
        return embeddings, times.float().expand(n_sounds, -1).contiguous()


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
