"""``hear-ced tag`` and ``hear-ced convert`` on files the test writes."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

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
    assert converted.labels == audioset_labels()
    wave = torch.randn(1, 16000) * 0.1
    assert torch.equal(converted(wave), load_model_file(mini_ckpt)(wave))


def test_export_onnx_command(tmp_path):
    import onnxruntime as ort

    from hear_ced.checkpoints import save_model
    from hear_ced.export import run_onnx
    from hear_ced.model import CED, CEDConfig

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
