"""The CED audio transformer: a pre-norm ViT over 16x16 log-mel patches.

State-dict names follow the published checkpoints (``blocks.0.attn.qkv``,
``outputlayer.1`` ...), minus the frontend constants, so weights map onto the
modules one to one; ``hear_ced.checkpoints`` translates the other layouts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hear_ced.frontend import HOP_LENGTH, N_MELS, LogMelFrontend
from hear_ced.specs import PUBLISHED_SIZES as PUBLISHED_SIZES  # its torch-free home
from hear_ced.specs import chunk_spans


@dataclass(frozen=True)
class CEDConfig:
    """Sizes, class names and inference mode of a CED model; published sizes in ``VARIANTS``."""

    embed_dim: int = 256
    depth: int = 12
    num_heads: int = 4
    mlp_ratio: float = 4.0
    num_classes: int = 527
    n_mels: int = N_MELS
    patch_size: int = 16
    # Frames one transformer pass sees; longer input is cut into chunks.
    # 1012 frames = 10.11 s, giving 1012 // 16 = 63 time positions.
    target_length: int = 1012
    drop_path_rate: float = 0.0
    # The outputs' class names in order, stored with the weights (``hear_ced.checkpoints``);
    # None: unnamed (AudioSet's for 527 outputs, ``hear_ced.labels.known_class_names``).
    labels: tuple[str, ...] | None = None
    # The inference mode of a copy made by ``hear_ced.fast``; None: as built.
    fast_mode: str | None = None

    def __post_init__(self) -> None:
        for name in ("embed_dim", "depth", "num_heads", "num_classes", "patch_size", "n_mels"):
            if getattr(self, name) <= 0:
                raise ValueError(f"CEDConfig.{name} must be positive, got {getattr(self, name)}")
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"CEDConfig.embed_dim ({self.embed_dim}) must be divisible by "
                f"num_heads ({self.num_heads})"
            )
        if self.n_mels % self.patch_size:
            raise ValueError(f"n_mels ({self.n_mels}) must be a multiple of patch_size")
        if self.target_length < self.patch_size:
            raise ValueError("target_length must hold at least one patch")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError("drop_path_rate must be in [0, 1)")
        if self.labels is not None:
            object.__setattr__(self, "labels", tuple(self.labels))  # hashable, also from JSON
            if len(self.labels) != self.num_classes:
                raise ValueError(
                    f"CEDConfig.labels names {len(self.labels)} classes, "
                    f"num_classes is {self.num_classes}"
                )

    @property
    def freq_patches(self) -> int:
        return self.n_mels // self.patch_size

    @property
    def time_positions(self) -> int:
        return self.target_length // self.patch_size

    @property
    def min_input_samples(self) -> int:
        """The shortest waveform that yields one patch of frames (150 ms for 16-frame patches).

        The frontend makes ``1 + n // hop`` frames, so ``patch_size - 1`` hops
        already give ``patch_size`` frames. Graphs that cannot pad (the ONNX
        export) refuse anything shorter.
        """
        return (self.patch_size - 1) * HOP_LENGTH

    @property
    def patch_samples(self) -> int:
        """The audio one patch spans, ``patch_size`` hops (160 ms for 16-frame patches).

        Clips shorter than this are zero-padded to it before tagging,
        embedding or evaluation. It is more than ``min_input_samples``: a clip
        of 2,400 to 2,559 samples already gives one patch but is padded all the
        same, and its last frame then sees zeros instead of the reflected clip,
        so this length is part of every tag and embedding of such a clip.
        """
        return self.patch_size * HOP_LENGTH

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> CEDConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown CEDConfig keys: {', '.join(unknown)}")
        return cls(**values)


VARIANTS: dict[str, CEDConfig] = {
    "tiny": CEDConfig(embed_dim=192, depth=12, num_heads=3),
    "mini": CEDConfig(embed_dim=256, depth=12, num_heads=4),
    "small": CEDConfig(embed_dim=384, depth=12, num_heads=6),
    "base": CEDConfig(embed_dim=768, depth=12, num_heads=12),
    # The size of the ViT-Large teachers in the paper's ensemble.
    "large": CEDConfig(embed_dim=1024, depth=24, num_heads=16),
}


def variant_config(name: str, **overrides) -> CEDConfig:
    if name not in VARIANTS:
        raise ValueError(f"unknown CED variant {name!r}; choose one of {', '.join(VARIANTS)}")
    return dataclasses.replace(VARIANTS[name], **overrides)


class PatchEmbed(nn.Module):
    """Non-overlapping 16x16 patches of the (1, mel, time) image -> D channels."""

    def __init__(self, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.proj(mel.unsqueeze(1))  # (B, D, F', T')


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, d_head)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch per sample."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path_rate: float) -> None:
        super().__init__()
        self.drop_path_rate = drop_path_rate
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path_rate, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path_rate, self.training)


class CED(nn.Module):
    """CED model: waveform -> log-mel -> BatchNorm -> ViT -> 527 logits."""

    def __init__(self, config: CEDConfig, initialize: bool = True) -> None:
        """``initialize=False`` skips the random initialisation (the layers keep
        torch's defaults), for a model a checkpoint is about to overwrite: the
        truncated-normal draws cost more than loading the weights and tagging a clip."""
        super().__init__()
        self.config = config
        d = config.embed_dim
        self.front_end = LogMelFrontend()
        # BatchNorm over the mel bins (the original's BatchNorm2d with mel bins
        # as channels computes exactly this).
        self.init_bn = nn.BatchNorm1d(config.n_mels, momentum=0.01)
        self.patch_embed = PatchEmbed(d, config.patch_size)
        self.time_pos_embed = nn.Parameter(torch.empty(1, d, 1, config.time_positions))
        self.freq_pos_embed = nn.Parameter(torch.empty(1, d, config.freq_patches, 1))
        rates = torch.linspace(0, config.drop_path_rate, config.depth).tolist()
        self.blocks = nn.ModuleList(
            Block(d, config.num_heads, config.mlp_ratio, rate) for rate in rates
        )
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.outputlayer = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, config.num_classes))
        if initialize:
            self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.time_pos_embed, std=0.02)
        nn.init.trunc_normal_(self.freq_pos_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    def mel(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, samples) at 16 kHz -> (B, 64, frames) log-mel in dB."""
        return self.front_end(waveform)

    def tokens(self, mel: torch.Tensor) -> torch.Tensor:
        """One pass over at most ``target_length`` frames.

        Returns the final-norm ("penultimate") tokens as (B, F', T', D):
        frequency patches by time patches. Frames past the last full patch
        are dropped.
        """
        return self.normed_tokens(self.init_bn(mel))

    def normed_tokens(self, normed: torch.Tensor) -> torch.Tensor:
        """``tokens`` of features already through the input BatchNorm.

        For callers that edit the normalised features (the zero padding of
        ``hear_ced.published``).
        """
        if normed.shape[-1] > self.config.target_length:
            raise ValueError(
                f"one pass takes at most {self.config.target_length} frames, got "
                f"{normed.shape[-1]}; use encode for long input"
            )
        x = self.patch_embed(normed)
        t = x.shape[-1]
        x = x + self.time_pos_embed[..., :t] + self.freq_pos_embed
        b, d, f, _ = x.shape
        x = x.flatten(2).transpose(1, 2)  # frequency-major token order
        for block in self.blocks:
            x = block(x)
        return self.norm(x).view(b, f, t, d)

    def encode(
        self, mel: torch.Tensor, chunks_per_pass: int = 8
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Tokens of every chunk of a clip of any length, in time order.

        Yields (first frame, tokens (B, F', T', D)) per chunk. Full-length
        chunks are run ``chunks_per_pass`` at a time, stacked along the batch
        axis (never mixing batch items), which bounds memory for long clips.
        """
        spans = chunk_spans(mel.shape[-1], self.config.target_length, self.config.patch_size)
        for i in range(0, len(spans), chunks_per_pass):
            group = spans[i : i + chunks_per_pass]
            lengths = {end - start for start, end in group}
            if len(lengths) == 1:
                stacked = torch.cat([mel[..., s:e] for s, e in group], dim=0)
                outputs = self.tokens(stacked).split(mel.shape[0], dim=0)
            else:
                outputs = [self.tokens(mel[..., s:e]) for s, e in group]
            yield from zip((s for s, _ in group), outputs, strict=True)

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.outputlayer(pooled)

    def forward_mel(self, mel: torch.Tensor) -> torch.Tensor:
        """Log-mel (B, 64, frames) of one pass, at most ``target_length`` -> logits (B, classes).

        Mean token -> head, as in training. Longer clips are not averaged
        here: their prediction is the one rule for clips of any length, the
        passes' probabilities averaged (``hear_ced.runtime.Tagger.probabilities``).
        """
        if mel.shape[-1] > self.config.target_length:
            raise ValueError(
                f"forward takes one pass of at most {self.config.target_length} frames, got "
                f"{mel.shape[-1]}: predict longer clips with hear_ced.tagging.predict "
                "(the one rule, hear_ced.runtime.Tagger.probabilities)"
            )
        [(_, tokens)] = self.encode(mel)
        return self.head(tokens.mean(dim=(1, 2)))

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """Waveform (B, samples) at 16 kHz, at most one pass long -> logits (B, classes)."""
        return self.forward_mel(self.mel(waveform))


def build_model(variant: str = "mini", **overrides) -> CED:
    """A randomly initialised CED of a named size (``tiny`` ... ``base``, ``large``)."""
    return CED(variant_config(variant, **overrides))
