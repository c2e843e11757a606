"""ONNX Runtime's graph optimisations done once at export, so sessions open faster.

``optimize_graph`` rewrites an exported graph the way ONNX Runtime's
hardware-independent optimisations leave it (``ORT_ENABLE_EXTENDED``:
constant folding, redundant shape arithmetic removed, convolution + activation,
MatMul + bias + GELU and dynamic-quantised MatMul fusions into onnxruntime's
contrib ops). A session of the result computes the same outputs at the same
speed (ONNX Runtime applies these fusions when a session opens anyway) but
skips that work when it opens; docs/performance.md has the measurements. The
file then needs onnxruntime (its contrib ops are not standard ONNX).

The CPU-specific layout transforms of ``ORT_ENABLE_ALL`` stay with each
session (its default level), and onnxruntime.transformers' offline fusions are
not used: on this graph they find no attention pattern, and their
SkipLayerNormalization fusion made CED-Tiny slower (measured, same place).
"""

from __future__ import annotations

import os
from pathlib import Path


def optimize_graph(path: str | os.PathLike) -> Path:
    """Replace the graph at ``path`` by its ``ORT_ENABLE_EXTENDED`` form; metadata is kept."""
    import onnxruntime as ort

    path = Path(path)
    from hear_ced.runtime import session_options

    options = session_options()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(path)
    # Read from memory: onnxruntime writes the optimised graph over the source file.
    ort.InferenceSession(path.read_bytes(), options, providers=["CPUExecutionProvider"])
    return path
