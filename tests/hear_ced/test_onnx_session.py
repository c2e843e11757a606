"""Sessions of exported graphs keep their optimised graph: beside the model, else in the cache."""

import os

import numpy as np
import onnxruntime as ort
import pytest
import torch

from hear_ced import runtime
from hear_ced.export import export_onnx
from hear_ced.model import CED, CEDConfig
from hear_ced.runtime import OnnxTagger


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    torch.manual_seed(0)
    model = CED(CEDConfig(embed_dim=32, depth=1, num_heads=1)).eval()
    return export_onnx(model, tmp_path_factory.mktemp("graph") / "m.onnx").read_bytes()


@pytest.fixture
def model_file(graph, tmp_path, monkeypatch):
    monkeypatch.setenv("HEAR_CED_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "models" / "m.onnx"
    path.parent.mkdir()
    path.write_bytes(graph)
    return path


def entries(folder):
    return sorted(folder.glob("*m.onnx.optimized-*.onnx"))


@pytest.fixture
def opened(monkeypatch):
    """The files and optimisation levels of the sessions opened."""
    seen = []
    real = ort.InferenceSession

    def recording(path, options, **kwargs):
        seen.append((os.path.basename(path), options.graph_optimization_level))
        return real(path, options, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", recording)
    return seen


def probabilities(path):
    clip = np.random.default_rng(0).standard_normal(20000).astype(np.float32)
    return OnnxTagger(path).probabilities([clip])


def test_second_session_opens_the_optimised_graph(model_file, opened):
    first = probabilities(model_file)
    (entry,) = entries(model_file.parent)
    assert entry.name.startswith(".m.onnx.optimized-")
    second = probabilities(model_file)
    assert opened[-1] == (entry.name, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    assert opened[0][0] == "m.onnx"  # the first optimised the graph itself
    np.testing.assert_array_equal(first, second)


def test_stale_or_damaged_entry_rebuilt(model_file, opened, monkeypatch):
    probabilities(model_file)
    (old,) = entries(model_file.parent)
    os.utime(model_file, ns=(0, 0))  # the model changed: its entry is stale
    probabilities(model_file)
    (new,) = entries(model_file.parent)
    assert new != old and not old.exists()
    monkeypatch.setattr(runtime, "_cpu_key", lambda: "another CPU")
    probabilities(model_file)
    assert entries(model_file.parent) != [new] and len(entries(model_file.parent)) == 1
    (entry,) = entries(model_file.parent)
    entry.write_bytes(b"not a graph")
    opened.clear()
    probabilities(model_file)
    assert [name for name, _ in opened] == [entry.name, "m.onnx"]  # refused, then rebuilt
    assert entry.stat().st_size > 100


def test_read_only_model_folder_uses_the_cache_folder(model_file, monkeypatch):
    from hear_ced.common import files

    folder = model_file.parent
    folder.chmod(0o555)
    real = files.atomic_path

    def refused(path):
        # root writes into read-only folders: refuse this one as the OS does for other users.
        if path.parent == folder:
            raise PermissionError(f"read-only: {folder}")
        return real(path)

    monkeypatch.setattr(files, "atomic_path", refused)
    try:
        expected = probabilities(model_file)
        cached = entries(model_file.parent.parent / "cache" / "onnx")
        assert len(cached) == 1 and not entries(folder)
        np.testing.assert_array_equal(probabilities(model_file), expected)
    finally:
        folder.chmod(0o755)
