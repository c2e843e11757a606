"""Models and inputs for the benchmarks: calibrated random CED weights, test audio, MAC counts.

No published weights are needed (nor downloaded). CED's own initialisation
(std 0.02) makes every token nearly alike and every probability close to 0.5,
which would make any fast path look accurate. ``calibrated_model`` instead
gives the layers unit-gain random weights, fits the input BatchNorm to real
feature statistics and scales the head so logits spread like a tagger's
(mean -3, std 2 over classes), so precision loss shows in the outputs.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from hear_ced.frontend import SAMPLE_RATE
from hear_ced.model import CED, build_model

CLIP_SECONDS = 10.0


def synthetic_audio(batch: int, seconds: float = CLIP_SECONDS, seed: int = 0) -> torch.Tensor:
    """Structured synthetic audio (B, samples): gliding tones, noise bursts and clicks.

    Unlike white noise its log-mel has the contrast of real recordings, so the
    dB floor, the BatchNorm and the attention all see varied input.
    """
    gen = torch.Generator().manual_seed(seed)
    n = int(seconds * SAMPLE_RATE)
    t = torch.arange(n) / SAMPLE_RATE
    clips = []
    for _ in range(batch):
        r = torch.rand(8, generator=gen)
        f0 = 100 + 2000 * r[0]
        glide = f0 * (1 + 0.5 * torch.sin(2 * math.pi * (0.1 + r[1]) * t))
        tone = torch.sin(2 * math.pi * torch.cumsum(glide, 0) / SAMPLE_RATE)
        envelope = (torch.sin(2 * math.pi * (0.3 + 2 * r[2]) * t) > 0.3 * r[3]).float()
        bursts = (
            torch.randn(n, generator=gen)
            * ((torch.rand(n // 1600 + 1, generator=gen) > 0.7).float().repeat_interleave(1600)[:n])
        )
        clicks = (torch.rand(n, generator=gen) > 0.9995).float()
        clip = 0.3 * r[4] * tone * envelope + 0.1 * r[5] * bursts + 0.5 * clicks
        clips.append(clip / clip.abs().max().clamp(min=1e-3) * (0.2 + 0.7 * r[6]))
    return torch.stack(clips).float()


@torch.no_grad()
def calibrated_model(variant: str, seed: int = 0, **overrides) -> CED:
    """A randomly initialised CED whose activations and logits have realistic spread."""
    torch.manual_seed(seed)
    model = build_model(variant, **overrides).eval()
    for module in model.blocks.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=module.in_features**-0.5)
            nn.init.normal_(module.bias, std=0.02)
        elif isinstance(module, nn.LayerNorm):
            nn.init.normal_(module.weight, mean=1.0, std=0.1)
            nn.init.normal_(module.bias, std=0.1)
    nn.init.normal_(model.time_pos_embed, std=0.5)
    nn.init.normal_(model.freq_pos_embed, std=0.5)
    mel = model.mel(synthetic_audio(4, seed=seed + 1))
    model.init_bn.running_mean.copy_(mel.mean(dim=(0, 2)))
    model.init_bn.running_var.copy_(mel.var(dim=(0, 2)))
    head = model.outputlayer[1]
    nn.init.normal_(head.weight, std=head.in_features**-0.5)
    logits = model.forward_mel(mel)
    scale = 2.0 / logits.std().clamp(min=1e-6)
    head.weight.mul_(scale)
    head.bias.copy_((head.bias - logits.mean()) * scale - 3.0)
    return model


def count_macs(fn, *args) -> int:
    """Multiply-accumulates of one call (matmuls, convolutions, attention)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        fn(*args)
    return counter.get_total_flops() // 2


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
