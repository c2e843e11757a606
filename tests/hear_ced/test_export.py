"""ONNX export: onnxruntime agrees with torch float32, dynamic axes, length limits, --optimize."""

import collections
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from hear_ced.export import export_onnx
from hear_ced.fast import synthetic_audio
from hear_ced.model import CED, CEDConfig
from hear_ced.runtime import run_onnx
from hear_ced.specs import max_pass_samples


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return CED(CEDConfig(embed_dim=32, depth=2, num_heads=2)).eval()


def reference(model, audio, output):
    with torch.no_grad():
        if output == "probabilities":
            return torch.sigmoid(model(audio)).numpy()
        return model.tokens(model.mel(audio)).mean(dim=(1, 2)).numpy()


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("output", ["probabilities", "embeddings"])
def test_onnx_matches_torch(model, tmp_path, output):
    sess = session(export_onnx(model, tmp_path / "m.onnx", output=output))
    # Two lengths and batch sizes through the same graph: both axes are dynamic.
    for batch, seconds in ((1, 1.3), (3, 10.0)):
        audio = synthetic_audio(batch, seconds=seconds, seed=batch)
        got = run_onnx(sess, audio.numpy())
        want = reference(model, audio, output)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_int8_export_close(model, tmp_path):
    float_path = export_onnx(model, tmp_path / "f.onnx")
    int8_path = export_onnx(model, tmp_path / "q.onnx", int8=True)
    assert int8_path.stat().st_size < float_path.stat().st_size
    audio = synthetic_audio(2, seconds=5.0, seed=4)
    got = run_onnx(session(int8_path), audio.numpy())
    assert np.abs(got - reference(model, audio, "probabilities")).max() < 0.02
    from hear_ced.labels import audioset_labels
    from hear_ced.runtime import OnnxTagger

    assert OnnxTagger(int8_path).labels == audioset_labels()  # the metadata survives int8

    # ... and so does the context_frames input with its default, once: the runtime can tag with it.
    assert [i.name for i in session(int8_path).get_overridable_initializers()] == ["context_frames"]
    import onnx

    names = [tensor.name for tensor in onnx.load(str(int8_path)).graph.initializer]
    assert names.count("context_frames") == 1
    assert OnnxTagger(int8_path).probabilities([audio[0].numpy()]).shape == (1, 527)


@pytest.fixture(scope="module")
def int8_graphs(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("int8")
    return export_onnx(model, folder / "f.onnx"), export_onnx(model, folder / "q.onnx", int8=True)


def test_int8_weights_are_quantised_per_channel(int8_graphs):
    import onnx

    graph = onnx.load(str(int8_graphs[1])).graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    matmuls = [node for node in graph.node if node.op_type == "MatMulInteger"]
    assert len(matmuls) >= 8  # qkv, proj, fc1, fc2 of both blocks
    for node in matmuls:
        weight, weight_zero_point = initializers[node.input[1]], initializers[node.input[3]]
        # one zero point (and scale) per output channel, not one per tensor
        assert list(weight_zero_point.dims) == [weight.dims[-1]] and weight.dims[-1] > 1


def test_int8_error_measured_on_the_weights_and_stored(int8_graphs):
    """The graph records its own distance from float32 on the probe clips."""
    from hear_ced.fast import synthetic_audio

    float_session, int8_session = (session(path) for path in int8_graphs)
    stored = float(int8_session.get_modelmeta().custom_metadata_map["int8_max_diff"])
    measured = max(
        np.abs(run_onnx(int8_session, clip.numpy()) - run_onnx(float_session, clip.numpy())).max()
        for clip in (synthetic_audio(seconds=3.0), synthetic_audio(seed=1))
    )
    assert 0 < stored < 0.01
    assert stored == pytest.approx(measured, rel=1e-4)


def test_int8_export_logs_its_distance(model, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="hear_ced.export"):
        export_onnx(model, tmp_path / "q.onnx", int8=True)
    assert "int8 graph: max |probabilities - float32|" in caplog.text
    assert not [r for r in caplog.records if r.levelno > logging.INFO]  # nor the quantiser's


def _int8_meta(path) -> dict:
    return dict(session(path).get_modelmeta().custom_metadata_map)


def test_int8_keeps_the_most_harmful_layers_in_float32(int8_graphs, model, tmp_path):
    """Below the all-int8 distance, the fewest layers go back to float32 to meet the limit."""
    all_int8 = float(_int8_meta(int8_graphs[1])["int8_max_diff"])
    path = export_onnx(model, tmp_path / "q.onnx", int8=True, int8_limit=all_int8 * 0.7)
    meta = _int8_meta(path)
    kept = json.loads(meta["int8_float32_layers"])
    assert 1 <= len(kept) <= 4 and float(meta["int8_max_diff"]) <= all_int8 * 0.7
    assert _ops(path)["MatMulInteger"] == _ops(int8_graphs[1])["MatMulInteger"] - len(kept)
    assert json.loads(_int8_meta(int8_graphs[1])["int8_float32_layers"]) == []


@pytest.fixture(scope="module")
def one_block():
    """A one-block model (five linear layers): the int8 search at its cheapest."""
    torch.manual_seed(0)
    return CED(CEDConfig(embed_dim=32, depth=1, num_heads=1)).eval()


def test_int8_graph_beyond_the_limit_refused_or_kept_on_request(one_block, tmp_path, caplog):
    import logging

    from hear_ced.export import InaccurateGraph
    from hear_ced.runtime import OnnxTagger

    path = tmp_path / "q.onnx"
    with pytest.raises(InaccurateGraph, match=r"beyond the limit 1e-09 even with 2 of its"):
        export_onnx(one_block, path, int8=True, int8_limit=1e-9)
    assert not path.exists()
    with caplog.at_level(logging.WARNING):
        export_onnx(one_block, path, int8=True, int8_limit=1e-9, allow_inaccurate=True)
    assert "kept (--allow-inaccurate)" in caplog.text
    meta = _int8_meta(path)
    assert meta["int8_limit"] == "1e-09" and len(json.loads(meta["int8_float32_layers"])) == 2
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hear_ced.runtime"):
        OnnxTagger(path)
    assert [r.message.count("beyond the limit 1e-09") for r in caplog.records] == [1]


def test_export_onnx_command_refuses_an_inaccurate_int8_graph(one_block, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from hear_ced import export
    from hear_ced.checkpoints import save_model
    from hear_ced.cli import main

    monkeypatch.setattr(export, "INT8_LIMIT", 1e-9)
    ckpt = save_model(one_block, tmp_path / "m.safetensors")
    args = ["export-onnx", str(tmp_path / "q.onnx"), "--model", str(ckpt), "--int8"]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code != 0 and "Traceback" not in refused.output
    assert "beyond the limit 1e-09" in refused.output and "--allow-inaccurate" in refused.output
    assert not (tmp_path / "q.onnx").exists()
    kept = CliRunner().invoke(main, [*args, "--allow-inaccurate"])
    assert kept.exit_code == 0, kept.output
    assert (tmp_path / "q.onnx").exists()


def test_length_limits_refused_clearly(model, tmp_path):
    sess = session(export_onnx(model, tmp_path / "m.onnx"))
    limit = max_pass_samples(model.config.target_length)
    assert run_onnx(sess, np.zeros((1, limit), np.float32)).shape == (1, 527)
    with pytest.raises(ValueError, match="cut longer clips"):
        run_onnx(sess, np.zeros((1, limit + 1), np.float32))
    shortest = model.config.min_input_samples
    assert run_onnx(sess, np.zeros((1, shortest), np.float32)).shape == (1, 527)
    with pytest.raises(ValueError, match="samples"):
        run_onnx(sess, np.zeros((1, shortest - 1), np.float32))


def test_bad_arguments_rejected(model, tmp_path):
    with pytest.raises(ValueError, match="logits"):
        export_onnx(model, tmp_path / "x.onnx", output="logits")
    with pytest.raises(TypeError, match="CED"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize(
    ("num_classes", "stored", "expected"),
    [
        (5, ["dog", "door", "rain", "car", "bird"], ["dog", "door", "rain", "car", "bird"]),
        (527, None, "audioset"),
        (6, None, None),
    ],
)
def test_class_names_travel_with_the_graph(tmp_path, num_classes, stored, expected):
    from hear_ced.labels import audioset_labels
    from hear_ced.runtime import OnnxTagger

    torch.manual_seed(0)
    config = CEDConfig(embed_dim=32, depth=1, num_heads=1, num_classes=num_classes, labels=stored)
    model = CED(config).eval()
    path = export_onnx(model, tmp_path / "m.onnx")
    sess = session(path)
    meta = sess.get_modelmeta().custom_metadata_map
    assert ("labels" in meta) == (expected is not None)
    assert OnnxTagger(path).labels == (audioset_labels() if expected == "audioset" else expected)
    assert run_onnx(sess, np.zeros((1, 16000), np.float32)).shape == (1, num_classes)


def test_embedding_graphs_have_no_class_names(model, tmp_path):
    from hear_ced.runtime import OnnxTagger

    path = export_onnx(model, tmp_path / "e.onnx", output="embeddings")
    assert "labels" not in session(path).get_modelmeta().custom_metadata_map
    with pytest.raises(ValueError, match="is a graph of embeddings"):
        OnnxTagger(path)


def _ops(path) -> collections.Counter:
    import onnx

    return collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)


@pytest.mark.parametrize("int8", [False, True], ids=["float32", "int8"])
def test_optimised_graph_computes_the_plain_graphs_outputs(model, tmp_path, int8):
    """onnxruntime's fusions written once: the plain graph's outputs, fewer nodes, metadata kept."""
    from hear_ced.runtime import OnnxTagger

    plain = export_onnx(model, tmp_path / "plain.onnx", int8=int8)
    fused = export_onnx(model, tmp_path / "fused.onnx", int8=int8, optimize=True)
    plain_ops, fused_ops = _ops(plain), _ops(fused)
    assert sum(fused_ops.values()) < sum(plain_ops.values())
    # GELU's Erf and its bias add are gone into onnxruntime's fused kernels.
    assert plain_ops["Erf"] > 0 and fused_ops["Erf"] == 0
    audio = synthetic_audio(2, seconds=3.0, seed=5).numpy()
    np.testing.assert_allclose(
        run_onnx(session(fused), audio), run_onnx(session(plain), audio), rtol=0, atol=1e-5
    )
    assert OnnxTagger(fused).labels == OnnxTagger(plain).labels


def test_export_onnx_command_optimises(tmp_path, model):
    from click.testing import CliRunner

    from hear_ced.checkpoints import save_model
    from hear_ced.cli import main

    ckpt = save_model(model, tmp_path / "m.safetensors")
    target = tmp_path / "m.onnx"
    args = ["export-onnx", str(target), "--model", str(ckpt), "--optimize"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert _ops(target)["Erf"] == 0 and sum(_ops(target).values()) > 0
