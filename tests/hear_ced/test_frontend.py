"""The log-mel frontend against an independent numpy/librosa reference, and its arithmetics."""

import librosa
import numpy as np
import pytest
import scipy.signal
import torch

from hear_ced.fast import synthetic_audio
from hear_ced.frontend import LogMelFrontend, mel_filterbank, power_to_db


def reference_log_mel(wave: np.ndarray) -> np.ndarray:
    """REFERENCE.md section 1 in float64 numpy: STFT by hand, librosa filters."""
    padded = np.pad(wave.astype(np.float64), 256, mode="reflect")
    n_frames = 1 + (len(padded) - 512) // 160
    frames = np.stack([padded[i * 160 : i * 160 + 512] for i in range(n_frames)])
    window = scipy.signal.get_window("hann", 512, fftbins=True)
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
    fb = librosa.filters.mel(sr=16000, n_fft=512, n_mels=64, fmin=0, fmax=8000, htk=True, norm=None)
    db = 10 * np.log10(np.maximum(fb @ power.T, 1e-10))
    return np.maximum(db, db.max() - 120.0)


def test_filterbank_matches_librosa():
    ours = mel_filterbank().numpy()
    theirs = librosa.filters.mel(
        sr=16000, n_fft=512, n_mels=64, fmin=0, fmax=8000, htk=True, norm=None
    )
    assert ours.shape == (257, 64)
    # Equal up to float32 rounding (librosa computes in float64).
    np.testing.assert_allclose(ours, theirs.T, atol=1e-5)


@pytest.mark.parametrize("seconds", [0.5, 1.37, 10.0])
def test_log_mel_matches_reference(seconds):
    rng = np.random.default_rng(0)
    n = int(seconds * 16000)
    t = np.arange(n) / 16000
    wave = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(n)
    ours = LogMelFrontend()(torch.tensor(wave, dtype=torch.float32)[None])[0].numpy()
    ref = reference_log_mel(wave)
    assert ours.shape == (64, 1 + n // 160) == ref.shape
    np.testing.assert_allclose(ours, ref, atol=5e-3)
    assert np.abs(ours - ref).mean() < 1e-4


def test_ten_seconds_give_1001_frames():
    assert LogMelFrontend()(torch.zeros(1, 160_000)).shape == (1, 64, 1001)


def test_floor_is_per_clip():
    """A quiet clip's features must not change when a loud clip joins the batch."""
    rng = np.random.default_rng(1)
    quiet = torch.tensor(1e-4 * rng.standard_normal(16000), dtype=torch.float32)
    silentish = quiet.clone()
    silentish[:8000] = 0.0  # forces the floor to matter
    loud = torch.tensor(0.9 * np.sign(rng.standard_normal(16000)), dtype=torch.float32)
    front = LogMelFrontend()
    alone = front(silentish[None])
    together = front(torch.stack([loud, silentish]))[1:]
    assert torch.equal(alone, together)
    assert alone.min() >= alone.max() - 120.0 - 1e-4


def float64_log_mel(audio: torch.Tensor) -> torch.Tensor:
    window = torch.hann_window(512, periodic=True, dtype=torch.float64)
    spec = torch.stft(audio.double(), 512, 160, 512, window, center=True, return_complex=True)
    power = spec.abs().pow(2).transpose(-1, -2) @ mel_filterbank().double()
    return power_to_db(power.transpose(-1, -2))


@pytest.mark.parametrize("arithmetic", ["fast", "conv"])
def test_each_arithmetic_gives_the_default_features_to_float32_rounding(arithmetic):
    """Each option is as close to a float64 frontend as the default, and agrees with it."""
    audio = synthetic_audio(2, seconds=3.0, seed=9)
    default = LogMelFrontend()(audio)
    other = LogMelFrontend(arithmetic)(audio)
    exact = float64_log_mel(audio)
    assert other.shape == default.shape
    assert (other - exact).abs().max() <= (default - exact).abs().max() + 1e-3
    # Away from the 120 dB floor region, where float32 rounding of tiny powers shows.
    loud = exact > exact.amax(dim=(1, 2), keepdim=True) - 60
    assert (other - default)[loud].abs().max() < 1e-3


def test_context_frames_are_dropped_before_the_floor():
    audio = synthetic_audio(2, seconds=2.0, seed=2)
    audio[:, :300] *= 1e5  # loud context: its frames must not set the kept frames' floor
    for arithmetic in ("default", "conv"):
        front = LogMelFrontend(arithmetic)
        want = power_to_db(front.power_mel(audio)[..., 4:-4])
        for context in (4, torch.tensor(4)):
            assert torch.equal(front(audio, context), want)
        assert not torch.equal(front(audio)[..., 4:-4], want)


def test_unknown_arithmetic_refused():
    with pytest.raises(ValueError, match="fft"):
        LogMelFrontend("fft")
