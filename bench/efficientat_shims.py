"""The few torchvision and torchaudio names EfficientAT's MN models import.

Neither package has a build for the torch this project pins, yet EfficientAT's
``models/mn`` imports ``torchvision.ops.misc.ConvNormActivation`` and its
``models/preprocess.py`` imports ``torchaudio`` (Kaldi mel banks, and
SpecAugment masks used only in training, which the benchmark never applies).
These stand-ins follow the documented behaviour of those names and nothing
more; ``bench.efficientat`` puts them into ``sys.modules`` only while it
imports a checkout, inside the benchmark process. They are never installed.
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch
from torch import nn


class ConvNormActivation(nn.Sequential):
    """torchvision's Conv2d -> optional norm -> optional activation block.

    ``padding=None`` keeps the size at stride 1 (``(k - 1) // 2 * dilation``);
    ``bias=None`` gives the convolution a bias only when there is no norm.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
        norm_layer: Callable[..., nn.Module] | None = nn.BatchNorm2d,
        activation_layer: Callable[..., nn.Module] | None = nn.ReLU,
        dilation: int = 1,
        inplace: bool | None = True,
        bias: bool | None = None,
    ) -> None:
        if padding is None:
            padding = (kernel_size - 1) // 2 * dilation
        if bias is None:
            bias = norm_layer is None
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                padding,
                dilation=dilation,
                groups=groups,
                bias=bias,
            )
        ]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        if activation_layer is not None:
            layers.append(activation_layer(**({} if inplace is None else {"inplace": inplace})))
        super().__init__(*layers)
        self.out_channels = out_channels


def _mel(freq: torch.Tensor | float) -> torch.Tensor:
    """Kaldi's mel scale: 1127 ln(1 + f / 700)."""
    return 1127.0 * torch.log1p(torch.as_tensor(freq, dtype=torch.float32) / 700.0)


def get_mel_banks(
    num_bins: int,
    window_length_padded: int,
    sample_freq: float,
    low_freq: float,
    high_freq: float,
    vtln_low: float,
    vtln_high: float,
    vtln_warp_factor: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``torchaudio.compliance.kaldi.get_mel_banks`` without VTLN warping.

    Triangular filters evenly spaced on Kaldi's mel scale between ``low_freq``
    and ``high_freq`` (``high_freq <= 0`` counts back from Nyquist), sampled
    at the ``window_length_padded // 2`` FFT bin frequencies. Returns the
    filters (num_bins, window_length_padded // 2) and their centre
    frequencies in Hz. ``vtln_low`` / ``vtln_high`` only matter when warping.
    """
    if vtln_warp_factor != 1.0:
        raise NotImplementedError("this get_mel_banks supports only vtln_warp_factor=1.0")
    nyquist = 0.5 * sample_freq
    if high_freq <= 0.0:
        high_freq += nyquist
    if not 0.0 <= low_freq < high_freq <= nyquist:
        raise ValueError(f"bad mel band edges: low {low_freq}, high {high_freq}, nyquist {nyquist}")
    mel_low, mel_high = _mel(low_freq), _mel(high_freq)
    step = (mel_high - mel_low) / (num_bins + 1)
    edges = mel_low + step * torch.arange(num_bins + 2, dtype=torch.float32)
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    n_fft_bins = window_length_padded // 2
    bin_mel = _mel(sample_freq / window_length_padded * torch.arange(n_fft_bins))[None, :]
    rising = (bin_mel - left) / (centre - left)
    falling = (right - bin_mel) / (right - centre)
    banks = torch.minimum(rising, falling).clamp(min=0.0)
    centre_hz = 700.0 * torch.expm1(centre[:, 0] / 1127.0)
    return banks, centre_hz


class TrainingOnlyMask(nn.Module):
    """torchaudio's ``FrequencyMasking`` and ``TimeMasking``: SpecAugment masks that
    ``AugmentMelSTFT`` applies only in training; the benchmark runs eval, so never called."""

    def __init__(self, mask_param: int, iid_masks: bool = False) -> None:
        super().__init__()

    def forward(self, specgram: torch.Tensor, mask_value: float = 0.0) -> torch.Tensor:
        raise NotImplementedError("SpecAugment masks are training-only; the benchmark runs eval")


def _module(name: str, **attributes: object) -> types.ModuleType:
    module = types.ModuleType(name, f"{name}, as much of it as EfficientAT imports (bench shim)")
    module.__dict__.update(attributes)
    return module


def shim_modules() -> dict[str, types.ModuleType]:
    """``sys.modules`` entries for the names above, parents linked to children."""
    misc = _module("torchvision.ops.misc", ConvNormActivation=ConvNormActivation)
    ops = _module("torchvision.ops", misc=misc)
    torchvision = _module("torchvision", ops=ops, __version__="0+hear-ced-bench-shim")
    kaldi = _module("torchaudio.compliance.kaldi", get_mel_banks=get_mel_banks)
    compliance = _module("torchaudio.compliance", kaldi=kaldi)
    transforms = _module(
        "torchaudio.transforms", FrequencyMasking=TrainingOnlyMask, TimeMasking=TrainingOnlyMask
    )
    torchaudio = _module(
        "torchaudio",
        compliance=compliance,
        transforms=transforms,
        __version__="0+hear-ced-bench-shim",
    )
    modules = (torchvision, ops, misc, torchaudio, compliance, kaldi, transforms)
    return {module.__name__: module for module in modules}
