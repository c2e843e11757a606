"""``hear-ced tag`` and ``hear-ced convert`` on files the test writes."""

import csv
import io
import json
import re
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from hear_ced.audio import read_clip
from hear_ced.checkpoints import load_model_file
from hear_ced.cli import main
from hear_ced.labels import audioset_labels
from hear_ced.model import build_model
from hear_ced.tagging import predict

from .layouts import save_original


@pytest.fixture(scope="module")
def mini_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    return save_original(build_model("mini"), tmp_path_factory.mktemp("w") / "mini.pt")


@pytest.fixture
def wav_44k_stereo(tmp_path):
    t = np.arange(44100 * 2) / 44100
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    path = tmp_path / "tone.wav"
    sf.write(path, np.stack([tone, 0.5 * tone], axis=1), 44100)
    return path


def test_tag_prints_top_labels(mini_ckpt, wav_44k_stereo, monkeypatch):
    monkeypatch.setenv("HEAR_CED_WEIGHTS", str(mini_ckpt))
    result = CliRunner().invoke(
        main, ["tag", str(wav_44k_stereo), "-m", "mini", "--top", "3", "--json", "--exact"]
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert len(record["tags"]) == 3
    probs = [t["probability"] for t in record["tags"]]
    assert probs == sorted(probs, reverse=True)
    # Same answer as the library on the resampled, down-mixed audio.
    model = load_model_file(mini_ckpt, variant="mini")
    wave, _ = sf.read(wav_44k_stereo)
    import soxr

    expected = predict(model, soxr.resample(wave.mean(axis=1), 44100, 16000, quality="HQ"))
    top = int(expected.argmax())
    assert record["tags"][0]["label"] == audioset_labels()[top]
    assert abs(record["tags"][0]["probability"] - float(expected[top])) < 1e-5


def test_tag_text_output(mini_ckpt, wav_44k_stereo):
    result = CliRunner().invoke(main, ["tag", str(wav_44k_stereo), "--model", str(mini_ckpt)])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].endswith("tone.wav") and len(lines) == 6


def test_tag_unreadable_file(mini_ckpt, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    result = CliRunner().invoke(main, ["tag", str(bad), "--model", str(mini_ckpt)])
    assert result.exit_code == 1
    assert "cannot read audio file" in result.output


def test_convert_original_to_native(mini_ckpt, tmp_path):
    target = tmp_path / "mini.safetensors"
    result = CliRunner().invoke(main, ["convert", str(mini_ckpt), str(target), "-m", "mini"])
    assert result.exit_code == 0, result.output
    assert "CED-mini" in result.output
    converted = load_model_file(target, variant="mini")
    assert converted.config.labels == tuple(audioset_labels())
    wave = torch.randn(1, 16000) * 0.1
    assert torch.equal(converted(wave), load_model_file(mini_ckpt)(wave))


def test_export_onnx_command(tmp_path):
    import onnxruntime as ort

    from hear_ced.checkpoints import save_model
    from hear_ced.model import CED, CEDConfig
    from hear_ced.runtime import run_onnx

    torch.manual_seed(0)
    model = CED(CEDConfig(embed_dim=64, depth=1, num_heads=1)).eval()
    ckpt = save_model(model, tmp_path / "small.safetensors")
    target = tmp_path / "small.onnx"
    result = CliRunner().invoke(main, ["export-onnx", str(target), "--model", str(ckpt)])
    assert result.exit_code == 0, result.output
    wave = (torch.randn(1, 16000) * 0.1).numpy()
    got = run_onnx(ort.InferenceSession(str(target)), wave)
    expected = torch.sigmoid(model(torch.from_numpy(wave))).detach().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)


STUDENT_LABELS = [f"sound {chr(ord('a') + i)}" for i in range(24)]


def tiny_model(num_classes: int, seed: int = 0):
    from hear_ced.model import CED, CEDConfig

    torch.manual_seed(seed)
    return CED(CEDConfig(embed_dim=32, depth=1, num_heads=1, num_classes=num_classes)).eval()


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """A 24-class model that stores its class names, as a distilled student does."""
    from hear_ced.checkpoints import save_model

    folder = tmp_path_factory.mktemp("student")
    return save_model(tiny_model(24), folder / "student.safetensors", labels=STUDENT_LABELS)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Clips of many lengths (under one patch, a few seconds, over one 10.11 s pass)."""
    folder = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(1)
    paths = []
    for i, seconds in enumerate([0.1, 1.0, 1.05, 2.5, 1.0, 12.3, 0.7]):
        path = folder / f"clip{i}.wav"
        sf.write(path, 0.2 * rng.standard_normal(round(seconds * 16000)), 16000, subtype="FLOAT")
        paths.append(str(path))
    return paths


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_student_tags_with_its_own_names(student, wav_44k_stereo):
    result = CliRunner().invoke(
        main, ["tag", str(wav_44k_stereo), "--model", str(student), "--exact", "--json"]
    )
    assert result.exit_code == 0, result.output
    model = load_model_file(student)
    wave = read_clip(wav_44k_stereo)
    expected = predict(model, wave).topk(5)
    tags = json.loads(result.stdout)["tags"]
    assert [t["index"] for t in tags] == expected.indices.tolist()
    assert [t["label"] for t in tags] == [STUDENT_LABELS[i] for i in expected.indices]


def test_listen_uses_the_models_names(student):
    pcm = (np.random.default_rng(0).standard_normal(16000) * 3000).astype("<i2").tobytes()
    result = CliRunner().invoke(main, ["listen", "--model", str(student), "--json"], input=pcm)
    assert result.exit_code == 0, result.output
    (record,) = json_lines(result.stdout)
    assert {t["label"] for t in record["tags"]} <= set(STUDENT_LABELS)
    assert [list(t) for t in record["tags"]] == [
        ["index", "label", "probability"]
    ] * 5  # tag's default --top


def test_model_without_names_gets_numbered_classes(tmp_path, wav_44k_stereo):
    from hear_ced.checkpoints import save_model

    ckpt = save_model(tiny_model(10), tmp_path / "nameless.safetensors")
    files = [str(wav_44k_stereo)] * 2
    result = CliRunner().invoke(main, ["tag", *files, "--model", str(ckpt), "--exact", "--json"])
    assert result.exit_code == 0, result.output
    for record in json_lines(result.stdout):
        assert all(t["label"] == f"class {t['index']}" for t in record["tags"])
    assert result.stderr.count("stores no class names") == 1  # one warning, not one per file


def test_stored_names_of_another_count_are_the_models_error(tmp_path, wav_44k_stereo):
    import json

    from safetensors.torch import load_file, save_file

    from hear_ced.checkpoints import FORMAT_NAME, save_model

    with pytest.raises(ValueError, match="labels names 3 classes, num_classes is 24"):
        save_model(tiny_model(24), tmp_path / "bad.safetensors", labels=["a", "b", "c"])
    good = save_model(tiny_model(24), tmp_path / "good.safetensors")
    config = tiny_model(24).config.to_dict() | {"labels": ["a", "b", "c"]}
    info = json.dumps({"format_version": 1, "config": config})
    ckpt = tmp_path / "bad.safetensors"
    save_file(load_file(good), ckpt, metadata={FORMAT_NAME: info})
    result = CliRunner().invoke(main, ["tag", str(wav_44k_stereo), "--model", str(ckpt)])
    assert result.exit_code == 1
    assert "labels names 3 classes, num_classes is 24" in result.stderr
    assert "tone.wav" not in result.output


def test_a_bad_file_does_not_stop_the_batch(student, clips, tmp_path):
    text = tmp_path / "notaudio.txt"
    text.write_text("not audio")
    files = [clips[1], str(text), clips[3]]
    result = CliRunner().invoke(main, ["tag", *files, "--model", str(student), "--json"])
    assert result.exit_code == 1
    assert [r["file"] for r in json_lines(result.stdout)] == [clips[1], clips[3]]
    errors = result.stderr.splitlines()
    assert errors[0].startswith(f"Error: cannot read audio file {text}")
    assert errors[-1] == f"Error: tagged 2 of 3 files; 1 failed: {text}"


def test_folders_are_searched_recursively_in_sorted_order(student, clips, tmp_path):
    import shutil

    root = tmp_path / "sounds"
    (root / "b" / "deep").mkdir(parents=True)
    (root / "a").mkdir()
    shutil.copy(clips[1], root / "b" / "deep" / "z.wav")
    shutil.copy(clips[2], root / "a" / "y.WAV")
    sf.write(root / "b" / "x.flac", sf.read(clips[3])[0], 16000)
    (root / "b" / "notes.txt").write_text("not audio, and not tagged")
    result = CliRunner().invoke(
        main, ["tag", str(root), clips[0], "--model", str(student), "--json"]
    )
    assert result.exit_code == 0, result.output
    expected = [root / "a" / "y.WAV", root / "b" / "deep" / "z.wav", root / "b" / "x.flac"]
    assert [r["file"] for r in json_lines(result.stdout)] == [*map(str, expected), clips[0]]


def test_a_folder_without_audio_is_one_error(student, tmp_path):
    (tmp_path / "notes.txt").write_text("no audio here")
    result = CliRunner().invoke(main, ["tag", str(tmp_path), "--model", str(student)])
    assert result.exit_code == 1
    assert result.stderr == f"Error: no audio files in {tmp_path}\n"  # once, not also warned


def test_batched_probabilities_equal_one_at_a_time(clips):
    from hear_ced.audio import read_clip
    from hear_ced.runtime import tag_files
    from hear_ced.tagging import ModelTagger

    model = tiny_model(24)
    alone = [predict(model, read_clip(p)).numpy() for p in clips]
    stacked = []
    tokens = model.tokens
    model.tokens = lambda mel: stacked.append(mel.shape[0]) or tokens(mel)
    for batch_size in (3, 16):
        stacked.clear()
        got = list(tag_files(ModelTagger(model), clips, batch_size=batch_size))
        assert [o.path for o in got] == clips
        for outcome, want in zip(got, alone, strict=True):
            np.testing.assert_allclose(outcome.result, want, rtol=0, atol=1e-5)
        assert sum(stacked) == 8  # a pass per clip, two for the 12.3 s one
    # Read 16 at a time, the two 1.0 s clips (passes of one input length) share one pass;
    # the 1.05 s clip has as many time patches but more samples, and runs on its own.
    assert max(stacked) == 2 and len(stacked) == 7


def test_batch_size_does_not_change_the_output(student, clips):
    outputs = []
    for batch_size in ("1", "4"):
        args = ["tag", *clips, "--model", str(student), "--exact", "--json"]
        result = CliRunner().invoke(main, [*args, "--batch-size", batch_size])
        assert result.exit_code == 0, result.output
        outputs.append(json_lines(result.stdout))
    for one, many in zip(*outputs, strict=True):
        assert [t["index"] for t in one["tags"]] == [t["index"] for t in many["tags"]]
        np.testing.assert_allclose(
            [t["probability"] for t in one["tags"]],
            [t["probability"] for t in many["tags"]],
            atol=1e-5,
        )


def test_csv_output(student, clips):
    import csv
    import io

    args = ["tag", clips[1], clips[3], "--model", str(student), "--exact", "--csv", "--top", "4"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == ["file", "rank", "index", "label", "probability"]
    assert [(r["file"], r["rank"]) for r in rows] == [
        (f, str(k)) for f in (clips[1], clips[3]) for k in range(1, 5)
    ]
    model = load_model_file(student)
    probs = predict(model, read_clip(clips[3]))
    for row in rows[4:]:
        assert row["label"] == STUDENT_LABELS[int(row["index"])]
        assert float(row["probability"]) == pytest.approx(float(probs[int(row["index"])]), abs=1e-6)


@pytest.mark.parametrize(("top", "threshold"), [(None, 0.5), (3, 0.5), (3, 0.999)])
def test_threshold_and_top(student, clips, top, threshold):
    args = ["tag", clips[3], "--model", str(student), "--exact", "--json"]
    args += ["--threshold", str(threshold)] + (["--top", str(top)] if top else [])
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    probs = predict(load_model_file(student), read_clip(clips[3])).numpy()
    above = [int(i) for i in np.argsort(-probs, kind="stable") if probs[i] >= threshold]
    assert len(above) > 3 or threshold > 0.9  # the cases below cut at --top, and at the threshold
    tags = json.loads(result.stdout)["tags"]
    assert [t["index"] for t in tags] == above[:top]
    assert all(t["probability"] >= threshold for t in tags)


def test_json_and_csv_together_are_refused(student, clips):
    result = CliRunner().invoke(main, ["tag", clips[1], "--model", str(student), "--json", "--csv"])
    assert result.exit_code == 2
    assert "--json and --csv" in result.output


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(student, clips):
    outputs = []
    for device in ("cpu", "cuda"):
        args = ["tag", *clips, "--model", str(student), "--exact", "--json", "--top", "24"]
        result = CliRunner().invoke(main, [*args, "--device", device])
        assert result.exit_code == 0, result.output
        outputs.append(json_lines(result.stdout))
    for on_cpu, on_gpu in zip(*outputs, strict=True):
        cpu = {t["index"]: t["probability"] for t in on_cpu["tags"]}
        gpu = {t["index"]: t["probability"] for t in on_gpu["tags"]}
        assert cpu.keys() == gpu.keys()
        np.testing.assert_allclose([gpu[i] for i in cpu], list(cpu.values()), atol=1e-4)


def test_plot_without_matplotlib_fails_before_the_job(student, clips, monkeypatch):
    import hear_ced.cli as cli

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    monkeypatch.setattr(cli, "tagger", lambda *a: pytest.fail("the model was loaded"))
    args = ["tag", *clips, "--model", str(student), "--timeline", "--plot", "p.png"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == "Error: matplotlib is not installed: pip install 'hear-ced[plot]'\n"


@pytest.mark.parametrize("timeline", [[], ["--timeline"]])
def test_long_files_show_progress(student, clips, monkeypatch, timeline):
    """A file longer than PROGRESS_SECONDS gets a progress line on standard error."""
    import hear_ced.runtime as runtime

    monkeypatch.setattr(runtime, "PROGRESS_SECONDS", 10)
    result = CliRunner().invoke(main, ["tag", clips[5], "--model", str(student), *timeline])
    assert result.exit_code == 0, result.output
    assert re.search(r"^clip5\.wav: 100% 12\.3/12\.3 ", result.stderr, re.M), result.stderr
    short = CliRunner().invoke(main, ["tag", clips[1], "--model", str(student), *timeline])
    assert short.stderr == ""


@pytest.mark.parametrize("command", ["tag", "listen"])
def test_windows_shorter_than_a_time_patch_are_refused(student, clips, command):
    args = [command, "--model", str(student), "--window", "0.05"]
    args += [clips[1], "--timeline"] if command == "tag" else []
    result = CliRunner().invoke(main, args, input=b"\0" * 32000)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == (
        "Error: a window of 0.05 s is shorter than the model's time patch (0.16 s): "
        "give a window of at least 0.16 s\n"
    )


def test_listen_takes_tags_output_options_with_the_same_meaning():
    """Options of listen that tag has too are the same options (default, type, help)."""

    def described(command):
        return {
            p.name: (p.default, repr(p.type), getattr(p, "help", None))
            for p in main.commands[command].params
        }

    tag, listen = described("tag"), described("listen")
    for name in ("top", "threshold", "as_json", "as_csv", "device", "window", "hop", "onnx"):
        assert listen[name] == tag[name], name


def test_listen_csv_and_threshold(student):
    pcm = (np.random.default_rng(0).standard_normal(32000) * 3000).astype("<i2").tobytes()
    args = ["listen", "--model", str(student), "--csv", "--threshold", "0", "--top", "2"]
    result = CliRunner().invoke(main, [*args, "--device", "cpu"], input=pcm)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(r["file"], r["start"], r["end"], r["rank"]) for r in rows] == [
        ("-", "0.0", "2.0", "1"),
        ("-", "0.0", "2.0", "2"),
    ]
