"""Tagging over time (`tag --timeline`), live tagging (`listen`), long files in `tag`."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from hear_ced.audio import read_clip
from hear_ced.checkpoints import load_model_file, save_model
from hear_ced.cli import main
from hear_ced.labels import audioset_labels
from hear_ced.model import CED, CEDConfig
from hear_ced.tagging import ModelTagger, predict
from hear_ced.timeline import WindowStream, tag_stream, timeline


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = CED(CEDConfig(embed_dim=64, depth=1, num_heads=1)).eval()
    return save_model(model, tmp_path_factory.mktemp("w") / "small.safetensors")


@pytest.fixture(scope="module")
def model(small_ckpt):
    return load_model_file(small_ckpt)


def scene(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A tone, then noise, then a higher tone: content that changes over time."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * rate)) / rate
    third = t.size // 3
    wave = 0.3 * np.sin(2 * np.pi * 440 * t)
    wave[third : 2 * third] = 0.2 * rng.standard_normal(third)
    wave[2 * third :] = 0.3 * np.sin(2 * np.pi * 1800 * t[2 * third :])
    return wave.astype(np.float32)


def write_pcm16(path: Path, wave: np.ndarray, rate: int) -> bytes:
    """The clip as a 16-bit wav and as the raw PCM bytes `listen` reads."""
    pcm = np.round(np.clip(wave, -1, 1) * 32767).astype("<i2")
    sf.write(path, pcm, rate, subtype="PCM_16")
    return pcm.tobytes()


def expected_windows(n: int, window: int, hop: int) -> list[tuple[int, int]]:
    spans, start = [], 0
    while True:
        spans.append((start, min(start + window, n)))
        if start + window >= n:
            return spans
        start += hop


@pytest.mark.parametrize("n", [1, 15999, 32000, 32001, 53000, 60000])
@pytest.mark.parametrize(("window", "hop"), [(32000, 16000), (16000, 16000), (8000, 12000)])
def test_window_stream_any_block_sizes(n, window, hop):
    wave = np.arange(n, dtype=np.float32)
    rng = np.random.default_rng(n)
    stream = WindowStream(window / 16000, hop / 16000)
    got, pos = [], 0
    while pos < n:
        size = int(rng.integers(1, 9000))
        got += list(stream.push(wave[pos : pos + size]))
        pos += size
    got += list(stream.finish())
    spans = [(s, s + w.size) for s, w in got]
    if hop <= window:
        assert spans == expected_windows(n, window, hop)
    else:  # gaps between windows: every window is full but a last partial one
        assert all(e - s == window for s, e in spans[:-1]) and spans[-1][1] <= n
    for start, samples in got:
        np.testing.assert_array_equal(samples, wave[start : start + samples.size])
    assert stream.pending.size < window  # memory does not grow with the stream


def test_timeline_windows_times_and_probabilities(model):
    wave = scene(5.3)
    line = timeline(ModelTagger(model), [wave], window_s=2.0, hop_s=1.0)
    np.testing.assert_allclose(line.starts, [0, 1, 2, 3, 4])
    np.testing.assert_allclose(line.ends, [2, 3, 4, 5, 5.3])
    for start, end, probs in zip(line.starts, line.ends, line.probabilities, strict=True):
        alone = predict(model, wave[round(start * 16000) : round(end * 16000)])
        np.testing.assert_allclose(probs, alone.numpy(), atol=1e-5)
    # The windows see different sounds, so their labels differ.
    assert not np.allclose(line.probabilities[0], line.probabilities[2], atol=1e-3)


def test_tag_timeline_json_and_plot(small_ckpt, model, tmp_path):
    wav = tmp_path / "scene.wav"
    write_pcm16(wav, scene(4.5, rate=8000), 8000)
    plot = tmp_path / "timeline.png"
    args = ["tag", str(wav), "--model", str(small_ckpt), "--exact", "--timeline", "--window", "1.5"]
    args += ["--hop", "1", "--top", "3", "--json", "--plot", str(plot)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["file"] == str(wav)
    windows = record["windows"]
    assert [(w["start"], w["end"]) for w in windows] == [(0, 1.5), (1, 2.5), (2, 3.5), (3, 4.5)]
    audio = read_clip(wav)
    labels = audioset_labels()
    for w in windows:
        assert len(w["tags"]) == 3
        alone = predict(model, audio[round(w["start"] * 16000) : round(w["end"] * 16000)])
        top = alone.topk(3)
        assert [x["index"] for x in w["tags"]] == top.indices.tolist()
        assert [x["label"] for x in w["tags"]] == [labels[i] for i in top.indices]
        np.testing.assert_allclose([x["probability"] for x in w["tags"]], top.values, atol=1e-5)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.stderr == f"wrote {plot}\n"  # progress on stderr, the record alone on stdout
    quiet = CliRunner().invoke(main, ["-q", *args])
    assert quiet.exit_code == 0 and quiet.stderr == "" and quiet.stdout == result.stdout


def test_listen_stream_equals_timeline(small_ckpt, model, tmp_path):
    """Piped 8 kHz PCM through the real command: one line per hop, the timeline's lines."""
    wav = tmp_path / "scene.wav"
    pcm = write_pcm16(wav, scene(4.25, rate=8000), 8000)
    options = ["--model", str(small_ckpt), "--window", "1", "--hop", "0.5", "--top", "2"]
    options += ["--exact"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    listen = subprocess.run(
        [str(Path(sys.executable).parent / "hear-ced"), "listen", "--rate", "8000", *options],
        input=pcm,
        capture_output=True,
        env=env,
        timeout=300,
    )
    assert listen.returncode == 0, listen.stderr.decode()
    lines = listen.stdout.decode().splitlines()
    assert len(lines) == 8  # windows starting at 0, 0.5, ..., 3.0 s, and 3.5-4.25 s
    tagged = CliRunner().invoke(main, ["tag", str(wav), "--timeline", *options])
    assert tagged.exit_code == 0, tagged.output
    assert tagged.stdout.splitlines()[1:] == lines


def test_listen_yields_each_window_before_the_stream_ends(model):
    """A window is tagged as soon as its samples have arrived, not at the end of the stream."""
    pcm = np.zeros(16000 * 3, dtype="<i2").tobytes()

    class Source(io.BytesIO):
        def read(self, size=-1):
            data = super().read(size)
            reads.append(self.tell())
            return data

    reads: list[int] = []
    results = tag_stream(ModelTagger(model), Source(pcm), 16000, window_s=1.0, hop_s=1.0)
    start, end, _ = next(results)
    assert (start, end) == (0.0, 1.0)
    assert reads[-1] == 2 * 16000  # only the first second has been read
    assert len(list(results)) == 2


def test_long_file_averages_chunk_probabilities_by_length(small_ckpt, tmp_path):
    """> 10.11 s: length-weighted mean of the chunks' probabilities, not of their logits."""
    wave = scene(15.0)
    wav = tmp_path / "long.wav"
    sf.write(wav, wave, 16000, subtype="FLOAT")
    result = CliRunner().invoke(
        main, ["tag", str(wav), "--model", str(small_ckpt), "--exact", "--json"]
    )
    assert result.exit_code == 0, result.output
    tags = json.loads(result.stdout)["tags"]

    model = load_model_file(small_ckpt)
    with torch.no_grad():
        mel = model.mel(torch.from_numpy(wave)[None])  # 1501 frames: 1012 + 489
        first = model.forward_mel(mel[..., :1012])[0]
        second = model.forward_mel(mel[..., 1012:])[0]
        expected = (63 * first.sigmoid() + 30 * second.sigmoid()) / 93  # time patches per chunk
        logit_mean = ((63 * first + 30 * second) / 93).sigmoid()
    assert (expected - logit_mean).abs().max() > 1e-3  # the two rules differ on this clip
    labels = audioset_labels()
    for tag in tags:
        index = labels.index(tag["label"])
        assert tag["probability"] == pytest.approx(float(expected[index]), abs=1e-6)
    assert [t["label"] for t in tags] == [labels[i] for i in expected.topk(5).indices]


def test_one_tag_schema_for_files_and_timelines(small_ckpt, tmp_path):
    wav = tmp_path / "scene.wav"
    sf.write(wav, scene(2.5), 16000, subtype="FLOAT")
    base = ["tag", str(wav), "--model", str(small_ckpt), "--exact", "--json", "--top", "2"]
    plain = CliRunner().invoke(main, base)
    over_time = CliRunner().invoke(main, [*base, "--timeline", "--window", "1", "--hop", "1"])
    assert plain.exit_code == over_time.exit_code == 0, plain.output + over_time.output
    tags = json.loads(plain.stdout)["tags"]
    windows = json.loads(over_time.stdout)["windows"]
    assert [list(w) for w in windows] == [["start", "end", "tags"]] * 3
    for entry in tags + [t for w in windows for t in w["tags"]]:
        assert list(entry) == ["index", "label", "probability"]
        assert audioset_labels()[entry["index"]] == entry["label"]


def test_timeline_csv_and_threshold(small_ckpt, model, tmp_path):
    import csv

    wav = tmp_path / "scene.wav"
    wave = scene(2.5)
    sf.write(wav, wave, 16000, subtype="FLOAT")
    args = ["tag", str(wav), "--model", str(small_ckpt), "--exact", "--timeline", "--csv"]
    result = CliRunner().invoke(main, [*args, "--window", "1", "--hop", "1", "--threshold", "0.6"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == ["file", "start", "end", "rank", "index", "label", "probability"]
    line = timeline(ModelTagger(model), [wave], window_s=1.0, hop_s=1.0)
    expected = [
        (str(float(s)), str(float(e)), str(i))
        for s, e, p in zip(line.starts, line.ends, line.probabilities, strict=True)
        for i in np.argsort(-p, kind="stable")
        if p[i] >= 0.6
    ]
    assert expected  # some classes reach the threshold, and not all of them
    assert len(expected) < 3 * len(line.probabilities[0])
    assert [(r["start"], r["end"], r["index"]) for r in rows] == expected
