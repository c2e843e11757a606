"""Waveform -> log-mel features, in plain torch.

CED's features: 16 kHz audio, 512-point STFT (periodic Hann, hop 160,
centred with reflect padding), power spectrum, 64 HTK mel bands over
0-8 kHz without filter normalisation, 10*log10 with a floor 120 dB below the
loudest bin.  The floor is taken per clip (the original took it over the
whole batch, so a clip's features depended on its batch mates).  A clip of
n samples gives 1 + n // 160 frames (10 s: 1001).

The dB rule lives in ``decibels`` and ``apply_floor``; ``power_to_db`` (the
model's features) floors each clip at its own maximum, and a caller whose
floor comes from elsewhere (``hear_ced.published``: one floor over all the
windows of a clip) passes that maximum to ``apply_floor`` itself.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hear_ced.specs import HOP_LENGTH, N_FFT, SAMPLE_RATE  # re-exported: the torch-free home

N_MELS = 64
F_MIN = 0.0
F_MAX = 8_000.0
TOP_DB = 120.0
AMIN = 1e-10


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    """Inverse of the HTK mel scale, mel = 2595 log10(1 + hz / 700)."""
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank() -> torch.Tensor:
    """Triangular HTK filters without area normalisation, shape (257 freqs, 64 mels).

    Computed in float32 in the same order of operations as the filterbank the
    published checkpoints were trained with, so the stored and the computed
    matrices agree to the last bits.
    """
    all_freqs = torch.linspace(0, SAMPLE_RATE // 2, N_FFT // 2 + 1)
    m_min = 2595.0 * math.log10(1.0 + F_MIN / 700.0)
    m_max = 2595.0 * math.log10(1.0 + F_MAX / 700.0)
    f_pts = mel_to_hz(torch.linspace(m_min, m_max, N_MELS + 2))
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return torch.clamp(torch.minimum(down, up), min=0.0)


def decibels(power: torch.Tensor) -> torch.Tensor:
    """10*log10 of a power spectrogram, before any floor (values below ``AMIN`` clamped)."""
    return 10.0 * torch.log10(torch.clamp(power, min=AMIN))


def apply_floor(db: torch.Tensor, peak: torch.Tensor) -> torch.Tensor:
    """``db`` raised to at least ``TOP_DB`` below ``peak``.

    ``peak`` is the reference maximum in dB, broadcast against ``db`` (e.g.
    (B, 1, 1) for (B, n_mels, frames)).
    """
    return torch.maximum(db, peak - TOP_DB)


def power_to_db(power: torch.Tensor) -> torch.Tensor:
    """10*log10 with a floor ``TOP_DB`` below each clip's own maximum.

    ``power`` is (..., n_mels, frames); the maximum is over the last two axes.
    """
    db = decibels(power)
    return apply_floor(db, db.amax(dim=(-2, -1), keepdim=True))


ARITHMETICS: tuple[str, ...] = ("default", "fast", "conv")


class LogMelFrontend(nn.Module):
    """(batch, samples) float waveform -> (batch, 64, frames) log-mel in dB.

    ``arithmetic`` chooses how the same features are computed:

    - ``default``: ``torch.stft``, the power spectrum as ``abs(z)**2``, the
      filterbank as a matmul over frequencies. The arithmetic the published
      weights and the pinned HEAR embeddings use.
    - ``fast``: the power as re^2 + im^2 (``z * conj(z)``), which skips the
      square root that ``abs`` takes and the square then undoes, with the
      filterbank matmul in the time-major layout the spectrum comes in
      (``hear_ced.fast``). Differs from ``default`` by float32 rounding.
    - ``conv``: the STFT as a strided ``conv1d`` with a fixed basis (periodic
      Hann window times cos / -sin, built in float64 and rounded to float32)
      over the frequency bins the filterbank uses, and the filterbank as a 1x1
      ``conv1d``: ONNX has no STFT, and int8 quantisation, which targets
      MatMul/Gemm, leaves the frontend float32 (``hear_ced.export``). Differs
      from ``default`` by float32 rounding.

    The window, basis and filterbank are derived constants, kept as
    non-persistent buffers so checkpoints hold learnt weights only.
    """

    def __init__(self, arithmetic: str = "default") -> None:
        super().__init__()
        if arithmetic not in ARITHMETICS:
            raise ValueError(
                f"unknown frontend arithmetic {arithmetic!r}; choose one of {', '.join(ARITHMETICS)}"
            )
        self.arithmetic = arithmetic
        fb = mel_filterbank()  # (freqs, mels)
        if arithmetic == "conv":
            used = torch.nonzero(fb.abs().sum(dim=1) > 0).squeeze(1)
            n = torch.arange(N_FFT, dtype=torch.float64)
            angle = 2 * torch.pi * torch.outer(used.double(), n) / N_FFT  # (bins, n_fft)
            window = torch.hann_window(N_FFT, periodic=True, dtype=torch.float64)
            basis = torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window])
            self.register_buffer("basis", basis.float().unsqueeze(1), persistent=False)
            fb = fb[used].T.contiguous().unsqueeze(-1)  # (mels, bins, 1): conv1d weights
        else:
            window = torch.hann_window(N_FFT, periodic=True)
            self.register_buffer("window", window, persistent=False)
        self.register_buffer("mel_fb", fb, persistent=False)

    def power_mel(self, waveform: torch.Tensor) -> torch.Tensor:
        """Mel power (batch, 64, frames), before decibels."""
        # float32 whatever the autocast context: the dB floor and the filterbank
        # need the dynamic range.
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            if self.arithmetic == "conv":
                padded = F.pad(waveform.unsqueeze(1), (N_FFT // 2, N_FFT // 2), mode="reflect")
                spec = F.conv1d(padded, self.basis, stride=HOP_LENGTH)  # (B, 2 * bins, frames)
                real, imag = spec.chunk(2, dim=1)
                return F.conv1d(real * real + imag * imag, self.mel_fb)
            spec = torch.stft(
                waveform.float(),
                n_fft=N_FFT,
                hop_length=HOP_LENGTH,
                win_length=N_FFT,
                window=self.window,
                center=True,
                pad_mode="reflect",
                return_complex=True,
            )
            if self.arithmetic == "fast":
                frames = spec.transpose(-1, -2)  # (B, frames, freqs)
                power = (frames * frames.conj()).real
                return torch.matmul(power, self.mel_fb).transpose(-1, -2)
            power = spec.abs().pow(2.0)
            return torch.matmul(power.transpose(-1, -2), self.mel_fb).transpose(-1, -2)

    def forward(
        self, waveform: torch.Tensor, context_frames: torch.Tensor | int = 0
    ) -> torch.Tensor:
        """Log-mel of ``waveform`` without ``context_frames`` frames at each end.

        Context frames are dropped before the dB floor, so the floor is the kept
        frames' (``hear_ced.runtime.pass_inputs``); a tensor count stays an input
        of an exported graph.
        """
        power = self.power_mel(waveform)
        if isinstance(context_frames, torch.Tensor) or context_frames:
            end = power.shape[-1] - context_frames
            kept = torch.arange(context_frames, end, device=power.device)
            power = power.index_select(-1, kept)
        return power_to_db(power)
