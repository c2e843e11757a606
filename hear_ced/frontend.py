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


def mel_filterbank(
    n_freqs: int = N_FFT // 2 + 1,
    n_mels: int = N_MELS,
    sample_rate: int = SAMPLE_RATE,
    f_min: float = F_MIN,
    f_max: float = F_MAX,
) -> torch.Tensor:
    """Triangular HTK filters without area normalisation, shape (n_freqs, n_mels).

    Computed in float32 in the same order of operations as the filterbank the
    published checkpoints were trained with, so the stored and the computed
    matrices agree to the last bits.
    """
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs)
    m_min = 2595.0 * math.log10(1.0 + f_min / 700.0)
    m_max = 2595.0 * math.log10(1.0 + f_max / 700.0)
    f_pts = mel_to_hz(torch.linspace(m_min, m_max, n_mels + 2))
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return torch.clamp(torch.minimum(down, up), min=0.0)


def decibels(power: torch.Tensor) -> torch.Tensor:
    """10*log10 of a power spectrogram, before any floor (values below ``AMIN`` clamped)."""
    return 10.0 * torch.log10(torch.clamp(power, min=AMIN))


def apply_floor(db: torch.Tensor, peak: torch.Tensor, top_db: float = TOP_DB) -> torch.Tensor:
    """``db`` raised to at least ``top_db`` below ``peak``.

    ``peak`` is the reference maximum in dB, broadcast against ``db`` (e.g.
    (B, 1, 1) for (B, n_mels, frames)).
    """
    return torch.maximum(db, peak - top_db)


def power_to_db(power: torch.Tensor, top_db: float = TOP_DB) -> torch.Tensor:
    """10*log10 with a floor ``top_db`` below each clip's own maximum.

    ``power`` is (..., n_mels, frames); the maximum is over the last two axes.
    """
    db = decibels(power)
    return apply_floor(db, db.amax(dim=(-2, -1), keepdim=True), top_db)


class LogMelFrontend(nn.Module):
    """(batch, samples) float waveform -> (batch, 64, frames) log-mel in dB.

    The window and filterbank are derived constants, kept as non-persistent
    buffers so checkpoints hold learnt weights only.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("window", torch.hann_window(N_FFT, periodic=True), persistent=False)
        self.register_buffer("mel_fb", mel_filterbank(), persistent=False)

    def spectrum(self, waveform: torch.Tensor) -> torch.Tensor:
        """Complex STFT (batch, freqs, frames) in float32; call outside autocast."""
        return torch.stft(
            waveform.float(),
            n_fft=N_FFT,
            hop_length=HOP_LENGTH,
            win_length=N_FFT,
            window=self.window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )

    def power_mel(self, waveform: torch.Tensor) -> torch.Tensor:
        # The STFT runs in float32 whatever the autocast context: the dB floor
        # and the filterbank need the dynamic range.
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            power = self.spectrum(waveform).abs().pow(2.0)
            return torch.matmul(power.transpose(-1, -2), self.mel_fb).transpose(-1, -2)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return power_to_db(self.power_mel(waveform))
