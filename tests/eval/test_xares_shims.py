"""The torchaudio stand-in: what X-ARES calls works in the processes ced-eval starts, and only there."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import soxr

from hear_ced.eval.xares import launch

pytestmark = pytest.mark.slow  # two fresh interpreters importing torch

ROOT = Path(__file__).resolve().parents[2]

PROBE = '''"""Calls torchaudio as X-ARES and webdataset do; writes what came back."""
import json
import sys

import torch
import torchaudio

wav, bad, out = sys.argv[1:]
audio, rate = torchaudio.load(wav)
stereo = torch.from_numpy(__import__("numpy").load(wav + ".npy"))
resampled = torchaudio.functional.resample(stereo, 44100, 16000)
try:
    torchaudio.load(bad)
    failed = None
except Exception as exc:
    failed = type(exc).__name__
json.dump({"shape": list(audio.shape), "dtype": str(audio.dtype), "rate": rate,
           "audio": audio.tolist(), "resampled_shape": list(resampled.shape),
           "resampled_dtype": str(resampled.dtype), "resampled": resampled.tolist(),
           "failed": failed}, open(out, "w"))
'''


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shim")
    (folder / "shim_probe.py").write_text(PROBE)
    rng = np.random.default_rng(0)
    stereo = (0.3 * rng.standard_normal((2, 4410))).astype(np.float32)
    soundfile.write(folder / "a.wav", stereo.T, 44100, subtype="FLOAT")
    np.save(folder / "a.wav.npy", stereo)
    (folder / "bad.wav").write_bytes(b"RIFF not audio at all" * 10)
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(folder)]))
    arguments = [str(folder / "a.wav"), str(folder / "bad.wav"), str(folder / "out.json")]
    return folder, stereo, arguments, environment


def test_load_and_resample_under_the_shims(probe):
    folder, stereo, arguments, environment = probe
    decode_log = folder / "decode.log"
    command = launch.command(decode_log, "shim_probe", arguments)
    subprocess.run(command, check=True, cwd=folder, env=environment)
    found = json.loads((folder / "out.json").read_text())
    # torchaudio.load: float32 (channels, frames) and the rate.
    assert found["shape"] == [2, 4410] and found["dtype"] == "torch.float32"
    assert found["rate"] == 44100
    np.testing.assert_allclose(np.array(found["audio"]), stereo, atol=1e-7)
    # torchaudio.functional.resample: soxr along the last axis, dtype and channels kept.
    expected = soxr.resample(stereo.T.astype(np.float64), 44100, 16000).T
    assert found["resampled_shape"] == [2, 1600] and found["resampled_dtype"] == "torch.float32"
    np.testing.assert_allclose(np.array(found["resampled"]), expected, atol=1e-6)
    # A failed decode still raises (webdataset's handler decides), and is logged for the run.
    assert found["failed"] == "LibsndfileError"
    assert decode_log.read_text().startswith(f"{folder / 'bad.wav'}\tLibsndfileError: ")


def test_without_the_shims_there_is_no_torchaudio(probe):
    folder, _, arguments, environment = probe
    done = subprocess.run([sys.executable, "-m", "shim_probe", *arguments], cwd=folder,
                          env=environment, capture_output=True, text=True)  # fmt: skip
    assert done.returncode != 0 and "No module named 'torchaudio'" in done.stderr
    assert importlib.util.find_spec("torchaudio") is None  # nor in this process
