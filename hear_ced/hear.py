"""The HEAR 2021 API over any CED model; ``hear_ced.tiny`` ... are thin modules.

Embeddings are the final-norm ("penultimate") tokens, D values each.

* Scene: the mean of every token of the clip. Clips longer than 10.11 s are
  encoded in chunks, and the mean runs over all their tokens, so each chunk
  counts by its length.
* Timestamps: each time patch gives one vector (its four frequency tokens
  averaged), centred in the 160 ms it covers. ``passes`` encodes the clip
  that many times, each shifted by 160/passes ms, which fills the grid in to
  160/passes ms; the vectors are then linearly interpolated to timestamps
  every ``hop_ms`` (50 ms) from 0 up to the clip's end. The default, two
  passes, costs about twice the scene embedding and gives an 80 ms grid;
  ``passes=1`` costs the same as the scene embedding.

``load_model(published=True)`` returns a ``hear_ced.published.PublishedEmbedder``
instead, which embeds as the original CED HEAR wrapper did (the method behind
the published HEAR scores). Every loaded object names its method in
``embedding_method`` ("default" or "published") and computes it itself.

Input checks: audio must be (n_sounds, n_samples) floating point. float64
and half precision are converted to float32; integer PCM is refused (scale it
to [-1, 1] first); NaN/Inf and empty clips are refused. Clips shorter than
one patch (160 ms) are zero-padded at the end to 160 ms; their timestamps
still stop at the real end. A batch of no sounds, (0, n_samples), gives
empty outputs of the shapes a batch of such clips would get.
"""

from __future__ import annotations

import inspect

import torch

from hear_ced.checkpoints import load_model_file
from hear_ced.embedder import HearEmbedder
from hear_ced.frontend import HOP_LENGTH, SAMPLE_RATE
from hear_ced.model import CED
from hear_ced.weights import resolve_weights

FRAME_MS = 1000.0 * HOP_LENGTH / SAMPLE_RATE  # 10 ms between frame centres
DEFAULT_HOP_MS = 50.0
DEFAULT_PASSES = 2


class CEDEmbedder(HearEmbedder):
    """A CED model with the attributes and settings the HEAR API needs."""

    embedding_method = "default"

    def __init__(
        self,
        model: CED,
        hop_ms: float = DEFAULT_HOP_MS,
        passes: int = DEFAULT_PASSES,
        batch_size: int = 16,
        chunks_per_pass: int = 8,
    ) -> None:
        patch = model.config.patch_size
        if passes < 1 or patch % passes:
            raise ValueError(f"passes must divide the patch size {patch}, got {passes}")
        if not 0 < hop_ms <= DEFAULT_HOP_MS:
            raise ValueError(f"hop_ms must be in (0, {DEFAULT_HOP_MS}], got {hop_ms}")
        super().__init__(model, batch_size, chunks_per_pass)
        self.hop_ms = hop_ms
        self.passes = passes

    def token_grid(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """All passes' per-time-patch vectors (B, M, D) and their centres (M,) in ms, by time."""
        patch = self.model.config.patch_size
        offsets = [p * patch // self.passes for p in range(self.passes)]
        grid = [self.time_tokens(mel, o) for o in offsets if mel.shape[-1] - o >= patch]
        centres = torch.cat([c for _, c in grid])
        order = torch.argsort(centres)
        return torch.cat([v for v, _ in grid], dim=1)[:, order], centres[order]

    def time_tokens(self, mel: torch.Tensor, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-time-patch vectors of ``mel[..., offset:]`` and their centres in ms."""
        patch = self.model.config.patch_size
        vectors, centres = [], []
        for start, tokens in self.model.encode(mel[..., offset:], self.chunks_per_pass):
            n = tokens.shape[2]
            vectors.append(tokens.mean(dim=1))
            first = offset + start + (patch - 1) / 2
            centres.append(first + patch * torch.arange(n, dtype=torch.float64))
        return torch.cat(vectors, dim=1), torch.cat(centres) * FRAME_MS

    def scene_embeddings(self, audio: torch.Tensor) -> torch.Tensor:
        """Checked audio (n_sounds, n_samples) -> (n_sounds, D): mean of all tokens."""
        out = audio.new_empty(audio.shape[0], self.scene_embedding_size)
        for first, batch in self.batches(audio):
            vectors, _ = self.time_tokens(self.model.mel(batch), 0)
            out[first : first + len(batch)] = vectors.mean(dim=1)
        return out

    def vectors_at(self, audio: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        """Checked audio -> (n_sounds, len(times), D): the token grid interpolated to ``times`` ms."""
        out = audio.new_empty(audio.shape[0], len(times), self.timestamp_embedding_size)
        for first, batch in self.batches(audio):
            vectors, centres = self.token_grid(self.model.mel(batch))
            out[first : first + len(batch)] = interpolate(
                vectors, centres.to(vectors.device), times.to(vectors.device)
            )
        return out

    def timestamp_embeddings(
        self, audio: torch.Tensor, n_samples: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Checked audio, ``n_samples`` of them real -> (n, T, D) every ``hop_ms``, (n, T) ms."""
        duration_ms = 1000.0 * n_samples / SAMPLE_RATE
        times = torch.arange(0.0, duration_ms + 1e-9, self.hop_ms, dtype=torch.float64)
        timestamps = times.float().to(audio.device).expand(audio.shape[0], -1).contiguous()
        return self.vectors_at(audio, times), timestamps


def check_options(published: bool, settings: dict) -> None:
    """Refuse, by name, options the chosen embedder does not take (before any loading)."""
    if not isinstance(published, bool):
        raise TypeError(f"load_model() option 'published' must be true or false, got {published!r}")
    from hear_ced.published import PublishedEmbedder

    embedder = PublishedEmbedder if published else CEDEmbedder
    accepted = [name for name in inspect.signature(embedder).parameters if name != "model"]
    unknown = sorted(set(settings) - set(accepted))
    if unknown:
        context = " with published=True" if published else ""
        raise TypeError(
            f"load_model() got unknown option {unknown[0]!r}{context}; accepted: "
            + ", ".join(["fast", "published", *accepted])
        )


def load(
    model_file_path: str = "",
    variant: str | None = None,
    fast: str | None = None,
    published: bool = False,
    **settings,
) -> HearEmbedder:
    """HEAR ``load_model``: a published size, or whatever size the file holds.

    ``fast`` picks an inference fast path of ``hear_ced.fast`` ("bf16",
    "int8", ...); by default the model runs exactly as published, in float32.
    ``published=True`` embeds as the original CED HEAR wrapper did (see
    ``hear_ced.published``); ``settings`` go to the embedder's constructor.
    """
    check_options(published, settings)
    if not model_file_path:
        if variant is None:
            raise ValueError("hear_ced.custom needs a model_file_path: it has no default weights")
        model_file_path = str(resolve_weights(variant))
    model = load_model_file(model_file_path, variant=variant)
    if fast:
        from hear_ced.fast import optimize_for_inference

        model = optimize_for_inference(model, fast)
    if published:
        from hear_ced.published import PublishedEmbedder

        return PublishedEmbedder(model, **settings)
    return CEDEmbedder(model, **settings)


def loader(variant: str | None):
    """A HEAR ``load_model`` function bound to one model size."""

    def load_model(model_file_path: str = "", **settings) -> HearEmbedder:
        # heareval's --model-options '{"passes": 4, "fast": "bf16"}' arrive here.
        return load(model_file_path, variant=variant, **settings)

    load_model.__doc__ = (
        f"Load CED-{variant or 'custom'} as a HEAR model (weights: see hear_ced.weights)."
    )
    return load_model


@torch.no_grad()
def get_scene_embeddings(audio: torch.Tensor, embedder: HearEmbedder) -> torch.Tensor:
    """(n_sounds, n_samples) -> (n_sounds, D), by the embedder's method."""
    audio, _ = embedder.prepare(audio)
    return embedder.scene_embeddings(audio)


@torch.no_grad()
def get_timestamp_embeddings(
    audio: torch.Tensor, embedder: HearEmbedder
) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_sounds, n_samples) -> embeddings (n, T, D) and timestamps (n, T) in ms."""
    return embedder.timestamp_embeddings(*embedder.prepare(audio))


def interpolate(vectors: torch.Tensor, centres: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of (B, M, D) vectors at sorted ``centres`` to ``times``.

    Times outside the first/last centre take the nearest vector.
    """
    if len(centres) == 1:
        return vectors.expand(-1, len(times), -1)
    times = times.clamp(centres[0], centres[-1])
    right = torch.searchsorted(centres, times).clamp(1, len(centres) - 1)
    left = right - 1
    span = centres[right] - centres[left]
    weight = ((times - centres[left]) / span).to(vectors.dtype).view(1, -1, 1)
    return torch.lerp(vectors[:, left], vectors[:, right], weight)
