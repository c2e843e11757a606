"""ONNX export of CED with the feature frontend inside the graph.

The graph maps a 16 kHz waveform (batch, samples) to probabilities
(batch, classes) or to the scene embedding (batch, D), the mean of the final-norm
tokens; batch and samples are dynamic axes.

The frontend runs with its ``conv`` arithmetic
(``hear_ced.frontend.LogMelFrontend``), which ONNX can express.

int8 graphs are quantised as ``hear_ced.fast``'s int8 mode is: dynamically,
with per-channel int8 weights and activation scales computed per call. Each is
checked against its own float32 graph on the probe clips of ``hear_ced.fast``;
the distance is stored in the metadata (``int8_max_diff``) and logged, with a
warning when a probabilities graph is further than ``AUTO_TOLERANCE`` (0.01)
from float32.

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
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from hear_ced.common.files import atomic_path
from hear_ced.fast import AUTO_TOLERANCE, synthetic_audio
from hear_ced.frontend import SAMPLE_RATE, LogMelFrontend
from hear_ced.labels import known_class_names
from hear_ced.model import CED
from hear_ced.runtime import CONTEXT_INPUT, run_onnx, session_options
from hear_ced.specs import max_pass_samples

log = logging.getLogger(__name__)

Output = Literal["probabilities", "embeddings"]
OUTPUTS: tuple[str, ...] = ("probabilities", "embeddings")
DEFAULT_OPSET = 17


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
) -> Path:
    """Write ``model`` as an ONNX graph waveform -> ``output``; returns the path.

    ``int8`` and ``optimize`` are described in the module docstring. The file
    appears atomically (``hear_ced.common.files.atomic_path``).
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
            _quantize_int8(float_path, final, output, longest)
        if optimize:
            _optimize_graph(final)
    return Path(path)


def _session(graph: Path | bytes, options=None):
    import onnxruntime as ort

    options = options or session_options()
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def _quantize_int8(float_path: Path, path: Path, output: Output, longest: int) -> None:
    """Quantise the float32 graph into ``path``; store and log how far it moved on the probe clips."""
    import numpy as np
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        float_path,
        path,
        op_types_to_quantize=["MatMul", "Gemm"],
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    reference, quantised = _session(str(float_path)), _session(str(path))
    diff = max(
        float(np.abs(run_onnx(quantised, clip.numpy()) - run_onnx(reference, clip.numpy())).max())
        for clip in (synthetic_audio(seconds=3.0), synthetic_audio(seed=1)[:, :longest])
    )
    _write_metadata(path, {"int8_max_diff": f"{diff:.6g}"})
    if output == "probabilities" and diff > AUTO_TOLERANCE:
        log.warning(
            "the int8 graph is %.3g from float32 on the probe clips (more than %g); "
            "the float32 graph is the accurate one for these weights",
            diff,
            AUTO_TOLERANCE,
        )
    else:
        log.info("int8 graph: max |%s - float32| %.2g on the probe clips", output, diff)


def _optimize_graph(path: Path) -> None:
    """Replace the graph at ``path`` by its ``ORT_ENABLE_EXTENDED`` form; metadata is kept."""
    import onnxruntime as ort

    options = session_options()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(path)
    # Read from memory: onnxruntime writes the optimised graph over the source file.
    _session(path.read_bytes(), options)
