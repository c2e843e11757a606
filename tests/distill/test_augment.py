import subprocess
import sys

import numpy as np
import pytest
import torch

from hear_ced.common.config import from_dict, to_plain
from hear_ced.distill.augment import (
    STREAM_FREQ_MASK,
    STREAM_TIME_MASK,
    AugmentConfig,
    epoch_seeds,
    mask_spans,
    mixup_partner,
    random_bits,
    shift_wave,
    spec_augment,
)

CFG = AugmentConfig(time_mask_width=40, freq_mask_width=24)


def _mels(n: int, frames: int = 151) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, 64, frames, generator=generator) * 20 - 40


def test_random_bits_agree_between_numpy_and_torch_and_are_uniform():
    seeds = np.arange(-50, 2000, dtype=np.int64)
    from_numpy = random_bits(seeds, 7, 3)
    from_torch = random_bits(torch.from_numpy(seeds), 7, 3).numpy()
    assert np.array_equal(from_numpy, from_torch)
    assert from_numpy.min() >= 0 and from_numpy.max() < 2**24
    assert abs(from_numpy.mean() / 2**24 - 0.5) < 0.02
    assert not np.array_equal(random_bits(seeds, 8, 3), from_numpy)
    # Counter-based: the first values do not depend on how many are drawn.
    assert np.array_equal(random_bits(seeds, 7, 5)[:, :3], from_numpy)


def test_epoch_seeds_are_deterministic_int32_and_differ_by_epoch_and_run():
    first = epoch_seeds(3, 0, 1000)
    assert first.dtype == np.int32 and first.shape == (1000,)
    assert np.array_equal(first, epoch_seeds(3, 0, 1000))
    assert np.array_equal(first[:10], epoch_seeds(3, 0, 10))
    assert (first != epoch_seeds(3, 1, 1000)).mean() > 0.99
    assert (first != epoch_seeds(4, 0, 1000)).mean() > 0.99
    assert len(np.unique(first)) > 995


def test_mask_rule_matches_the_original_formula():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 1 << 24, size=(2, 5000), dtype=np.int64)
    for size, max_width in ((1001, 192), (64, 24), (101, 192)):
        start, width = mask_spans(bits[0], bits[1], size, max_width)
        u1, u2 = bits[0] / 2**24, bits[1] / 2**24
        w = min(size, max_width)
        assert np.array_equal(width, np.floor(u1 * w).astype(np.int64))
        assert np.array_equal(start, np.floor(u2 * (size - u1 * w)).astype(np.int64))
        assert (start >= 0).all() and (start + width <= size).all()
    # Hand-worked values: u1 = 0.5, u2 = 0.25 on 1001 frames, width 192.
    start, width = mask_spans(np.int64(1 << 23), np.int64(1 << 22), 1001, 192)
    assert (int(start), int(width)) == (226, 96)


def test_spec_augment_masks_where_the_rule_says():
    mel = _mels(6)
    seeds = torch.tensor([1, 2, 3, -4, 2**31 - 1, 123456789])
    out = spec_augment(mel, seeds, CFG)
    time_bits = random_bits(seeds.numpy(), STREAM_TIME_MASK, 2)
    freq_bits = random_bits(seeds.numpy(), STREAM_FREQ_MASK, 2)
    t_start, t_width = mask_spans(time_bits[:, 0], time_bits[:, 1], 151, 40)
    f_start, f_width = mask_spans(freq_bits[:, 0], freq_bits[:, 1], 64, 24)
    for i in range(6):
        expected = torch.zeros(64, 151, dtype=torch.bool)
        expected[:, t_start[i] : t_start[i] + t_width[i]] = True
        expected[f_start[i] : f_start[i] + f_width[i], :] = True
        assert torch.equal(out[i] == 0, expected)
        assert torch.equal(out[i][~expected], mel[i][~expected])
    assert (t_width > 0).any() and (f_width > 0).any()


def test_spec_augment_is_identical_for_any_batch_composition():
    mel = _mels(8)
    seeds = torch.from_numpy(epoch_seeds(0, 2, 8).astype(np.int64))
    whole = spec_augment(mel, seeds, CFG)
    for size in (1, 3, 5):
        parts = [
            spec_augment(mel[i : i + size], seeds[i : i + size], CFG) for i in range(0, 8, size)
        ]
        assert torch.equal(torch.cat(parts), whole)
    order = torch.randperm(8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(spec_augment(mel[order], seeds[order], CFG), whole[order])
    assert torch.equal(spec_augment(mel, seeds, AugmentConfig(spec=False)), mel)


_CHILD = """
import sys, numpy as np, torch
from hear_ced.distill.augment import AugmentConfig, epoch_seeds, spec_augment
torch.set_num_threads(1)
mel = torch.randn(8, 64, 151, generator=torch.Generator().manual_seed(0)) * 20 - 40
seeds = torch.from_numpy(epoch_seeds(0, 2, 8).astype(np.int64))
cfg = AugmentConfig(time_mask_width=40, freq_mask_width=24)
out = torch.cat([spec_augment(mel[i:i + 3], seeds[i:i + 3], cfg) for i in range(0, 8, 3)])
np.save(sys.argv[1], out.numpy())
"""


def test_spec_augment_is_identical_in_a_new_process(tmp_path):
    target = tmp_path / "child.npy"
    subprocess.run([sys.executable, "-c", _CHILD, str(target)], check=True, timeout=120)
    seeds = torch.from_numpy(epoch_seeds(0, 2, 8).astype(np.int64))
    here = spec_augment(_mels(8), seeds, CFG).numpy()
    assert np.array_equal(np.load(target), here)


def test_shift_rolls_half_the_time_within_half_the_clip():
    wave = np.arange(1000, dtype=np.float32)
    cfg = AugmentConfig()
    shifts = []
    for seed in range(400):
        out = shift_wave(wave, seed, cfg)
        assert np.array_equal(out, shift_wave(wave, seed, cfg))
        amount = int(np.argmin(out))  # where sample 0 went
        assert np.array_equal(out, np.roll(wave, amount))
        shifts.append(amount if amount < 500 else amount - 1000)
    shifts = np.array(shifts)
    moved = shifts != 0
    assert 0.4 < moved.mean() < 0.6
    assert shifts.min() >= -500 and shifts.max() < 500
    assert shifts.min() < -300 and shifts.max() > 300
    assert np.array_equal(shift_wave(wave, 5, AugmentConfig(wave=False)), wave)


def test_mixup_partner_and_lambda_come_from_the_seed():
    cfg = AugmentConfig(mixup=True, mixup_p=0.5)
    draws = [mixup_partner(seed, 50, cfg) for seed in range(400)]
    assert draws == [mixup_partner(seed, 50, cfg) for seed in range(400)]
    mixed = [(p, lam) for p, lam in draws if p >= 0]
    assert 0.4 < len(mixed) / len(draws) < 0.6
    assert all(0 <= p < 50 and 0.0 < lam < 1.0 for p, lam in mixed)
    assert len({p for p, _ in mixed}) > 30
    assert all(p == -1 and lam == 1.0 for p, lam in draws if p < 0)
    assert mixup_partner(3, 50, AugmentConfig(mixup=False)) == (-1, 1.0)


def test_config_validation_names_the_key():
    assert from_dict(AugmentConfig, to_plain(CFG), "augment") == CFG
    with pytest.raises(ValueError, match="time_mask_wdth"):
        from_dict(AugmentConfig, {"time_mask_wdth": 3}, "augment")
    with pytest.raises(ValueError, match="shift_p"):
        AugmentConfig(shift_p=1.5)
    with pytest.raises(ValueError, match="freq_mask_width"):
        AugmentConfig(freq_mask_width="24")
    with pytest.raises(ValueError, match="spec_augment expects"):
        spec_augment(_mels(2), torch.tensor([1, 2, 3]), CFG)
