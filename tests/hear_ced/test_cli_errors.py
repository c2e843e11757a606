"""`hear-ced` failures: one clear message, a non-zero exit, never a traceback."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

import hear_ced.weights as weights
from hear_ced.cli import main
from hear_ced.model import CED


@pytest.fixture
def wav(tmp_path):
    path = tmp_path / "clip.wav"
    sf.write(path, np.zeros(16000, dtype=np.float32), 16000)
    return str(path)


def run_cli(args, **kwargs):
    result = CliRunner().invoke(main, args, **kwargs)
    # An exception that escaped the command would be something other than SystemExit.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result


def test_missing_weights_in_a_real_process(wav, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != weights.ENV_WEIGHTS}
    env.update(
        HEAR_CED_CACHE=str(tmp_path / "cache"),
        HEAR_CED_OFFLINE="1",
        HF_HUB_CACHE=str(tmp_path / "hf"),
        PYTHONPATH=os.pathsep.join(sys.path),
    )
    command = [str(Path(sys.executable).parent / "hear-ced"), "tag", wav, "-m", "small"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.startswith("Error: no weights for CED-small")
    assert "mispeech/ced-small" in result.stderr


@pytest.mark.parametrize("command", ["tag", "listen", "export-onnx"])
def test_missing_weights(no_weights, wav, tmp_path, command):
    args = {
        "tag": ["tag", wav],
        "listen": ["listen"],
        "export-onnx": ["export-onnx", str(tmp_path / "m.onnx")],
    }[command]
    result = run_cli(args, input=b"")
    assert result.exit_code == 1
    assert "no weights for CED-mini" in result.output


def test_unreadable_audio(small_checkpoint, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really")
    for extra in ([], ["--timeline"]):
        result = run_cli(["tag", str(bad), "--model", small_checkpoint, *extra])
        assert result.exit_code == 1
        assert "cannot read audio file" in result.output


def test_corrupt_checkpoint(wav, tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 100)
    result = run_cli(["tag", wav, "--model", str(broken)])
    assert result.exit_code == 1
    assert "not a readable safetensors file" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tag", "{wav}", "--timeline", "--window", "-1"], "--window"),
        (["tag", "{wav}", "--timeline", "--hop", "0"], "--hop"),
        (["tag", "{wav}", "--plot", "x.png"], "add --timeline"),
        (["tag", "{wav}", "--top", "0"], "--top"),
        (["tag", "{wav}", "-m", "huge"], "-m"),
        (["listen", "--rate", "0"], "--rate"),
        (["tag", "missing.wav"], "does not exist"),
    ],
)
def test_bad_options(wav, args, message):
    result = run_cli([a.format(wav=wav) for a in args])
    assert result.exit_code == 2
    assert message in result.output


def test_listen_with_nothing_on_stdin_prints_nothing(small_checkpoint):
    result = run_cli(["listen", "--model", small_checkpoint], input=b"")
    assert result.exit_code == 0 and result.output == ""


@pytest.mark.parametrize("extra", [[], ["--timeline"]])
def test_a_failing_model_is_reported_as_the_models_failure(
    small_checkpoint, wav, monkeypatch, extra
):
    def broken(self, mel):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (1x3 and 4x5)")

    monkeypatch.setattr(CED, "tokens", broken)
    result = run_cli(["tag", wav, wav, "--model", small_checkpoint, "--exact", *extra])
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: the model failed: mat1 and mat2 shapes cannot be multiplied (1x3 and 4x5)\n"
    )
    assert result.stdout == ""


def test_an_empty_file_gives_one_message(small_checkpoint, tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    messages = set()
    for extra in ([], ["--timeline"]):
        result = run_cli(["tag", str(empty), "--model", small_checkpoint, *extra])
        assert result.exit_code == 1
        messages.add(result.stderr.splitlines()[0])
    assert messages == {f"Error: {empty} holds no audio samples"}


@pytest.mark.parametrize(
    ("device", "message"),
    [("cuda:7", "cuda"), ("tpu", "unknown device"), ("meta", "unsupported device")],
)
def test_a_device_that_is_not_there(small_checkpoint, wav, device, message):
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    result = run_cli(["tag", wav, "--model", small_checkpoint, "--device", device])
    assert result.exit_code == 2
    assert "--device" in result.output and message in result.output


@pytest.mark.parametrize("command", ["tag", "listen", "export-onnx"])
def test_variant_and_model_file_together_are_refused(small_checkpoint, wav, tmp_path, command):
    args = {"tag": ["tag", wav], "listen": ["listen"], "export-onnx": ["export-onnx", "m.onnx"]}
    result = run_cli([*args[command], "-m", "mini", "--model", small_checkpoint], input=b"")
    assert result.exit_code == 2
    assert "-m/--variant" in result.output and "--model" in result.output


def test_nan_samples_are_the_files_error(small_checkpoint, wav, tmp_path):
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.full(8000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    result = run_cli(["tag", str(nan), wav, "--model", small_checkpoint, "--exact"])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"Error: {nan} holds NaN or infinite samples",
        f"Error: tagged 1 of 2 files; 1 failed: {nan}",
    ]
    assert result.stdout.splitlines()[0] == wav


def test_failure_summary_counts_and_names():
    from hear_ced.cli import failure_summary

    assert failure_summary(1, ["a.wav"]) == "tagged 0 of 1 file; 1 failed: a.wav"
    names = [f"{i}.wav" for i in range(12)]
    assert failure_summary(20, names) == (
        "tagged 8 of 20 files; 12 failed: " + ", ".join(names[:10]) + " and 2 more"
    )


def run_without(blocked: list[str], module: str, args: list[str]) -> subprocess.CompletedProcess:
    """``module.main(args)`` in a fresh interpreter that cannot import ``blocked``, as where
    they are not installed."""
    code = "import sys\n"
    code += "".join(f"sys.modules[{name!r}] = None\n" for name in blocked)
    code += f"from {module} import main\nmain({args!r})\n"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.mark.parametrize(
    ("blocked", "module", "args", "missing", "extra"),
    [
        (["torch"], "hear_ced.cli", ["export-onnx", "{out}", "--model", "{ckpt}"], "torch", "onnx"),
        pytest.param(
            ["onnx"],
            "hear_ced.cli",
            ["export-onnx", "{out}", "--model", "{ckpt}"],
            "onnx",
            "onnx",
            marks=pytest.mark.slow,
        ),
        (["torch"], "hear_ced.cli", ["convert", "{ckpt}", "copy.safetensors"], "torch", "torch"),
        (["torch"], "hear_ced.cli", ["tag", "{wav}", "--device", "cuda"], "torch", "torch"),
        (["torch"], "hear_ced.distill.cli", ["--help"], "torch", "train"),
        pytest.param(
            ["yaml"], "hear_ced.distill.cli", ["--help"], "yaml", "train", marks=pytest.mark.slow
        ),
        (["torch"], "hear_ced.eval.cli", ["--help"], "torch", "eval"),
        pytest.param(
            ["yaml"], "hear_ced.eval.cli", ["--help"], "yaml", "eval", marks=pytest.mark.slow
        ),
    ],
)
def test_a_missing_extra_is_named(
    small_checkpoint, wav, tmp_path, blocked, module, args, missing, extra
):
    """One line naming the extra to install, whether the command or the tool needs it."""
    names = {"ckpt": small_checkpoint, "wav": wav, "out": tmp_path / "x.onnx"}
    done = run_without(blocked, module, [a.format(**names) for a in args])
    assert done.returncode == 1, done.stderr
    assert done.stderr == f"Error: {missing} is not installed: pip install 'hear-ced[{extra}]'\n"


@pytest.mark.slow
def test_a_missing_plot_extra_is_named(small_checkpoint, wav, tmp_path):
    args = [
        "tag",
        wav,
        "--model",
        small_checkpoint,
        "--timeline",
        "--plot",
        str(tmp_path / "p.png"),
    ]
    done = run_without(["matplotlib"], "hear_ced.cli", args)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        "Error: matplotlib is not installed: pip install 'hear-ced[plot]'"
    )
    assert "Traceback" not in done.stderr


def test_an_import_error_of_no_extra_keeps_its_traceback(wav):
    """A module no extra installs is a bug, not a choice: it is not dressed up as one."""
    done = run_without(["hear_ced.timeline"], "hear_ced.cli", ["tag", wav, "--timeline"])
    assert done.returncode == 1 and "Traceback" in done.stderr
