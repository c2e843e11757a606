"""Waveforms -> CED log-mel features in numpy, for transformers' remote code.

The features of hear-ced: 16 kHz audio zero-padded to one patch (160 ms),
512-point periodic-Hann STFT with hop 160, centred with reflect padding,
power through 64 HTK mel bands (0-8 kHz, no area normalisation), 10*log10.
Each transformer pass of at most ``target_length`` frames is floored 120 dB
below its own peak, as ``hear-ced tag`` floors it, so a clip of one pass gets
exactly the features of hear-ced's frontend; frames left out of every pass
keep no floor, so the model can still take the whole clip's floor. Output
(batch, frames, mels), padded at the end, with an ``attention_mask`` of the
real frames. Audio at other rates is resampled with soxr where installed.
"""

from functools import cache

import numpy as np
from transformers import BatchFeature, SequenceFeatureExtractor

from .configuration_ced import pass_spans

TOP_DB = 120.0
AMIN = 1e-10
FRAMES_PER_BLOCK = 4096  # STFT frames computed at once: bounds memory on long clips


@cache
def mel_filterbank(sampling_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float):
    """Triangular HTK mel filters (n_fft // 2 + 1, n_mels), float32, without area normalisation."""
    freqs = np.linspace(0, sampling_rate // 2, n_fft // 2 + 1, dtype=np.float32)
    mels = np.linspace(*(2595.0 * np.log10(1.0 + f / 700.0) for f in (f_min, f_max)), n_mels + 2)
    edges = (700.0 * (10.0 ** (mels.astype(np.float32) / 2595.0) - 1.0)).astype(np.float32)
    widths = np.diff(edges)
    offsets = edges[None, :] - freqs[:, None]
    rising = -offsets[:, :-2] / widths[:-1]
    falling = offsets[:, 2:] / widths[1:]
    return np.maximum(np.minimum(rising, falling), 0.0).astype(np.float32)


class CedFeatureExtractor(SequenceFeatureExtractor):
    model_input_names = ["input_values", "attention_mask"]

    def __init__(
        self,
        feature_size: int = 64,
        sampling_rate: int = 16000,
        padding_value: float = 0.0,
        n_fft: int = 512,
        hop_size: int = 160,
        f_min: float = 0.0,
        f_max: float = 8000.0,
        target_length: int = 1012,
        patch_size: int = 16,
        return_attention_mask: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(
            feature_size=feature_size,
            sampling_rate=sampling_rate,
            padding_value=padding_value,
            return_attention_mask=return_attention_mask,
            **kwargs,
        )
        self.n_fft = n_fft
        self.hop_size = hop_size
        self.f_min = f_min
        self.f_max = f_max
        self.target_length = target_length
        self.patch_size = patch_size

    def __call__(self, raw_speech, sampling_rate: int | None = None, return_tensors=None, **kwargs):
        """One clip (1-D) or several (a list, or a 2-D array of equal lengths) at ``sampling_rate``."""
        if sampling_rate is None:
            raise ValueError(
                f"pass the audio's sampling_rate (this model takes {self.sampling_rate} Hz)"
            )
        listed = isinstance(raw_speech, (list, tuple)) and not np.isscalar(raw_speech[0])
        clips = list(raw_speech) if listed or np.ndim(raw_speech) == 2 else [raw_speech]
        mels = [self.log_mel(self.resample(self.checked(c), sampling_rate)) for c in clips]
        frames = max(len(mel) for mel in mels)
        values = np.full((len(mels), frames, self.feature_size), self.padding_value, np.float32)
        mask = np.zeros((len(mels), frames), np.int32)
        for i, mel in enumerate(mels):
            values[i, : len(mel)], mask[i, : len(mel)] = mel, 1
        return BatchFeature(
            {"input_values": values, "attention_mask": mask}, tensor_type=return_tensors
        )

    @staticmethod
    def checked(clip) -> np.ndarray:
        clip = np.asarray(clip.numpy(force=True) if hasattr(clip, "numpy") else clip)
        if clip.dtype.kind in "biu":
            raise ValueError(
                f"audio must be floating point in [-1, 1], got {clip.dtype}; "
                "scale integer PCM first (int16: divide by 32768)"
            )
        clip = clip.astype(np.float32)
        if clip.ndim != 1 or clip.size == 0:
            raise ValueError(f"each clip must be a non-empty 1-D waveform, got shape {clip.shape}")
        if not np.isfinite(clip).all():
            raise ValueError("the audio holds NaN or infinite samples")
        return clip

    def resample(self, clip: np.ndarray, rate: int) -> np.ndarray:
        """``clip`` at the model's rate: soxr's high-quality resampler, as hear-ced reads files."""
        if rate == self.sampling_rate:
            return clip
        if not (isinstance(rate, (int, float)) and rate > 0):
            raise ValueError(f"the sampling rate must be a positive number of Hz, got {rate!r}")
        try:
            import soxr
        except ImportError:
            raise ValueError(
                f"audio at {rate} Hz must be resampled to {self.sampling_rate} Hz, which needs "
                f"the soxr package (pip install soxr); or pass {self.sampling_rate} Hz audio"
            ) from None
        return soxr.resample(clip, rate, self.sampling_rate, quality="HQ").astype(np.float32)

    def log_mel(self, clip: np.ndarray) -> np.ndarray:
        """(frames, mels) dB of one 16 kHz clip, each pass floored at its own peak."""
        clip = np.pad(clip, (0, max(0, self.patch_size * self.hop_size - clip.size)))
        padded = np.pad(clip, self.n_fft // 2, mode="reflect")
        frames = np.lib.stride_tricks.sliding_window_view(padded, self.n_fft)[:: self.hop_size]
        window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(self.n_fft) / self.n_fft)).astype(
            np.float32
        )
        filters = mel_filterbank(
            self.sampling_rate, self.n_fft, self.feature_size, self.f_min, self.f_max
        )
        power = []
        for start in range(0, len(frames), FRAMES_PER_BLOCK):
            spectrum = np.fft.rfft(frames[start : start + FRAMES_PER_BLOCK] * window)
            power.append((spectrum.real**2 + spectrum.imag**2).astype(np.float32) @ filters)
        db = 10.0 * np.log10(np.maximum(np.concatenate(power), AMIN))
        for start, end in pass_spans(len(db), self.target_length, self.patch_size):
            db[start:end] = np.maximum(db[start:end], db[start:end].max() - TOP_DB)
        return db.astype(np.float32)
