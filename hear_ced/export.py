"""ONNX export of CED with the feature frontend inside the graph.

The graph maps a 16 kHz waveform (batch, samples) to probabilities
(batch, classes) or to the scene embedding (batch, D), the mean of the final-norm
tokens; batch and samples are dynamic axes.

The frontend runs with its ``conv`` arithmetic
(``hear_ced.frontend.LogMelFrontend``), which ONNX can express.

int8 graphs are quantised dynamically (activation scales computed per call),
with uint8 weights per output channel: onnxruntime's uint8 x int8 kernels on
AVX2 without VNNI saturate, uint8 x uint8 ones compute the same on every x86
CPU. Each is checked against its own float32 graph on the probe clips of
``hear_ced.fast``. A probabilities graph further than ``INT8_LIMIT`` (0.01)
keeps in float32 the fewest linear layers, most harmful first, that bring it
within the limit, each layer's harm measured on the actual weights
(``_harm_order``); one still beyond it with half its layers in float32 is
refused (``InaccurateGraph``) unless ``allow_inaccurate``. The metadata holds
the distance (``int8_max_diff``), the limit (``int8_limit``) and the layers
kept in float32 (``int8_float32_layers``, a JSON list of node names).

A second input, ``context_frames`` (int64 scalar, default 0), says how many
frames at each end of the waveform are context only: they are computed and
dropped before the dB floor and the transformer. With the default the graph
tags the waveform as a clip; ``hear_ced.runtime.OnnxTagger`` gives each pass
of a long clip its neighbouring samples and ``CONTEXT_FRAMES``
(``hear_ced.runtime.pass_inputs``), so its frames are the whole clip's.

Length limit: one transformer pass covers ``target_length`` frames (1012 frames,
10.11 s, 161,759 samples); the graph does not chunk longer clips. The exporter
records the limit in the model's metadata, ``run_onnx`` refuses longer input
with a clear error, and clips shorter than one patch (2,400 samples) are
refused likewise.

A probabilities graph also carries its class names as a JSON list under the
metadata key ``labels`` (the model's own, or AudioSet's for a 527-class model
without names); ``hear_ced.runtime.OnnxTagger`` reads them back.

``optimize`` writes the graph as ONNX Runtime's hardware-independent
optimisations (``ORT_ENABLE_EXTENDED``) leave it: constants folded, MatMul +
bias + GELU and the quantised MatMuls fused into onnxruntime's contrib ops.
Sessions then open faster and compute the same outputs (docs/performance.md);
the file needs onnxruntime. The CPU-specific transforms of ``ORT_ENABLE_ALL``
stay with each session.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from hear_ced.common.files import atomic_path
from hear_ced.fast import AUTO_TOLERANCE, synthetic_audio
from hear_ced.frontend import SAMPLE_RATE, LogMelFrontend
from hear_ced.labels import known_class_names
from hear_ced.model import CED
from hear_ced.runtime import CONTEXT_INPUT, session_options
from hear_ced.specs import max_pass_samples

log = logging.getLogger(__name__)

Output = Literal["probabilities", "embeddings"]
OUTPUTS: tuple[str, ...] = ("probabilities", "embeddings")
DEFAULT_OPSET = 17
# How far an int8 probabilities graph may be from float32 on the probe clips.
INT8_LIMIT = AUTO_TOLERANCE


class WaveformGraph(nn.Module):
    """Waveform, context frames -> probabilities or mean-token embedding, one transformer pass.

    ``model`` is a copy of the CED whose frontend computes with the ``conv``
    arithmetic; the caller's model is left as it is.
    """

    def __init__(self, model: CED, output: Output) -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"unknown ONNX output {output!r}; choose one of {', '.join(OUTPUTS)}")
        self.model = copy.deepcopy(model).eval()
        self.model.front_end = LogMelFrontend("conv")
        self.output = output

    def forward(self, waveform: torch.Tensor, context_frames: torch.Tensor) -> torch.Tensor:
        mel = self.model.front_end(waveform, context_frames)
        pooled = self.model.tokens(mel).mean(dim=(1, 2))
        if self.output == "embeddings":
            return pooled
        return torch.sigmoid(self.model.head(pooled))


def _write_metadata(path: Path, entries: dict[str, str]) -> None:
    """Add the metadata ``entries`` and, once, the default of ``context_frames`` (0) to the graph."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path))
    for key, value in entries.items():
        graph.metadata_props.add(key=key, value=value)
    # An initializer named like an input is that input's default (onnxruntime's
    # overridable initializers): callers that feed only the waveform get a clip.
    if all(tensor.name != CONTEXT_INPUT for tensor in graph.graph.initializer):
        default = numpy_helper.from_array(np.array(0, np.int64), CONTEXT_INPUT)
        graph.graph.initializer.append(default)
    onnx.save(graph, str(path))


def export_onnx(
    model: CED,
    path: str | os.PathLike,
    output: Output = "probabilities",
    int8: bool = False,
    opset: int = DEFAULT_OPSET,
    optimize: bool = False,
    int8_limit: float | None = None,
    allow_inaccurate: bool = False,
) -> Path:
    """Write ``model`` as an ONNX graph waveform -> ``output``; returns the path.

    ``int8``, ``int8_limit`` (default ``INT8_LIMIT``), ``allow_inaccurate`` and
    ``optimize`` are described in the module docstring. The file appears atomically (``hear_ced.common.files.atomic_path``).
    """
    if not isinstance(model, CED):
        raise TypeError(f"export_onnx takes a CED model, got {type(model).__name__}")
    graph = WaveformGraph(model, output).eval()
    longest = max_pass_samples(model.config.target_length)
    example = (torch.zeros(2, SAMPLE_RATE), torch.tensor(0))
    with atomic_path(path) as final, tempfile.TemporaryDirectory() as scratch:
        # int8 quantises a float32 graph into the final file; float32 is written there directly.
        float_path = Path(scratch) / "float32.onnx" if int8 else final
        with warnings.catch_warnings(), torch.no_grad():
            # The tracer warns about the length check in CED.tokens, which the
            # graph cannot keep; run_onnx and the metadata carry the limit instead.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph,
                example,
                str(float_path),
                input_names=["waveform", CONTEXT_INPUT],
                output_names=[output],
                dynamic_axes={"waveform": {0: "batch", 1: "samples"}, output: {0: "batch"}},
                opset_version=opset,
                dynamo=False,
            )
        metadata = {
            "sample_rate": str(SAMPLE_RATE),
            "min_samples": str(model.config.min_input_samples),
            "max_samples": str(longest),
            "output": output,
            "ced_config": json.dumps(model.config.to_dict()),
        }
        names = known_class_names(model.config.labels, model.config.num_classes)
        if output == "probabilities" and names is not None:
            metadata["labels"] = json.dumps(names)
        _write_metadata(float_path, metadata)
        if int8:
            limit = INT8_LIMIT if int8_limit is None else int8_limit
            _quantize_int8(float_path, final, output, longest, limit, allow_inaccurate)
        if optimize:
            _optimize_graph(final)
    return Path(path)


def _session(graph: Path | bytes, options=None):
    import onnxruntime as ort

    options = options or session_options()
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


class InaccurateGraph(ValueError):
    """An int8 graph further from float32 than the limit, even with layers kept in float32."""


def _probe_feeds(longest: int) -> list[dict]:
    """The probe clips of ``hear_ced.fast`` as graph inputs, the longest cut to one pass."""
    clips = (synthetic_audio(seconds=3.0), synthetic_audio(seed=1)[:, :longest])
    return [{"waveform": clip.numpy()} for clip in clips]


def _distance(session, feeds: list[dict], references: list, extra: dict | None = None) -> float:
    """Max |output - reference| of ``session`` over the probe ``feeds``."""
    import numpy as np

    return max(
        float(np.abs(session.run(None, {**feed, **(extra or {})})[0] - reference).max())
        for feed, reference in zip(feeds, references, strict=True)
    )


def _quantize(float_path: Path, path: Path, keep_float32: Sequence[str] = ()) -> None:
    """Quantise the linear layers dynamically, except the nodes ``keep_float32``.

    Weights are uint8 per output channel, like the activations: onnxruntime's
    uint8 x int8 kernels on AVX2 without VNNI add pairs of products in int16
    and saturate, uint8 x uint8 ones do not, so the graph computes the same on
    every x86 CPU, whichever it was checked on (docs/deploy.md#onnx-export).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The quantiser logs every tensor it leaves alone on the root logger.
    logging.disable(logging.WARNING)
    try:
        quantize_dynamic(
            float_path,
            path,
            op_types_to_quantize=["MatMul", "Gemm"],
            weight_type=QuantType.QUInt8,
            per_channel=True,
            nodes_to_exclude=list(keep_float32),
        )
    finally:
        logging.disable(logging.NOTSET)


def _switchable(float_path: Path, int8_path: Path) -> tuple[bytes, list[str]]:
    """The int8 graph with each quantised layer's float32 node beside it, and those layers' names.

    The boolean input ``int8_layers`` (one per layer, in graph order) chooses
    which of the two each layer's output comes from, so one session measures
    any set of layers kept in float32.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    reference, graph = onnx.load(str(float_path)).graph, onnx.load(str(int8_path))
    float_inits = {tensor.name: tensor for tensor in reference.initializer}
    producers = {out: node for node in graph.graph.node for out in node.output}
    # A layer is quantised when its output no longer comes from a MatMul.
    layers = [
        node
        for node in reference.node
        if node.op_type == "MatMul"
        and node.input[1] in float_inits
        and producers[node.output[0]].op_type != "MatMul"
    ]
    present = {tensor.name for tensor in graph.graph.initializer}
    switched = {node.output[0]: index for index, node in enumerate(layers)}
    float_nodes = {node.output[0]: node for node in layers}
    nodes = []
    for node in graph.graph.node:
        outputs = [out + "/int8" if out in switched else out for out in node.output]
        nodes.append(
            helper.make_node(node.op_type, node.input, outputs, node.name, domain=node.domain)
        )
        nodes[-1].attribute.extend(node.attribute)
        for out in node.output:
            if out not in switched:
                continue
            index, layer = switched[out], float_nodes[out]
            for name in layer.input[1:]:
                if name not in present:
                    graph.graph.initializer.append(float_inits[name])
                    present.add(name)
            graph.graph.initializer.append(
                numpy_helper.from_array(np.array(index, np.int64), f"int8_layers/{index}")
            )
            floating = helper.make_node(layer.op_type, layer.input, [out + "/float32"])
            floating.attribute.extend(layer.attribute)
            nodes += [
                floating,
                helper.make_node("Gather", ["int8_layers", f"int8_layers/{index}"], [out + "/use"]),
                helper.make_node("Where", [out + "/use", out + "/int8", out + "/float32"], [out]),
            ]
    del graph.graph.node[:]
    graph.graph.node.extend(nodes)
    graph.graph.input.append(
        helper.make_tensor_value_info("int8_layers", onnx.TensorProto.BOOL, [len(layers)])
    )
    return graph.SerializeToString(), [node.name for node in layers]


def _harm_order(float_path: Path, int8_path: Path, feeds, references, limit: float):
    """The quantised layers, most harmful first, and how many of them to keep in float32.

    A layer's harm is the distance of the graph with that layer alone
    quantised; the count is the fewest layers, in that order, whose return to
    float32 brings the switchable graph within ``limit`` (at most half of them:
    beyond that int8 no longer pays). Deterministic: the probe clips and the
    weights decide.
    """
    import numpy as np

    graph, names = _switchable(float_path, int8_path)
    session = _session(graph)
    alone = np.eye(len(names), dtype=bool)
    harm = [_distance(session, feeds, references, {"int8_layers": row}) for row in alone]
    order = sorted(range(len(names)), key=lambda i: (-harm[i], i))
    quantised = np.ones(len(names), bool)
    count = 0
    while count < len(names) // 2:
        quantised[order[count]] = False
        count += 1
        if _distance(session, feeds, references, {"int8_layers": quantised}) <= limit:
            break
    return [names[i] for i in order], count


def _quantize_int8(
    float_path: Path, path: Path, output: Output, longest: int, limit: float, allow_inaccurate: bool
) -> None:
    """Quantise the float32 graph into ``path`` within ``limit`` of it on the probe clips.

    A probabilities graph further than ``limit`` keeps its most harmful layers
    in float32 (``_harm_order``), one more at a time while the written graph
    is still beyond it (float32 rounding moves the quantised values a little);
    one beyond it with half its layers in float32 raises ``InaccurateGraph``
    unless ``allow_inaccurate``. The metadata records the distance, the limit
    and the layers kept in float32.
    """
    import onnx
    from onnxruntime.quantization.onnx_model import ONNXModel

    # The quantiser turns Gemm into MatMul + Add under new names; done first,
    # the layers have the same names in the float32 graph and the quantiser.
    graph = ONNXModel(onnx.load(str(float_path)))
    graph.replace_gemm_with_matmul()
    onnx.save(graph.model, str(float_path))
    feeds = _probe_feeds(longest)
    reference = _session(str(float_path))
    references = [reference.run(None, feed)[0] for feed in feeds]
    _quantize(float_path, path)
    diff = _distance(_session(str(path)), feeds, references)
    kept: list[str] = []
    if output == "probabilities" and diff > limit:
        order, count = _harm_order(float_path, path, feeds, references, limit)
        while True:
            kept = order[:count]
            _quantize(float_path, path, kept)
            diff = _distance(_session(str(path)), feeds, references)
            if diff <= limit or count >= len(order) // 2:
                break
            count += 1
    metadata = {"int8_max_diff": f"{diff:.6g}", "int8_float32_layers": json.dumps(kept)}
    if output == "probabilities":
        metadata["int8_limit"] = f"{limit:g}"
    _write_metadata(path, metadata)
    if output == "probabilities" and diff > limit:
        message = (
            f"the int8 graph is {diff:.3g} from float32 on the probe clips, beyond the limit "
            f"{limit:g} even with {len(kept)} of its linear layers in float32"
        )
        if not allow_inaccurate:
            raise InaccurateGraph(f"{message}; export float32, or keep it with --allow-inaccurate")
        log.warning("%s; kept (--allow-inaccurate)", message)
    else:
        log.info(
            "int8 graph: max |%s - float32| %.2g on the probe clips, %d linear layers in float32",
            output,
            diff,
            len(kept),
        )


def _optimize_graph(path: Path) -> None:
    """Replace the graph at ``path`` by its ``ORT_ENABLE_EXTENDED`` form; metadata is kept."""
    import onnxruntime as ort

    options = session_options()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(path)
    # Read from memory: onnxruntime writes the optimised graph over the source file.
    _session(path.read_bytes(), options)
