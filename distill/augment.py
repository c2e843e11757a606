"""Seeded augmentation: pure functions of (input, seed, config).

Consistent distillation needs the student to see exactly the input the
teachers saw, possibly years later, on another machine, in a batch of another
size. So no augmentation draws from a stateful generator: every random number
is a hash of (seed, stream, counter) computed in integer arithmetic, which
gives the same bits in numpy and in torch on any device. Mask positions are
derived in integers too, so no float rounding can move a mask by one frame.

The random numbers are 24-bit integers ``h``; the uniform variate is
``h / 2**24`` (exact in float32 and float64).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import betaincinv

from hear_ced.common.config import ConfigError, checked, in_range, non_negative, positive
from hear_ced.frontend import HOP_LENGTH, SAMPLE_RATE

_MASK32 = 0xFFFFFFFF
UNIFORM_BITS = 24
_UNIFORM_SCALE = 1 << UNIFORM_BITS

# Streams keep the random numbers of unrelated decisions independent.
STREAM_EPOCH = 1
STREAM_SHIFT = 2
STREAM_MIXUP = 3
STREAM_TIME_MASK = 4
STREAM_FREQ_MASK = 5

# Integer mask arithmetic needs h * size * 2**24 < 2**63.
MAX_MASKED_AXIS = 1 << 15
# A time mask may hide at most this share of a clip's frames (the recipe's
# 192 of 1001 frames of a 10 s clip is 19 %).
MAX_TIME_MASK_FRACTION = 0.5


@dataclass(frozen=True)
class AugmentConfig:
    """What augmentation is applied; defaults are the original CED values.

    ``wave`` switches the waveform shift, ``spec`` the time/frequency masks,
    ``mixup`` the consistent mixup (partner row and lambda from the seed,
    lambda ~ Beta(mixup_alpha, mixup_alpha), applied with ``mixup_p``).
    """

    wave: bool = True
    spec: bool = True
    mixup: bool = False
    shift_p: float = 0.5
    shift_max_fraction: float = 0.5
    time_mask_width: int = 192
    freq_mask_width: int = 24
    time_masks: int = 1
    freq_masks: int = 1
    mask_value: float = 0.0
    mixup_p: float = 0.5
    mixup_alpha: float = 0.5

    def __post_init__(self) -> None:
        # Code builds augmentations directly (ablation rows, stored headers): check them then too.
        checked(self)

    def validate(self) -> None:
        non_negative(self, "time_mask_width", "freq_mask_width", "time_masks", "freq_masks")
        in_range(self, "shift_p", 0, 1)
        in_range(self, "mixup_p", 0, 1)
        in_range(self, "shift_max_fraction", 0, 0.5)
        positive(self, "mixup_alpha")

    @classmethod
    def none(cls) -> AugmentConfig:
        """No augmentation at all (evaluation, ablations)."""
        return cls(wave=False, spec=False, mixup=False)


def check_time_mask(cfg: AugmentConfig, clip_seconds: float, width_key: str, clip_key: str) -> None:
    """Refuse a time mask wider than MAX_TIME_MASK_FRACTION of the clip's frames.

    Refused rather than narrowed: the augmentation is part of what stored
    teacher logits were made with, so a silently changed width would have to
    be changed identically by every later run that reads them.
    """
    if not cfg.spec or cfg.time_masks == 0:
        return
    frames = int(round(clip_seconds * SAMPLE_RATE)) // HOP_LENGTH + 1
    limit = int(MAX_TIME_MASK_FRACTION * frames)
    if cfg.time_mask_width > limit:
        raise ConfigError(
            f"a time mask of up to {cfg.time_mask_width} frames is wider than half of the "
            f"{frames} frames of a {clip_seconds:g} s clip ({clip_key}); use at most {limit} "
            f"(the recipe's 192 of 1001 frames scales to {round(192 * frames / 1001)})",
            key=width_key,
        )


def _mul32(x, constant: int):
    """(x * constant) mod 2**32 for 0 <= x < 2**32 without int64 overflow."""
    low = x * (constant & 0xFFFF)
    high = ((x * (constant >> 16)) & 0xFFFF) << 16
    return (low + high) & _MASK32


def _mix32(x):
    """A 32-bit integer finaliser (xorshift-multiply); works on ints, numpy and torch int64."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def hash32(seed, stream: int, counter):
    """32-bit hash of (seed, stream, counter); arguments broadcast, int64 in and out."""
    h = _mix32((seed & _MASK32) ^ 0x9E3779B9)
    h = _mix32(h ^ (stream & _MASK32))
    return _mix32(h ^ ((counter & _MASK32) ^ 0x85EBCA6B))


def random_bits(seeds, stream: int, n: int):
    """(B, n) 24-bit integers for B seeds; numpy in -> numpy out, torch in -> torch out."""
    if isinstance(seeds, torch.Tensor):
        seeds = seeds.to(torch.int64).reshape(-1, 1)
        counter = torch.arange(n, dtype=torch.int64, device=seeds.device).reshape(1, -1)
    else:
        seeds = np.asarray(seeds, dtype=np.int64).reshape(-1, 1)
        counter = np.arange(n, dtype=np.int64).reshape(1, -1)
    return hash32(seeds, stream, counter) >> (32 - UNIFORM_BITS)


def epoch_seeds(run_seed: int, epoch: int, n_rows: int) -> np.ndarray:
    """The per-row seeds of one epoch, int32 (the stored type), from (run seed, epoch, row)."""
    rows = np.arange(n_rows, dtype=np.int64)
    epoch_key = int(hash32(run_seed, STREAM_EPOCH, epoch))
    return hash32(epoch_key, STREAM_EPOCH, rows).astype(np.uint32).view(np.int32)


def shift_wave(wave: np.ndarray, seed: int, cfg: AugmentConfig) -> np.ndarray:
    """Roll the clip by a fraction in [-max, max) of its length, with probability shift_p."""
    if not cfg.wave or cfg.shift_p == 0.0 or cfg.shift_max_fraction == 0.0:
        return wave
    gate, amount = random_bits(np.int64(seed), STREAM_SHIFT, 2)[0]
    if gate / _UNIFORM_SCALE >= cfg.shift_p:
        return wave
    n = wave.shape[-1]
    span = int(2 * cfg.shift_max_fraction * n)
    shift = (int(amount) * span >> UNIFORM_BITS) - span // 2
    return np.roll(wave, shift, axis=-1)


def mixup_partner(seed: int, n_rows: int, cfg: AugmentConfig) -> tuple[int, float]:
    """The row mixed into a row and the row's own weight lambda; (-1, 1.0) when not mixed.

    Mixed input is ``lam * own + (1 - lam) * partner``; the same seed always
    gives the same partner and lambda, so teacher and student see one mixture.
    """
    if not cfg.mixup or n_rows < 2:
        return -1, 1.0
    gate, which, draw = random_bits(np.int64(seed), STREAM_MIXUP, 3)[0]
    if gate / _UNIFORM_SCALE >= cfg.mixup_p:
        return -1, 1.0
    partner = int(which) * n_rows >> UNIFORM_BITS
    # Inverse-CDF sampling keeps lambda a pure function of one uniform.
    u = (int(draw) + 0.5) / _UNIFORM_SCALE
    lam = float(betaincinv(cfg.mixup_alpha, cfg.mixup_alpha, u))
    return partner, lam


def mask_spans(bits_width, bits_start, size: int, max_width: int):
    """Start and width of masks on an axis of ``size`` from 24-bit draws.

    The original rule with u = bits / 2**24: width = floor(u1 * W),
    start = floor(u2 * (size - u1 * W)), W = min(max_width, size); evaluated
    exactly in integers.
    """
    if size >= MAX_MASKED_AXIS:
        raise ValueError(f"cannot mask an axis of {size} >= {MAX_MASKED_AXIS} positions")
    w = min(max_width, size)
    scaled = bits_width * w
    width = scaled >> UNIFORM_BITS
    start = (bits_start * ((size << UNIFORM_BITS) - scaled)) >> (2 * UNIFORM_BITS)
    return start, width


def _axis_mask(seeds: torch.Tensor, stream: int, count: int, size: int, max_width: int):
    """(B, size) bool: positions covered by any of ``count`` masks."""
    bits = random_bits(seeds, stream, 2 * count)
    positions = torch.arange(size, device=seeds.device).reshape(1, 1, size)
    start, width = mask_spans(bits[:, 0::2], bits[:, 1::2], size, max_width)
    start, width = start.unsqueeze(-1), width.unsqueeze(-1)
    return ((positions >= start) & (positions < start + width)).any(dim=1)


def spec_augment(mel: torch.Tensor, seeds: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    """Time and frequency masks on a (B, F, T) dB spectrogram, filled with ``mask_value``.

    Batched on the spectrogram's device; each item depends only on its own
    seed, so any batch composition gives the same bits per item.
    """
    if not cfg.spec or (cfg.time_masks == 0 and cfg.freq_masks == 0):
        return mel
    if mel.ndim != 3 or seeds.shape != mel.shape[:1]:
        raise ValueError(
            f"spec_augment expects mel (B, F, T) and seeds (B,), got {tuple(mel.shape)} "
            f"and {tuple(seeds.shape)}"
        )
    seeds = seeds.to(device=mel.device, dtype=torch.int64)
    _, n_freq, n_time = mel.shape
    masked = torch.zeros(mel.shape, dtype=torch.bool, device=mel.device)
    if cfg.time_masks:
        time = _axis_mask(seeds, STREAM_TIME_MASK, cfg.time_masks, n_time, cfg.time_mask_width)
        masked |= time.unsqueeze(1)
    if cfg.freq_masks:
        freq = _axis_mask(seeds, STREAM_FREQ_MASK, cfg.freq_masks, n_freq, cfg.freq_mask_width)
        masked |= freq.unsqueeze(2)
    return mel.masked_fill(masked, cfg.mask_value)
