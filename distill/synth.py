"""A procedurally generated, AudioSet-like multi-label corpus.

Each class has its own acoustic structure (steady tones, sweeps, impulse
trains, coloured noise, modulated and inharmonic sounds), so a small model
can learn them in minutes, while clips still look like AudioSet: several
overlapping events over background noise at varied SNR, a class-label CSV in
AudioSet's format and ``;``-separated label indices. Everything derives from
one seed through per-clip generators, so a clip does not depend on how many
others are made.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import signal

from hear_ced.common.files import write_text

DEFAULT_RATE = 16_000
EDGE_SECONDS = 0.01
BACKGROUND_RMS = 0.02
PEAK_LIMIT = 0.9
SNR_DB = (0.0, 20.0)  # range of each event's level over the background


@dataclass(frozen=True)
class Event:
    """One sound event in a clip: class, time span in seconds, frequency band in Hz.

    The band holds the central 90 % of the event's energy (as mixed into the
    clip), so an annotation says where in the spectrogram the event lives.
    """

    class_index: int
    onset_s: float
    offset_s: float
    low_hz: float = 0.0
    high_hz: float = 0.0


def _time(n: int, sr: int) -> np.ndarray:
    return np.arange(n) / sr


def _sweep(f0: float, f1: float, n: int, sr: int) -> np.ndarray:
    """Exponential sweep f0 -> f1 (phase integrated, no clicks)."""
    freq = f0 * (f1 / f0) ** np.linspace(0.0, 1.0, n)
    return np.sin(2 * np.pi * np.cumsum(freq) / sr)


def _harmonics(
    f0: float, t: np.ndarray, count: int, decay: float, odd_only: bool = False
) -> np.ndarray:
    nyquist = 0.45 / (t[1] - t[0]) if len(t) > 1 else 7200.0
    steps = range(1, 2 * count, 2) if odd_only else range(1, count + 1)
    return sum(np.sin(2 * np.pi * f0 * h * t) / h**decay for h in steps if f0 * h < nyquist)


def _impulses(times_s: np.ndarray, n: int, sr: int, ring_hz: float, ring_s: float) -> np.ndarray:
    """Damped resonances (ringing at ``ring_hz``) at the given times."""
    out = np.zeros(n)
    length = max(1, int(ring_s * sr))
    kernel = np.sin(2 * np.pi * ring_hz * _time(length, sr)) * np.exp(
        -_time(length, sr) / (ring_s / 5)
    )
    for start in (times_s * sr).astype(int):
        if 0 <= start < n:
            stop = min(n, start + length)
            out[start:stop] += kernel[: stop - start]
    return out


def _band_noise(rng: np.random.Generator, n: int, sr: int, low: float, high: float) -> np.ndarray:
    sos = signal.butter(4, [low, min(high, 0.49 * sr)], btype="bandpass", fs=sr, output="sos")
    return signal.sosfilt(sos, rng.standard_normal(n))


def _coloured_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Noise with power ~ 1/f**exponent (0 white, 1 pink, 2 brown)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.arange(len(spectrum), dtype=np.float64)
    freqs[0] = 1.0
    return np.fft.irfft(spectrum / freqs ** (exponent / 2), n)


def _gate(n: int, sr: int, rate_hz: float, duty: float) -> np.ndarray:
    return ((_time(n, sr) * rate_hz) % 1.0 < duty).astype(np.float64)


Renderer = Callable[[np.random.Generator, int, int], np.ndarray]


def _tone(rng, n, sr, hz: tuple[float, float]):
    return np.sin(2 * np.pi * rng.uniform(*hz) * _time(n, sr))


def _chirp(rng, n, sr, start_hz: tuple[float, float], end_hz: tuple[float, float]):
    return _sweep(rng.uniform(*start_hz), rng.uniform(*end_hz), n, sr)


def _white_noise(rng, n, sr):
    return rng.standard_normal(n)


def _pink_noise(rng, n, sr):
    return _coloured_noise(rng, n, 1.0)


def _brown_noise(rng, n, sr):
    return _coloured_noise(rng, n, 2.0)


def _pulses(rng, n, sr, rate_hz: tuple[float, float], ring_hz: tuple[float, float], ring_s: float):
    period = 1.0 / rng.uniform(*rate_hz)
    return _impulses(np.arange(0, n / sr, period), n, sr, rng.uniform(*ring_hz), ring_s)


def _vowel(rng, n, sr):
    return _harmonics(rng.uniform(100, 180), _time(n, sr), 30, 1.0)


def _square(rng, n, sr):
    return _harmonics(rng.uniform(400, 600), _time(n, sr), 8, 1.0, odd_only=True)


def _tremolo(rng, n, sr):
    t = _time(n, sr)
    return np.sin(2 * np.pi * rng.uniform(900, 1300) * t) * (
        0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(4, 8) * t)
    )


def _vibrato(rng, n, sr):
    t = _time(n, sr)
    rate, depth, centre = rng.uniform(5, 8), rng.uniform(150, 300), rng.uniform(1600, 2200)
    freq = centre + depth * np.sin(2 * np.pi * rate * t)
    return np.sin(2 * np.pi * np.cumsum(freq) / sr)


def _band_hiss(rng, n, sr):
    centre = rng.uniform(900, 1300)
    return _band_noise(rng, n, sr, centre * 0.85, centre * 1.15)


def _high_hiss(rng, n, sr):
    return _band_noise(rng, n, sr, 5500, 7800)


def _knocks(rng, n, sr):
    times = np.arange(0, n / sr, rng.uniform(0.25, 0.5))
    return _impulses(times, n, sr, rng.uniform(120, 220), 0.12)


def _bell(rng, n, sr):
    t = _time(n, sr)
    base = rng.uniform(500, 900)
    partials = (1.0, 2.76, 5.40, 8.93)
    tone = sum(
        np.sin(2 * np.pi * base * p * t) / (i + 1)
        for i, p in enumerate(partials)
        if base * p < 0.45 * sr
    )
    # Struck once a second, decaying in between.
    return tone * np.exp(-(t % 1.0) * rng.uniform(3, 6))


def _siren(rng, n, sr):
    t = _time(n, sr)
    freq = 1000 + 400 * np.sin(2 * np.pi * rng.uniform(0.3, 0.6) * t)
    return np.sin(2 * np.pi * np.cumsum(freq) / sr)


def _beeps(rng, n, sr):
    return np.sin(2 * np.pi * rng.uniform(700, 800) * _time(n, sr)) * _gate(
        n, sr, rng.uniform(3, 5), 0.5
    )


def _rain(rng, n, sr):
    times = np.sort(rng.uniform(0, n / sr, size=int(rng.uniform(150, 250) * n / sr)))
    return _impulses(times, n, sr, rng.uniform(4500, 6000), 0.002)


def _two_tone(rng, n, sr):
    low, high = rng.uniform(400, 450), rng.uniform(580, 650)
    freq = np.where(_gate(n, sr, rng.uniform(1.2, 2.0), 0.5) > 0, high, low)
    return np.sin(2 * np.pi * np.cumsum(freq) / sr)


def _noise_steps(rng, n, sr):
    return _band_noise(rng, n, sr, 300, 2500) * _gate(n, sr, rng.uniform(1.5, 2.5), 0.15)


def _chord(rng, n, sr):
    t = _time(n, sr)
    return sum(
        np.sin(2 * np.pi * f * t)
        for f in (rng.uniform(1300, 1400), 1900 + rng.uniform(0, 80), 2700)
    )


def _engine(rng, n, sr):
    t = _time(n, sr)
    hum = _harmonics(rng.uniform(45, 70), t, 20, 0.7)
    return hum * (0.7 + 0.3 * np.sin(2 * np.pi * rng.uniform(10, 20) * t))


_CLASSES: list[tuple[str, Renderer]] = [
    ("Low tone", partial(_tone, hz=(180, 320))),
    ("High tone", partial(_tone, hz=(2500, 4000))),
    ("Rising chirp", partial(_chirp, start_hz=(200, 500), end_hz=(3000, 6000))),
    ("Falling chirp", partial(_chirp, start_hz=(3000, 6000), end_hz=(200, 500))),
    ("White noise", _white_noise),
    ("Pink noise", _pink_noise),
    ("Brown noise", _brown_noise),
    ("Slow clicks", partial(_pulses, rate_hz=(3, 8), ring_hz=(2000, 3000), ring_s=0.004)),
    ("Buzz", partial(_pulses, rate_hz=(60, 110), ring_hz=(800, 1200), ring_s=0.003)),
    ("Vowel", _vowel),
    ("Square wave", _square),
    ("Tremolo tone", _tremolo),
    ("Vibrato tone", _vibrato),
    ("Band hiss", _band_hiss),
    ("High hiss", _high_hiss),
    ("Knocking", _knocks),
    ("Bell", _bell),
    ("Siren", _siren),
    ("Beeping", _beeps),
    ("Rain", _rain),
    ("Two-tone horn", _two_tone),
    ("Footsteps", _noise_steps),
    ("Chord", _chord),
    ("Engine", _engine),
]

SYNTH_CLASSES: list[str] = [name for name, _ in _CLASSES]


def render_event(
    class_index: int, duration_s: float, rng: np.random.Generator, sample_rate: int = DEFAULT_RATE
) -> np.ndarray:
    """One event of a class, float32 mono, unit RMS, with 10 ms fades at both ends.

    The class fixes the structure; ``rng`` draws its parameters (pitch,
    rates, noise), so events of a class vary but stay recognisable.
    """
    if not 0 <= class_index < len(_CLASSES):
        raise ValueError(f"class_index {class_index} outside 0..{len(_CLASSES) - 1}")
    n = int(round(duration_s * sample_rate))
    if n <= 0:
        raise ValueError(f"event duration must be positive, got {duration_s} s")
    wave = np.asarray(_CLASSES[class_index][1](rng, n, sample_rate), dtype=np.float64)
    edge = min(int(EDGE_SECONDS * sample_rate), n // 2)
    if edge:
        ramp = np.linspace(0.0, 1.0, edge)
        wave[:edge] *= ramp
        wave[n - edge :] *= ramp[::-1]
    rms = np.sqrt(np.mean(wave**2))
    return (wave / max(rms, 1e-12)).astype(np.float32)


def energy_band(event: np.ndarray, sample_rate: int, share: float = 0.9) -> tuple[float, float]:
    """(low, high) Hz holding the central ``share`` of a sound's spectral energy."""
    power = np.abs(np.fft.rfft(event.astype(np.float64))) ** 2
    cumulative = np.cumsum(power) / max(power.sum(), 1e-30)
    freqs = np.fft.rfftfreq(len(event), 1.0 / sample_rate)
    tail = (1.0 - share) / 2
    low = int(np.searchsorted(cumulative, tail))
    high = int(np.searchsorted(cumulative, 1.0 - tail))
    return float(freqs[min(low, len(freqs) - 1)]), float(freqs[min(high, len(freqs) - 1)])


def render_clip(
    rng: np.random.Generator,
    duration_s: float,
    n_events: tuple[int, int] = (1, 3),
    event_seconds: tuple[float, float] | None = None,
) -> tuple[np.ndarray, list[Event]]:
    """A clip of events over background noise: (float32 wave, events by onset).

    The number of events is drawn from ``n_events`` (inclusive), their classes
    without repetition, each with its own SNR against the background drawn
    from ``SNR_DB``. Events last between a
    quarter and the whole of the clip (at most 4 s when the clip is longer),
    or between the bounds of ``event_seconds`` (short events that a time
    mask can hide). The clip is scaled down if needed to peak at 0.9.
    """
    n = int(round(duration_s * DEFAULT_RATE))
    if n <= 0:
        raise ValueError(f"clip duration must be positive, got {duration_s} s")
    lo, hi = n_events
    if not 1 <= lo <= hi <= len(_CLASSES):
        raise ValueError(f"n_events must satisfy 1 <= low <= high <= {len(_CLASSES)}")
    count = int(rng.integers(lo, hi + 1))
    classes = [int(c) for c in rng.choice(len(_CLASSES), size=count, replace=False)]
    background = _coloured_noise(rng, n, 1.0) + 0.5 * rng.standard_normal(n)
    wave = background * (BACKGROUND_RMS / np.sqrt(np.mean(background**2)))
    longest = min(duration_s, max(4.0, duration_s / 4))
    shortest = min(duration_s / 4, longest)
    if event_seconds is not None:
        shortest, longest = event_seconds
        if not 0 < shortest <= longest <= duration_s:
            raise ValueError(f"event_seconds must satisfy 0 < low <= high <= {duration_s}")
    events = []
    for class_index in classes:
        length_s = rng.uniform(shortest, longest)
        onset_s = rng.uniform(0.0, duration_s - length_s)
        start = int(round(onset_s * DEFAULT_RATE))
        event = render_event(class_index, length_s, rng, DEFAULT_RATE)[: n - start]
        gain = BACKGROUND_RMS * 10 ** (rng.uniform(*SNR_DB) / 20)
        wave[start : start + len(event)] += gain * event
        offset_s = (start + len(event)) / DEFAULT_RATE
        low_hz, high_hz = energy_band(event, DEFAULT_RATE)
        events.append(Event(class_index, start / DEFAULT_RATE, offset_s, low_hz, high_hz))
    peak = np.abs(wave).max()
    if peak > PEAK_LIMIT:
        wave *= PEAK_LIMIT / peak
    return wave.astype(np.float32), sorted(events, key=lambda e: (e.onset_s, e.class_index))


_SPLITS = {"train": 0, "eval": 1, "valid": 2}


def _split_clips(split: str, count: int, clip_seconds: float, seed: int, **clip_options):
    """Clips 0..count-1 of a split as (wave, events); clip i from the generator (seed, split, i)."""
    if split not in _SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(_SPLITS)}")
    for i in range(count):
        yield render_clip(
            np.random.default_rng([seed, _SPLITS[split], i]), clip_seconds, **clip_options
        )


def render_split(
    split: str, count: int, clip_seconds: float, seed: int = 0, **clip_options
) -> tuple[np.ndarray, list[list[Event]]]:
    """Clips 0..count-1 of a split in memory: (float32 (count, samples), events per clip).

    The clips ``synthesize`` writes; ``clip_options`` go to ``render_clip``
    (e.g. short ``event_seconds``).
    """
    clips = list(_split_clips(split, count, clip_seconds, seed, **clip_options))
    n = int(round(clip_seconds * DEFAULT_RATE))
    waves = np.stack([w for w, _ in clips]) if clips else np.zeros((0, n), np.float32)
    return waves, [events for _, events in clips]


def synthesize(
    outdir: str | os.PathLike,
    n_train: int,
    n_eval: int,
    clip_seconds: float = 10.0,
    seed: int = 0,
    n_valid: int = 0,
) -> Path:
    """Write a corpus into ``outdir``; returns it as an absolute path.

    Files: audio/<split>_NNNNNN.wav, train.tsv, eval.tsv, events.tsv and
    class_labels_indices.csv in AudioSet's format (index,mid,display_name,
    CRLF lines). With ``n_valid`` a validation split (valid.tsv) is written
    too, for model selection apart from the evaluation split.

    TSVs hold absolute wav paths (``filename``) and ``;``-separated class
    indices (``labels``). Clip i of a split is generated from (seed, split, i)
    alone, so the same seed always writes the same files, whatever the sizes.
    """
    if n_train < 0 or n_eval < 0 or n_valid < 0:
        raise ValueError("n_train, n_eval and n_valid must be non-negative")
    root = Path(outdir).resolve()
    (root / "audio").mkdir(parents=True, exist_ok=True)
    event_lines = ["filename\tclass_index\tonset_s\toffset_s"]
    splits = [("train", n_train), ("eval", n_eval)] + ([("valid", n_valid)] if n_valid else [])
    for split, count in splits:
        lines = ["filename\tlabels"]
        for i, (wave, events) in enumerate(_split_clips(split, count, clip_seconds, seed)):
            path = root / "audio" / f"{split}_{i:06d}.wav"
            # Written in place (an fsync per clip would slow the corpus down): the split's
            # TSV, written atomically after its clips, is what makes them a corpus.
            sf.write(path, wave, DEFAULT_RATE, subtype="PCM_16")
            labels = ";".join(str(c) for c in sorted({e.class_index for e in events}))
            lines.append(f"{path}\t{labels}")
            event_lines += [
                f"{path}\t{e.class_index}\t{e.onset_s:.4f}\t{e.offset_s:.4f}" for e in events
            ]
        write_text(root / f"{split}.tsv", "\n".join(lines) + "\n")
    class_lines = ["index,mid,display_name"] + [
        f"{index},/synth/{name.lower().replace(' ', '_').replace('-', '_')},{name}"
        for index, name in enumerate(SYNTH_CLASSES)
    ]
    write_text(root / "class_labels_indices.csv", "\r\n".join(class_lines) + "\r\n")
    write_text(root / "events.tsv", "\n".join(event_lines) + "\n")
    return root
