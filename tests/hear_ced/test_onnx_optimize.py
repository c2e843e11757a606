"""``export_onnx(optimize=True)`` / ``export-onnx --optimize``: onnxruntime's fusions written once.

The optimised graph computes the plain graph's outputs, with fewer nodes and
its metadata kept, for float32 and int8 graphs alike.
"""

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from bench.models import synthetic_audio
from hear_ced.export import export_onnx, onnx_labels, run_onnx
from hear_ced.model import CED, CEDConfig


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return CED(CEDConfig(embed_dim=32, depth=2, num_heads=2)).eval()


def _ops(path) -> collections.Counter:
    return collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("int8", [False, True], ids=["float32", "int8"])
def test_optimised_graph_computes_the_plain_graphs_outputs(model, tmp_path, int8):
    plain = export_onnx(model, tmp_path / "plain.onnx", int8=int8)
    fused = export_onnx(model, tmp_path / "fused.onnx", int8=int8, optimize=True)
    plain_ops, fused_ops = _ops(plain), _ops(fused)
    assert sum(fused_ops.values()) < sum(plain_ops.values())
    # GELU's Erf and its bias add are gone into onnxruntime's fused kernels.
    assert plain_ops["Erf"] > 0 and fused_ops["Erf"] == 0
    audio = synthetic_audio(2, seconds=3.0, seed=5).numpy()
    np.testing.assert_allclose(
        run_onnx(_session(fused), audio), run_onnx(_session(plain), audio), rtol=0, atol=1e-5
    )
    assert onnx_labels(_session(fused)) == onnx_labels(_session(plain))  # metadata kept


def test_export_onnx_command_optimises(tmp_path, model):
    from hear_ced.checkpoints import save_model
    from hear_ced.cli import main

    ckpt = tmp_path / "m.safetensors"
    save_model(model, ckpt)
    target = tmp_path / "m.onnx"
    args = ["export-onnx", str(target), "--model", str(ckpt), "--optimize"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert _ops(target)["Erf"] == 0 and sum(_ops(target).values()) > 0
