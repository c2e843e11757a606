import os

import h5py
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

import hear_ced.distill.data as data
from hear_ced.distill.augment import AugmentConfig, mixup_partner, shift_wave
from hear_ced.distill.data import (
    AudioStore,
    Row,
    chunk_rows,
    dataset_fingerprint,
    prepare,
    read_table,
)
from hear_ced.distill.views import AugmentedClips


def _tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture
def wav_list(tmp_path):
    """Five good files (one stereo 44.1 kHz), one corrupt, one missing, one duplicate name."""
    audio = tmp_path / "audio"
    (audio / "other").mkdir(parents=True)
    names = []
    for i in range(4):
        sf.write(audio / f"mono{i}.wav", _tone(0.5 + 0.25 * i, 16000, 300 + 100 * i), 16000)
        names.append(f"audio/mono{i}.wav")
    stereo = np.stack([_tone(1.0, 44100, 1000), _tone(1.0, 44100, 1000)], axis=1)
    sf.write(audio / "stereo.flac", stereo, 44100)
    names.append("audio/stereo.flac")
    (audio / "broken.wav").write_bytes(b"RIFF not really a wave file")
    names += ["audio/broken.wav", "audio/missing.wav"]
    sf.write(audio / "other" / "mono0.wav", _tone(0.5, 16000), 16000)
    names.append("audio/other/mono0.wav")
    table = pd.DataFrame({"filename": names, "labels": [str(i % 3) for i in range(len(names))]})
    path = tmp_path / "train.tsv"
    table.to_csv(path, sep="\t", index=False)
    return path


def test_prepare_packs_resamples_downmixes_and_reports_bad_files(wav_list, tmp_path):
    result = prepare(wav_list, tmp_path / "out", shard_size=3, progress=False)
    assert result.n_written == 5
    skipped = dict(result.skipped)
    assert len(skipped) == 3
    assert any(name.endswith("broken.wav") for name in skipped)
    assert any(name.endswith("missing.wav") for name in skipped)
    assert "duplicate basename" in skipped[str(tmp_path / "audio" / "other" / "mono0.wav")]
    assert [p.name for p in result.shards] == ["train_00000.h5", "train_00001.h5", "train_00002.h5"]
    assert not list((tmp_path / "out" / "hdf5").glob("*.tmp*"))

    table = read_table(result.labels_tsv, ("filename", "hdf5path", "labels"))
    assert result.labels_tsv == tmp_path / "out" / "labels" / "train.tsv"
    assert len(table) == 5 and list(table["labels"]) == ["0", "1", "2", "0", "1"]
    store = AudioStore()
    for filename, hdf5path in zip(table["filename"], table["hdf5path"], strict=True):
        with h5py.File(hdf5path, "r") as shard:
            assert shard[os.path.basename(filename)].dtype == np.int16
    mono = store.read(table["hdf5path"][1], "mono1.wav")
    assert np.abs(mono - _tone(0.75, 16000, 400)).max() <= 1 / 32768
    stereo = store.read(table["hdf5path"][4], "stereo.flac")
    assert stereo.shape == (16000,)
    middle = slice(1000, 15000)  # away from the resampler's edges
    assert np.abs(stereo[middle] - _tone(1.0, 16000, 1000)[middle]).max() < 2e-3
    assert np.array_equal(
        store.read(table["hdf5path"][4], "stereo.flac", 100, 200), stereo[100:200]
    )
    store.close()


def test_killed_prepare_leaves_no_half_shard_and_resumes(wav_list, tmp_path, monkeypatch):
    reference = prepare(wav_list, tmp_path / "reference", shard_size=3, progress=False)
    real_load = data.try_load
    calls = {"n": 0}

    def dying_load(filename):
        calls["n"] += 1
        if calls["n"] == 5:  # second file of the second shard
            raise KeyboardInterrupt
        return real_load(filename)

    monkeypatch.setattr(data, "try_load", dying_load)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        prepare(wav_list, out, shard_size=3, workers=1, progress=False)
    finished = sorted(p.name for p in (out / "hdf5").glob("*.h5"))
    assert finished == ["train_00000.h5"]
    first_inode = (out / "hdf5" / "train_00000.h5").stat().st_ino
    assert not (out / "labels" / "train.tsv").exists()

    # What a process killed outright (no cleanup) would leave of the shard in progress.
    (out / "hdf5" / ".train_00001.h5.k1ll3d.tmp.h5").write_bytes(b"partial shard")
    monkeypatch.setattr(data, "try_load", real_load)
    resumed = prepare(wav_list, out, shard_size=3, progress=False)
    assert (out / "hdf5" / "train_00000.h5").stat().st_ino == first_inode  # kept, not redone
    assert resumed.n_written == reference.n_written
    assert sorted(resumed.skipped) == sorted(reference.skipped)
    assert not list((out / "hdf5").glob("*.tmp*"))  # no temporary file left behind
    for a, b in zip(resumed.shards, reference.shards, strict=True):
        with h5py.File(a, "r") as x, h5py.File(b, "r") as y:
            assert sorted(x) == sorted(y)
            assert all(np.array_equal(x[k][:], y[k][:]) for k in x)


def test_prepare_refuses_a_shard_made_from_another_list(wav_list, tmp_path):
    prepare(wav_list, tmp_path / "out", shard_size=3, progress=False)
    table = pd.read_csv(wav_list, sep="\t")
    table.iloc[::-1].to_csv(wav_list, sep="\t", index=False)
    with pytest.raises(ValueError, match="different file list"):
        prepare(wav_list, tmp_path / "out", shard_size=3, progress=False)


def test_read_table_names_missing_columns_and_files(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("name\tlabels\na.wav\t1\n")
    with pytest.raises(ValueError, match="lacks column.*filename"):
        read_table(path)
    with pytest.raises(FileNotFoundError, match="nope.tsv"):
        read_table(tmp_path / "nope.tsv")


def _store_with_lengths(tmp_path, lengths: dict[str, int]) -> pd.DataFrame:
    path = tmp_path / "shard.h5"
    with h5py.File(path, "w") as shard:
        for key, n in lengths.items():
            shard.create_dataset(key, data=(np.arange(n) % 30000).astype(np.int16))
    return pd.DataFrame({"filename": list(lengths), "hdf5path": str(path), "labels": "1"})


def test_chunk_rows_keeps_every_long_enough_chunk(tmp_path):
    # At 1 s chunks: 3.5 s -> 3 full + 0.5 s kept; 2.05 s -> trailing 0.05 s dropped;
    # a 0.3 s clip stays as one short row; 4.0 s -> exactly 4 rows.
    table = _store_with_lengths(tmp_path, {"a": 56000, "b": 32800, "c": 4800, "d": 64000})
    rows = chunk_rows(table, chunk_seconds=1.0, min_seconds=0.2)
    spans = {}
    for row in rows:
        spans.setdefault(row.key, []).append((row.start, row.end))
    assert spans["a"] == [(0, 16000), (16000, 32000), (32000, 48000), (48000, 56000)]
    assert spans["b"] == [(0, 16000), (16000, 32000)]
    assert spans["c"] == [(0, 4800)]
    assert len(spans["d"]) == 4
    assert all(row.labels == "1" for row in rows)


def test_fingerprint_tracks_rows_not_locations():
    rows = [Row("x/a.wav", "s1.h5", 0, 10), Row("x/b.wav", "s1.h5", 0, 5)]
    moved = [Row("y/a.wav", "s2.h5", 0, 10), Row("y/b.wav", "s2.h5", 0, 5)]
    assert dataset_fingerprint(rows) == dataset_fingerprint(moved)
    assert dataset_fingerprint(rows) != dataset_fingerprint(rows[:1])
    assert dataset_fingerprint(rows) != dataset_fingerprint([rows[0], Row("b.wav", "s", 0, 6)])


def test_multi_hot_targets_of_label_cells():
    from hear_ced.distill.data import table_targets

    assert np.array_equal(
        table_targets(["0;3", ""], 4, None, ["row 2", "row 3"]),
        np.array([[1, 0, 0, 1], [0, 0, 0, 0]], dtype=np.float32),
    )
    with pytest.raises(ValueError, match="row 1: label '7'"):
        table_targets(["0;7"], 4, None, ["row 1"])
    with pytest.raises(ValueError, match="'/m/09x0r'"):
        table_targets(["/m/09x0r"], 4, None, ["row 1"])


def test_labels_may_be_indices_mids_or_display_names_of_the_label_file(tmp_path):
    from hear_ced.distill.data import AUDIOSET_CLASS_LABELS, table_targets
    from hear_ced.labels import read_label_file

    audioset = read_label_file(AUDIOSET_CLASS_LABELS)
    assert len(audioset) == 527 and audioset.names[0] == "Speech"
    cells = ["0;137", "/m/09x0r;/m/04rlf", "Speech;Music", "Male speech, man speaking"]
    targets = table_targets(cells, 527, audioset, ["row"] * 4)
    assert [np.flatnonzero(t).tolist() for t in targets] == [[0, 137]] * 3 + [[1]]
    with pytest.raises(ValueError, match="t.tsv row 3: label 'Speach' is not .*display name"):
        table_targets(["0", "Speech;Speach"], 527, audioset, ["t.tsv row 2", "t.tsv row 3"])
    # The index column orders the classes, whatever the order of the rows.
    shuffled = tmp_path / "classes.tsv"
    shuffled.write_text("index\tmid\tdisplay_name\n1\t/x/b\tB\n0\t/x/a\tA\n")
    assert read_label_file(shuffled).names == ["A", "B"]
    commas = tmp_path / "classes_commas.tsv"
    commas.write_text("index,mid,display_name\n0,/x/a,A\n")
    with pytest.raises(ValueError, match="separated by commas .*expected tabs"):
        read_label_file(commas)


def test_a_missing_label_file_names_the_setting(tmp_path):
    from hear_ced.distill.data import class_labels_for

    with pytest.raises(FileNotFoundError, match="^data.labels: label file not found"):
        class_labels_for(str(tmp_path / "none.csv"), None, 24, "data.labels")
    assert class_labels_for(None, tmp_path / "t.tsv", 24, "data.labels") is None
    assert len(class_labels_for(None, tmp_path / "t.tsv", 527, "data.labels")) == 527


def test_prepare_carries_the_corpus_label_file(wav_list, tmp_path):
    (wav_list.parent / "class_labels_indices.csv").write_text("index,mid,display_name\n0,/x,A\n")
    result = prepare(wav_list, tmp_path / "out", shard_size=4, workers=1, progress=False)
    copied = result.labels_tsv.parent / "class_labels_indices.csv"
    assert copied.read_text() == (wav_list.parent / "class_labels_indices.csv").read_text()


def test_augmented_clips_apply_consistent_mixup_and_shift(tmp_path):
    table = _store_with_lengths(tmp_path, {f"f{i}": 4000 + 1000 * i for i in range(6)})
    store = AudioStore()
    rows = chunk_rows(table, chunk_seconds=0.25, min_seconds=0.01, store=store)
    cfg = AugmentConfig(mixup=True, mixup_p=0.5)
    seeds = np.arange(len(rows), dtype=np.int64) * 7919
    augmented = AugmentedClips(rows, store, seeds, cfg, 4000)
    for i, row in enumerate(rows):
        plain = augmented.clip(i)
        expected = store.read(row.hdf5path, row.key, row.start, row.end)
        assert plain.shape == (4000,) and plain.dtype == np.float32
        assert np.array_equal(plain[: len(expected)], expected)
        assert not plain[len(expected) :].any()
    mixed = 0
    for i in range(len(rows)):
        item = augmented[i]
        partner, lam = mixup_partner(int(seeds[i]), len(rows), cfg)
        assert (item["partner"], item["lam"]) == (partner, lam)
        wave = augmented.clip(i)
        if partner >= 0:
            mixed += 1
            wave = (lam * wave + (1 - lam) * augmented.clip(partner)).astype(np.float32)
        assert np.array_equal(item["wave"], shift_wave(wave, int(seeds[i]), cfg))
        assert np.array_equal(item["wave"], augmented[i]["wave"])
    assert 0 < mixed < len(rows)


def test_worker_processes_read_the_same_clips(tmp_path):
    table = _store_with_lengths(tmp_path, {f"f{i}": 3000 + 500 * i for i in range(5)})
    store = AudioStore()
    rows = chunk_rows(table, chunk_seconds=0.2, min_seconds=0.01, store=store)
    seeds = np.arange(len(rows), dtype=np.int64) + 11
    clips = AugmentedClips(rows, store, seeds, AugmentConfig(mixup=True), 3200)
    here = np.stack([clips[i]["wave"] for i in range(len(rows))])
    loader = torch.utils.data.DataLoader(clips, batch_size=3, num_workers=2)
    there = torch.cat([batch["wave"] for batch in loader]).numpy()
    assert np.array_equal(here, there)
