import csv

import numpy as np
import pytest
import soundfile as sf
import torch

from hear_ced.distill.synth import (
    SYNTH_CLASSES,
    energy_band,
    render_clip,
    render_event,
    render_split,
    synthesize,
)
from hear_ced.frontend import LogMelFrontend


def test_same_seed_same_corpus_other_seed_other_audio(tmp_path):
    a = synthesize(tmp_path / "a", 3, 2, clip_seconds=1.0, seed=5)
    b = synthesize(tmp_path / "b", 3, 2, clip_seconds=1.0, seed=5)
    c = synthesize(tmp_path / "c", 3, 2, clip_seconds=1.0, seed=6)
    for name in ("train_000000.wav", "train_000002.wav", "eval_000001.wav"):
        wave_a, rate = sf.read(a / "audio" / name, dtype="int16")
        wave_b, _ = sf.read(b / "audio" / name, dtype="int16")
        wave_c, _ = sf.read(c / "audio" / name, dtype="int16")
        assert rate == 16000 and wave_a.shape == (16000,)
        assert np.array_equal(wave_a, wave_b)
        assert not np.array_equal(wave_a, wave_c)
    labels_a = [line.split("\t")[1] for line in (a / "train.tsv").read_text().splitlines()[1:]]
    labels_b = [line.split("\t")[1] for line in (b / "train.tsv").read_text().splitlines()[1:]]
    assert labels_a == labels_b


def test_clip_does_not_depend_on_corpus_size(tmp_path):
    small = synthesize(tmp_path / "s", 1, 0, clip_seconds=1.0, seed=1)
    large = synthesize(tmp_path / "l", 4, 0, clip_seconds=1.0, seed=1)
    first_small, _ = sf.read(small / "audio" / "train_000000.wav", dtype="int16")
    first_large, _ = sf.read(large / "audio" / "train_000000.wav", dtype="int16")
    assert np.array_equal(first_small, first_large)


def test_tables_follow_audioset_format(tmp_path):
    corpus = synthesize(tmp_path, 6, 0, clip_seconds=1.0, seed=0)
    with open(corpus / "class_labels_indices.csv") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["index", "mid", "display_name"]
    assert [int(r[0]) for r in rows[1:]] == list(range(len(SYNTH_CLASSES)))
    assert [r[2] for r in rows[1:]] == SYNTH_CLASSES
    assert len({r[1] for r in rows[1:]}) == len(SYNTH_CLASSES) >= 20
    lines = (corpus / "train.tsv").read_text().splitlines()
    assert lines[0] == "filename\tlabels"
    events = (corpus / "events.tsv").read_text().splitlines()[1:]
    for line in lines[1:]:
        filename, labels = line.split("\t")
        classes = sorted(int(x) for x in labels.split(";"))
        assert 1 <= len(classes) <= 3
        from_events = sorted(
            {int(e.split("\t")[1]) for e in events if e.startswith(filename + "\t")}
        )
        assert classes == from_events


def test_render_clip_events_lie_inside_the_clip():
    for i in range(20):
        rng = np.random.default_rng(i)
        wave, events = render_clip(rng, 2.0, n_events=(2, 3))
        assert wave.dtype == np.float32 and wave.shape == (32000,)
        assert np.abs(wave).max() <= 0.9 + 1e-6
        assert 2 <= len(events) <= 3
        assert len({e.class_index for e in events}) == len(events)
        for event in events:
            assert 0.0 <= event.onset_s < event.offset_s <= 2.0 + 1e-9
            assert event.offset_s - event.onset_s >= 0.5 - 1e-3


def test_bad_arguments():
    with pytest.raises(ValueError, match="class_index"):
        render_event(len(SYNTH_CLASSES), 1.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="duration"):
        render_event(0, 0.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="n_events"):
        render_clip(np.random.default_rng(0), 1.0, n_events=(0, 2))


def test_classes_are_distinct_in_log_mel_statistics():
    """Nearest class centroid on time-averaged log-mel statistics already separates the classes."""
    n_classes, draws = len(SYNTH_CLASSES), 10
    waves = []
    for class_index in range(n_classes):
        for draw in range(draws):
            rng = np.random.default_rng([class_index, draw])
            waves.append(
                0.1 * render_event(class_index, 1.5, rng) + 0.002 * rng.standard_normal(24000)
            )
    mel = LogMelFrontend()(torch.from_numpy(np.stack(waves).astype(np.float32))).numpy()
    stats = np.concatenate([mel.mean(2), mel.std(2), np.abs(np.diff(mel, axis=2)).mean(2)], axis=1)
    stats = stats.reshape(n_classes, draws, -1)
    train, test = stats[:, : draws // 2], stats[:, draws // 2 :]
    centroids = train.mean(axis=1)
    distances = ((test[:, :, None, :] - centroids[None, None]) ** 2).sum(-1)
    accuracy = (distances.argmin(-1) == np.arange(n_classes)[:, None]).mean()
    assert accuracy >= 0.8
    # Chirp direction is invisible to time averages; every other class is recognised.
    per_class = (distances.argmin(-1) == np.arange(n_classes)[:, None]).mean(1)
    chirps = {SYNTH_CLASSES.index("Rising chirp"), SYNTH_CLASSES.index("Falling chirp")}
    assert all(per_class[c] >= 0.6 for c in range(n_classes) if c not in chirps)


def test_short_events_and_their_energy_band():
    for i in range(10):
        _, events = render_clip(np.random.default_rng(i), 1.0, event_seconds=(0.05, 0.25))
        for event in events:
            assert 0.05 - 1e-3 <= event.offset_s - event.onset_s <= 0.25 + 1e-3
            assert 0.0 <= event.low_hz <= event.high_hz <= 8000.0
    with pytest.raises(ValueError, match="event_seconds"):
        render_clip(np.random.default_rng(0), 1.0, event_seconds=(0.5, 2.0))
    t = np.arange(8000) / 16000
    low, high = energy_band(np.sin(2 * np.pi * 1000.0 * t), 16000)
    assert 990.0 <= low <= 1000.0 <= high <= 1010.0
    low, high = energy_band(np.random.default_rng(0).standard_normal(16000), 16000)
    assert low < 800.0 and high > 7200.0  # white noise spans the band


def test_render_split_is_synthesize_in_memory(tmp_path):
    waves, events = render_split("train", 3, 1.0, seed=4)
    corpus = synthesize(tmp_path, 3, 0, clip_seconds=1.0, seed=4)
    for i in range(3):
        stored, _ = sf.read(corpus / "audio" / f"train_{i:06d}.wav", dtype="float32")
        assert np.abs(stored - waves[i]).max() <= 1 / 32768 + 1e-7
    lines = (corpus / "events.tsv").read_text().splitlines()[1:]
    assert len(lines) == sum(len(e) for e in events)
    valid, _ = render_split("valid", 2, 1.0, seed=4)
    assert not np.array_equal(valid[0], waves[0])
    with pytest.raises(ValueError, match="split"):
        render_split("dev", 1, 1.0)
