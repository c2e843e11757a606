"""The log-mel frontend against an independent numpy/librosa reference."""

import librosa
import numpy as np
import pytest
import scipy.signal
import torch

from hear_ced.frontend import LogMelFrontend, mel_filterbank


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
