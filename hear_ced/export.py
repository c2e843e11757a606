"""ONNX export of CED with the feature frontend inside the graph.

The graph maps a 16 kHz waveform (batch, samples) to probabilities
(batch, classes) or to the scene embedding (batch, D), the mean of the final-norm
tokens; batch and samples are dynamic axes.

``torch.stft`` has no ONNX export, so the graph computes the STFT as a strided
``conv1d`` with a fixed basis (Hann window times cos / -sin, float64 before
rounding), after reflect padding, and keeps only the frequency bins the mel
filterbank uses. The mel projection is a 1x1 ``conv1d`` so that int8
quantisation (which targets MatMul/Gemm) leaves the frontend in float32.

int8 graphs are quantised dynamically (per-channel int8 weights, activation
scales computed per call): static quantisation with calibrated activation
scales was measured against it and was slower and no closer to float32
(docs/performance.md). Every int8 graph is checked against its own float32
graph on the probe clips of ``hear_ced.fast``; the distance is stored in the
metadata (``int8_max_diff``) and logged, with a warning when a probabilities
graph is further than ``AUTO_TOLERANCE`` (0.01) from float32.

A second input, ``context_frames`` (int64 scalar, default 0), says how many
frames at each end of the waveform are context only: they are computed and
dropped before the dB floor and the transformer. With the default the graph
tags the waveform as a clip; ``hear_ced.runtime.OnnxTagger`` gives each pass
of a long clip its neighbouring samples and ``CONTEXT_FRAMES``
(``hear_ced.specs.clip_passes``), so its frames are the whole clip's.

Length limit: one transformer pass covers ``target_length`` frames (1012 frames,
10.11 s, 161,759 samples); the graph does not chunk longer clips. The exporter
records the limit in the model's metadata, ``run_onnx`` refuses longer input
with a clear error, and clips shorter than one patch (2,400 samples) are
refused likewise.

A probabilities graph also carries its class names as a JSON list under the
metadata key ``labels`` (the model's own, or AudioSet's for a 527-class model
without names); ``onnx_labels`` reads them back.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ced_common.files import atomic_path
from hear_ced.fast import AUTO_TOLERANCE, probe_clip
from hear_ced.frontend import HOP_LENGTH, N_FFT, SAMPLE_RATE, mel_filterbank, power_to_db
from hear_ced.labels import known_class_names
from hear_ced.model import CED, PUBLISHED_SIZES
from hear_ced.onnx_optimize import optimize_graph
from hear_ced.runtime import (  # the torch-free read side
    CONTEXT_INPUT,
    onnx_labels,
    run_onnx,
    session_options,
)

__all__ = ["export_checkpoint", "export_onnx", "max_samples", "onnx_labels", "run_onnx"]

log = logging.getLogger(__name__)

Output = Literal["probabilities", "embeddings"]
OUTPUTS: tuple[str, ...] = ("probabilities", "embeddings")
DEFAULT_OPSET = 17


def max_samples(model: CED) -> int:
    """Longest input one pass (and so the exported graph) handles: 1 + n // hop <= target."""
    return model.config.target_length * HOP_LENGTH - 1


class ConvLogMelFrontend(nn.Module):
    """``LogMelFrontend`` as convolutions: the same features to about 1e-4 dB (float32 rounding)."""

    def __init__(self) -> None:
        super().__init__()
        fb = mel_filterbank()  # (n_freqs, n_mels)
        used = torch.nonzero(fb.abs().sum(dim=1) > 0).squeeze(1)
        n = torch.arange(N_FFT, dtype=torch.float64)
        angle = 2 * torch.pi * torch.outer(used.double(), n) / N_FFT  # (bins, n_fft)
        window = torch.hann_window(N_FFT, periodic=True, dtype=torch.float64)
        basis = torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window])
        self.register_buffer("basis", basis.float().unsqueeze(1), persistent=False)
        self.register_buffer("mel_fb", fb[used].T.contiguous().unsqueeze(-1), persistent=False)
        self.n_bins = len(used)

    def power_mel(self, waveform: torch.Tensor) -> torch.Tensor:
        """(batch, samples) -> mel power (batch, 64, frames), before decibels."""
        padded = F.pad(waveform.unsqueeze(1), (N_FFT // 2, N_FFT // 2), mode="reflect")
        spec = F.conv1d(padded, self.basis, stride=HOP_LENGTH)  # (B, 2 * bins, frames)
        real, imag = spec[:, : self.n_bins], spec[:, self.n_bins :]
        power = real * real + imag * imag
        return F.conv1d(power, self.mel_fb)

    def forward(
        self, waveform: torch.Tensor, context_frames: torch.Tensor | int = 0
    ) -> torch.Tensor:
        """Log-mel of ``waveform`` without ``context_frames`` frames at each end (before dB)."""
        power = self.power_mel(waveform)
        kept = torch.arange(context_frames, power.shape[-1] - context_frames)
        return power_to_db(power.index_select(-1, kept))


class WaveformGraph(nn.Module):
    """Waveform, context frames -> probabilities or mean-token embedding, one transformer pass."""

    def __init__(self, model: CED, output: Output) -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"unknown ONNX output {output!r}; choose one of {', '.join(OUTPUTS)}")
        self.frontend = ConvLogMelFrontend()
        self.model = model
        self.output = output

    def forward(self, waveform: torch.Tensor, context_frames: torch.Tensor) -> torch.Tensor:
        # Called as a module, so the graph's frontend nodes are named /frontend/...
        pooled = self.model.tokens(self.frontend(waveform, context_frames)).mean(dim=(1, 2))
        if self.output == "embeddings":
            return pooled
        return torch.sigmoid(self.model.head(pooled))


def _write_metadata(path: Path, entries: dict[str, str]) -> None:
    """Add the metadata ``entries`` and the default of ``context_frames`` (0) to the graph."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path))
    for key, value in entries.items():
        graph.metadata_props.add(key=key, value=value)
    # An initializer named like an input is that input's default (onnxruntime's
    # overridable initializers): callers that feed only the waveform get a clip.
    graph.graph.initializer.append(numpy_helper.from_array(np.array(0, np.int64), CONTEXT_INPUT))
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

    ``int8`` quantises the transformer's MatMul/Gemm weights per channel with
    onnxruntime's dynamic quantisation (activations quantised per call) and
    checks the result against the float32 graph (module docstring).
    ``optimize`` writes the graph as onnxruntime optimises it
    (``hear_ced.onnx_optimize``). The file appears atomically
    (``ced_common.files.atomic_path``).
    """
    if not isinstance(model, CED):
        raise TypeError(f"export_onnx takes a CED model, got {type(model).__name__}")
    graph = WaveformGraph(model, output).eval()
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
            "max_samples": str(max_samples(model)),
            "output": output,
            "ced_config": json.dumps(model.config.to_dict()),
        }
        names = known_class_names(model.config.labels, model.config.num_classes)
        if output == "probabilities" and names is not None:
            metadata["labels"] = json.dumps(names)
        _write_metadata(float_path, metadata)
        if int8:
            _quantize_int8(float_path, final, output, max_samples(model))
        if optimize:
            optimize_graph(final)
    return Path(path)


def _quantize_int8(float_path: Path, path: Path, output: Output, longest: int) -> None:
    """Quantise the float32 graph into ``path`` and record how far it moved on the probe clips."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        float_path,
        path,
        op_types_to_quantize=["MatMul", "Gemm"],
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    diff = _max_output_diff(float_path, path, longest)
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


def _max_output_diff(reference: Path, candidate: Path, longest: int) -> float:
    """max |candidate - reference| over the outputs of a 3 s and a 10 s probe clip."""
    import numpy as np
    import onnxruntime as ort

    sessions = [
        ort.InferenceSession(str(graph), session_options(), providers=["CPUExecutionProvider"])
        for graph in (reference, candidate)
    ]
    diff = 0.0
    for clip in (probe_clip(), probe_clip(10.0, seed=1)[:, :longest]):
        want, got = (run_onnx(session, clip.numpy()) for session in sessions)
        diff = max(diff, float(np.abs(got - want).max()))
    return diff


def export_checkpoint(
    source: str | os.PathLike,
    path: str | os.PathLike,
    output: Output = "probabilities",
    int8: bool = False,
    opset: int = DEFAULT_OPSET,
    optimize: bool = False,
) -> Path:
    """Export a model size name (its published weights, see ``hear_ced.weights``) or a checkpoint file."""
    from hear_ced.checkpoints import load_model_file
    from hear_ced.weights import resolve_weights

    source_path = Path(source)
    if source_path.exists():
        model = load_model_file(source_path)
    elif str(source) in PUBLISHED_SIZES:
        model = load_model_file(resolve_weights(str(source), option="--model"), variant=str(source))
    else:
        raise FileNotFoundError(
            f"{source!s} is neither a checkpoint file nor a published model size "
            f"({', '.join(PUBLISHED_SIZES)})"
        )
    return export_onnx(model, path, output=output, int8=int8, opset=opset, optimize=optimize)
