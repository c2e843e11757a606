"""A MobileNetV3-Large in EfficientAT's MN10 configuration, as a speed peer.

Width 1.0, one input channel (a 128-mel x 1000-frame log-mel image at 32 kHz,
hop 10 ms), channel squeeze-and-excitation, an MLP head 960 -> 1280 -> 527.
Random weights: only its cost is compared. ``bench.run`` counts its parameters
and multiply-accumulates to show it matches the published 4.88 M / 0.54 G.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

N_MELS = 128
N_FRAMES = 1000


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor`` without dropping below 90 %."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


@dataclass(frozen=True)
class Bneck:
    in_ch: int
    kernel: int
    expanded: int
    out_ch: int
    use_se: bool
    hard_swish: bool
    stride: int


# The MobileNetV3-Large stack (Howard et al. 2019, Table 1), width 1.0.
LARGE = (
    Bneck(16, 3, 16, 16, False, False, 1),
    Bneck(16, 3, 64, 24, False, False, 2),
    Bneck(24, 3, 72, 24, False, False, 1),
    Bneck(24, 5, 72, 40, True, False, 2),
    Bneck(40, 5, 120, 40, True, False, 1),
    Bneck(40, 5, 120, 40, True, False, 1),
    Bneck(40, 3, 240, 80, False, True, 2),
    Bneck(80, 3, 200, 80, False, True, 1),
    Bneck(80, 3, 184, 80, False, True, 1),
    Bneck(80, 3, 184, 80, False, True, 1),
    Bneck(80, 3, 480, 112, True, True, 1),
    Bneck(112, 3, 672, 112, True, True, 1),
    Bneck(112, 5, 672, 160, True, True, 2),
    Bneck(160, 5, 960, 160, True, True, 1),
    Bneck(160, 5, 960, 160, True, True, 1),
)


def conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int, groups: int, act: nn.Module | None):
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    if act is not None:
        layers.append(act)
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        squeezed = make_divisible(channels // 4)
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.fc2 = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean(dim=(2, 3), keepdim=True)
        scale = nn.functional.hardsigmoid(self.fc2(nn.functional.relu(self.fc1(scale))))
        return x * scale


class InvertedResidual(nn.Module):
    def __init__(self, cfg: Bneck) -> None:
        super().__init__()
        act = nn.Hardswish if cfg.hard_swish else nn.ReLU
        layers: list[nn.Module] = []
        if cfg.expanded != cfg.in_ch:
            layers.append(conv_bn(cfg.in_ch, cfg.expanded, 1, 1, 1, act()))
        layers.append(
            conv_bn(cfg.expanded, cfg.expanded, cfg.kernel, cfg.stride, cfg.expanded, act())
        )
        if cfg.use_se:
            layers.append(SqueezeExcite(cfg.expanded))
        layers.append(conv_bn(cfg.expanded, cfg.out_ch, 1, 1, 1, None))
        self.block = nn.Sequential(*layers)
        self.residual = cfg.stride == 1 and cfg.in_ch == cfg.out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class MobileNetV3(nn.Module):
    """(B, 1, mels, frames) -> (B, classes) logits."""

    def __init__(self, num_classes: int = 527, last_channel: int = 1280) -> None:
        super().__init__()
        layers = [conv_bn(1, LARGE[0].in_ch, 3, 2, 1, nn.Hardswish())]
        layers += [InvertedResidual(cfg) for cfg in LARGE]
        final = 6 * LARGE[-1].out_ch
        layers.append(conv_bn(LARGE[-1].out_ch, final, 1, 1, 1, nn.Hardswish()))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(final, last_channel),
            nn.Hardswish(),
            nn.Dropout(0.2),
            nn.Linear(last_channel, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


def mn10() -> MobileNetV3:
    return MobileNetV3().eval()
