"""Models and inputs for the benchmarks: calibrated random CED weights, test audio, MAC counts.

No published weights are needed (nor downloaded). CED's own initialisation
(std 0.02) makes every token nearly alike and every probability close to 0.5,
which would make any fast path look accurate. ``calibrated_model`` instead
gives the layers unit-gain random weights, fits the input BatchNorm to real
feature statistics and scales the head so logits spread like a tagger's
(mean -3, std 2 over classes), so precision loss shows in the outputs.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from hear_ced.fast import synthetic_audio
from hear_ced.model import CED, build_model

CLIP_SECONDS = 10.0


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
