"""What ONNX Runtime and torch fuse in CED-Tiny, and what each fusion is worth, measured.

ONNX Runtime: the exported graph as written, with the session at
``ORT_ENABLE_BASIC`` and at ``ORT_ENABLE_ALL`` (its default); the graph written
by ``export_onnx(optimize=True)`` (``hear_ced.onnx_optimize``); and the graph
after ``onnxruntime.transformers.optimizer``'s fusions (attention, LayerNorm,
GELU) for a ViT of CED-Tiny's width. Each graph's node count and fused op
types are counted, and all sessions are timed round-robin with a float32
matmul at one thread; the ratio to the plain graph is the median per-round
ratio. Session opening is timed the same way.

torch: which kernels each path's attention and linear layers end up in, from
one profiled call: ``scaled_dot_product_attention``'s CPU kernel or explicit
``bmm``; the GEMM calls; and the leaf aten ops left around them, which
``torch.compile`` (inductor) replaces by its generated C++ kernels.
"""

from __future__ import annotations

import collections
import statistics
import time
import warnings
from pathlib import Path

import torch

from bench.common import interleaved, matmul_fn, ort_options, paired_ratio, threads
from bench.models import synthetic_audio
from hear_ced.export import export_onnx
from hear_ced.model import CED

PLAIN = "plain graph, ORT_ENABLE_ALL (default)"
# The kernels GEMMs and convolutions end in (none of them calls another).
_GEMM_OPS = frozenset(
    {
        "aten::addmm",
        "aten::mm",
        "aten::bmm",
        "aten::baddbmm",
        "aten::_int_mm",
        "quantized::linear_dynamic",
        "aten::mkldnn_convolution",
    }
)
_SESSION_OPENS = 5
# Op types of onnxruntime's fusions (contrib ops and standard ops that fusions produce).
_FUSED_OP_TYPES = frozenset(
    {
        "Attention",
        "MultiHeadAttention",
        "BiasGelu",
        "FastGelu",
        "Gelu",
        "SkipLayerNormalization",
        "LayerNormalization",
        "FusedMatMul",
        "FusedGemm",
        "FusedConv",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
    }
)


def _session(path: Path, level: str = "ORT_ENABLE_ALL"):
    import onnxruntime as ort

    return ort.InferenceSession(
        str(path), ort_options(1, level), providers=["CPUExecutionProvider"]
    )


def _op_counts(path: Path) -> collections.Counter:
    import onnx

    return collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def _transformers_fused(model: CED, source: Path, target: Path) -> dict[str, int]:
    """onnxruntime.transformers' fusions of ``source`` into ``target``; the fusions that applied."""
    from onnxruntime.transformers.optimizer import optimize_model

    fused = optimize_model(
        str(source),
        model_type="vit",
        num_heads=model.config.num_heads,
        hidden_size=model.config.embed_dim,
        opt_level=0,  # the offline fusions only; the session adds its own
    )
    fused.save_model_to_file(str(target))
    return {op: n for op, n in fused.get_fused_operator_statistics().items() if n}


def onnx_fusions(model: CED, folder: Path, budget_s: float, max_rounds: int) -> dict:
    """Graphs, fused ops, one-thread latency and session-open time of each ORT variant."""
    plain = export_onnx(model, folder / "plain.onnx")
    optimized = export_onnx(model, folder / "optimized.onnx", optimize=True)
    transformers = folder / "transformers.onnx"
    applied = _transformers_fused(model, plain, transformers)
    graphs = {
        "plain graph, ORT_ENABLE_BASIC": (plain, "ORT_ENABLE_BASIC"),
        PLAIN: (plain, "ORT_ENABLE_ALL"),
        "export --optimize, ORT_ENABLE_ALL": (optimized, "ORT_ENABLE_ALL"),
        "onnxruntime.transformers fusions, ORT_ENABLE_ALL": (transformers, "ORT_ENABLE_ALL"),
    }
    audio = synthetic_audio(1).numpy()
    check = synthetic_audio(2, seconds=5.0, seed=11).numpy()
    sessions = {name: _session(path, level) for name, (path, level) in graphs.items()}
    reference = sessions[PLAIN].run(None, {"waveform": check})[0]
    fns = {name: (lambda s=s: s.run(None, {"waveform": audio})) for name, s in sessions.items()}
    fns["matmul:fp32"] = matmul_fn(torch.float32)
    with threads(1):
        timings = interleaved(fns, budget_s, max_rounds=max_rounds)
    opens = _open_times(graphs)
    rows = []
    for name, (path, _level) in graphs.items():
        ops = _op_counts(path)
        diff = abs(sessions[name].run(None, {"waveform": check})[0] - reference).max()
        rows.append(
            {
                "variant": name,
                "nodes": sum(ops.values()),
                "fused_ops": {op: n for op, n in ops.items() if op in _FUSED_OP_TYPES},
                "median_ms": timings[name].median * 1e3,
                "ratio_to_plain": paired_ratio(timings[name], timings[PLAIN]),
                "open_ms": opens[name] * 1e3,
                "max_abs_diff": float(diff),
            }
        )
    return {
        "rounds": timings[PLAIN].repeats,
        "matmul_fp32_ms": timings["matmul:fp32"].median * 1e3,
        "transformers_fusions": applied,
        "rows": rows,
    }


def _open_times(graphs: dict[str, tuple[Path, str]]) -> dict[str, float]:
    """Median seconds to open each session, opened in turns."""
    times: dict[str, list[float]] = {name: [] for name in graphs}
    for _ in range(_SESSION_OPENS):
        for name, (path, level) in graphs.items():
            start = time.perf_counter()
            _session(path, level)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def torch_kernels(paths: dict[str, CED]) -> dict[str, dict]:
    """Per torch path: its attention kernel, GEMM calls and other leaf aten ops per call."""
    audio = synthetic_audio(1)
    out = {}
    with threads(1), torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, model in paths.items():
            model(audio)
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                model(audio)
            events = prof.events()
            leaves = [e.name for e in events if not e.cpu_children]
            gemms = collections.Counter(e.name for e in events if e.name in _GEMM_OPS)
            sdpa = sorted({e.name for e in events if "scaled_dot_product" in e.name})
            others = [
                n
                for n in leaves
                if n.startswith("aten::") and n not in gemms and "scaled_dot_product" not in n
            ]
            out[name] = {
                "attention": ", ".join(sdpa) if sdpa else "explicit matmuls (aten::bmm)",
                "gemm_calls": dict(gemms),
                "other_aten_ops": len(others),
            }
    return out
