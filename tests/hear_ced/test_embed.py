"""`hear-ced embed`: the HEAR modules' embeddings of files and folders, as .npy files."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from hear_ced.audio import read_clip
from hear_ced.checkpoints import save_model
from hear_ced.cli import main
from hear_ced.export import export_onnx
from hear_ced.hear import get_scene_embeddings, get_timestamp_embeddings, load
from hear_ced.model import CED, CEDConfig


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """A small model as a checkpoint, an embeddings graph and a probabilities graph."""
    torch.manual_seed(0)
    model = CED(CEDConfig(embed_dim=32, depth=1, num_heads=1, num_classes=5)).eval()
    folder = tmp_path_factory.mktemp("model")
    return (
        save_model(model, folder / "m.safetensors"),
        export_onnx(model, folder / "emb.onnx", output="embeddings"),
        export_onnx(model, folder / "probs.onnx"),
    )


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    """A folder (two 1 s clips batched together, a 0.1 s clip, a 12.3 s clip streamed in
    passes, a broken file) and a file given on its own."""
    root = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    for name, seconds in [("a.wav", 1.0), ("sub/b.flac", 1.0), ("c.wav", 0.1), ("long.wav", 12.3)]:
        (root / "set" / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / "set" / name, 0.1 * rng.standard_normal(round(seconds * 16000)), 16000)
    (root / "set" / "broken.wav").write_bytes(b"not audio")
    sf.write(root / "alone.wav", 0.1 * rng.standard_normal(22050), 44100)
    return root


NAMES = ["a.wav", "c.wav", "long.wav", "sub/b.flac", "alone.wav"]


def embed(args, model_files, audio, out):
    inputs = [str(audio / "set"), str(audio / "alone.wav")]
    result = CliRunner().invoke(main, ["embed", *inputs, "--out", str(out), *args])
    assert "Traceback" not in result.output
    return result


def index_rows(out) -> list[dict]:
    with open(out / "index.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def both(model_files, audio, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "emb"
    result = embed(
        ["--model", str(model_files[0]), "--embeddings", "both"], model_files, audio, out
    )
    return out, result


def test_embeddings_are_the_hear_modules(both, model_files, audio):
    out, result = both
    embedder = load(str(model_files[0]))
    for name in NAMES:
        path = audio / ("alone.wav" if name == "alone.wav" else f"set/{name}")
        clip = torch.from_numpy(read_clip(path))[None]
        scene = get_scene_embeddings(clip, embedder)[0].numpy()
        vectors, times = get_timestamp_embeddings(clip, embedder)
        np.testing.assert_allclose(np.load(out / f"{name}.scene.npy"), scene, atol=1e-6)
        np.testing.assert_allclose(np.load(out / f"{name}.timestamps.npy"), vectors[0], atol=1e-6)
        np.testing.assert_array_equal(np.load(out / f"{name}.times.npy"), times[0].numpy())


def test_layout_index_and_bad_files(both, audio):
    """index.csv lists the files embedded, in input order, with their lengths; scene.npy
    stacks their scene embeddings; the broken file is reported and summed up, status 1."""
    out, result = both
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (
        f"Error: embedded 5 of 6 files; 1 failed: {audio / 'set' / 'broken.wav'}"
    )
    assert "cannot read audio file" in result.stderr
    rows = index_rows(out)
    assert [r["name"] for r in rows] == NAMES
    assert [float(r["seconds"]) for r in rows] == [1.0, 0.1, 12.3, 1.0, 0.5]
    assert [int(r["timestamps"]) for r in rows] == [
        len(np.load(out / f"{n}.times.npy")) for n in NAMES
    ]
    stacked = np.load(out / "scene.npy")
    assert stacked.shape == (5, 32) and stacked.dtype == np.float32
    np.testing.assert_array_equal(stacked, [np.load(out / f"{n}.scene.npy") for n in NAMES])


def test_a_rerun_embeds_only_what_is_missing(model_files, audio, tmp_path):
    out = tmp_path / "emb"
    args = ["--model", str(model_files[0])]
    embed(args, model_files, audio, out)
    kept = out / "a.wav.scene.npy"
    os.utime(kept, (0, 0))
    (out / "long.wav.scene.npy").unlink()
    result = embed(args, model_files, audio, out)
    assert "4 of 6 files already embedded" in result.stderr
    assert kept.stat().st_mtime == 0  # not written again
    assert (out / "long.wav.scene.npy").exists() and len(index_rows(out)) == 5
    other = embed([*args, "--embeddings", "both"], model_files, audio, out)
    assert other.exit_code == 1
    assert 'other settings (embeddings: ["scene"] stored' in other.stderr


def test_published_method(model_files, audio, tmp_path):
    out = tmp_path / "emb"
    embed(["--model", str(model_files[0]), "--published"], model_files, audio, out)
    clip = torch.from_numpy(read_clip(audio / "set" / "long.wav"))[None]
    want = get_scene_embeddings(clip, load(str(model_files[0]), published=True))[0].numpy()
    np.testing.assert_allclose(np.load(out / "long.wav.scene.npy"), want, atol=1e-6)
    refused = embed(["--published", "--passes", "4"], model_files, audio, tmp_path / "x")
    assert refused.exit_code == 2 and "--published has its own" in refused.stderr


def test_onnx_scene_embeddings_equal_torch(both, model_files, audio, tmp_path):
    """An embeddings graph, torch-free, streams the long file and gives the default method's
    scene embeddings."""
    out = tmp_path / "emb"
    result = embed(["--onnx", str(model_files[1])], model_files, audio, out)
    assert result.exit_code == 1 and len(index_rows(out)) == 5
    np.testing.assert_allclose(
        np.load(out / "scene.npy"), np.load(both[0] / "scene.npy"), atol=1e-5
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--onnx", "PROBS"], "is a graph of probabilities (export-onnx --output probabilities),"),
        (["--onnx", "EMB", "--embeddings", "both"], "--embeddings timestamps choose a torch"),
        (["--onnx", "EMB", "--published"], "--published choose a torch"),
    ],
)
def test_graphs_and_options_that_cannot_embed(model_files, audio, tmp_path, args, message):
    graphs = {"PROBS": str(model_files[2]), "EMB": str(model_files[1])}
    result = embed([graphs.get(a, a) for a in args], model_files, audio, tmp_path / "x")
    assert result.exit_code in (1, 2)
    [error] = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert message in error
    if args[1] == "PROBS":
        assert error.endswith(f"use it with hear-ced tag --onnx {model_files[2]}")


def test_files_that_would_share_a_name_are_refused(model_files, audio, tmp_path):
    twin = tmp_path / "a.wav"
    twin.write_bytes((audio / "set" / "a.wav").read_bytes())
    result = CliRunner().invoke(
        main,
        [
            "embed",
            str(audio / "set"),
            str(twin),
            "--out",
            str(tmp_path / "o"),
            "--onnx",
            str(model_files[1]),
        ],
    )
    assert result.exit_code == 1
    assert "would both be written as a.wav" in result.stderr


def test_embed_onnx_never_imports_torch(model_files, audio, tmp_path):
    code = (
        "import sys\nfrom hear_ced.cli import main\n"
        f"main(['embed', {str(audio / 'alone.wav')!r}, '--out', {str(tmp_path / 'o')!r}, "
        f"'--onnx', {str(model_files[1])!r}], standalone_mode=False)\n"
        "print('torch loaded:', 'torch' in sys.modules)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, timeout=120)
    assert done.stdout.decode().splitlines()[-1] == "torch loaded: False", done.stderr
    assert np.load(tmp_path / "o" / "scene.npy").shape == (1, 32)
