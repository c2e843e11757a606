"""Where a CED path's time goes: per-stage time of one 10 s clip at one thread.

Stages follow the model's module paths, which torch hooks see and the
exported ONNX graph keeps in its node names (``/front_end/Conv``,
``/blocks.3/attn/qkv/MatMul``):

- *frontend*: STFT, mel projection and dB (``front_end``);
- *patch embed*: the 16x16 patch convolution;
- *attention GEMMs*: the qkv and output projections (bias included);
- *attention core*: scores, softmax and the weighted sum of values (with the
  head reshapes around them);
- *MLP GEMMs*: fc1 and fc2 (bias included; GELU too where ONNX Runtime fuses
  it into fc1's node);
- *rest*: the call's total minus the above (input BatchNorm, positions,
  LayerNorms, GELU, residual adds, pooling, head, framework overhead).

torch paths are timed eagerly with forward hooks (at one thread every op
runs synchronously in the caller, so ``perf_counter`` around a module is its
time); a compiled path fuses across these boundaries, so its eager twin is
measured instead. ONNX Runtime paths use its profiler's per-node kernel times.
"""

from __future__ import annotations

import json
import time
import warnings
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

from bench.common import ort_options, threads
from hear_ced.fast import synthetic_audio
from hear_ced.model import CED

STAGES = (
    "frontend",
    "patch embed",
    "attention GEMMs",
    "attention core",
    "MLP GEMMs",
    "rest",
)
WARMUP = 3
CALLS = 10


# The GEMMs of each transformer branch, by module name.
_GEMMS = {"attn": ("qkv", "proj"), "mlp": ("fc1", "fc2")}


def stage_of(path: str) -> str:
    """The stage of a module path (``blocks.0.attn.qkv``) or ONNX node name (``/blocks.0/attn/...``)."""
    parts = path.strip("/").replace("/", ".").split(".")
    if "front_end" in parts:
        return "frontend"
    if "patch_embed" in parts:
        return "patch embed"
    for branch, label in (("attn", "attention"), ("mlp", "MLP")):
        if branch in parts:
            inner = parts[parts.index(branch) + 1 : parts.index(branch) + 2]
            if inner and inner[0] in _GEMMS[branch]:
                return f"{label} GEMMs"
            return "attention core" if branch == "attn" else "rest"
    return "rest"


def _watched(name: str) -> bool:
    """Modules the clock times: frontend, patch embedding, each attention and branch GEMM."""
    leaf = name.rsplit(".", 1)[-1]
    if name in ("front_end", "patch_embed") or leaf == "attn":
        return True
    return leaf in _GEMMS["attn"] + _GEMMS["mlp"] and stage_of(name).endswith("GEMMs")


class _StageClock:
    """Forward hooks adding each timed module's wall time to its stage."""

    def __init__(self, model: CED) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.handles = []
        # Each attention module as a whole: its GEMMs are subtracted to leave the core.
        for name, module in model.named_modules():
            if _watched(name):
                self._watch(name, module)

    def _watch(self, name: str, module: nn.Module) -> None:
        starts: list[float] = []
        stage = stage_of(name)

        def before(_module, _args) -> None:
            starts.append(time.perf_counter())

        def after(_module, _args, _out) -> None:
            elapsed = time.perf_counter() - starts.pop()
            if name.endswith(".attn"):
                self.totals["attention (whole)"] += elapsed
            else:
                self.totals[stage] += elapsed

        self.handles += [module.register_forward_pre_hook(before)]
        self.handles += [module.register_forward_hook(after)]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _split(totals: dict[str, float], total: float, calls: int) -> dict[str, float]:
    """Seconds per stage and call; *rest* is what the stages leave of ``total``."""
    whole = totals.pop("attention (whole)", None)
    if whole is not None:
        totals["attention core"] = whole - totals.get("attention GEMMs", 0.0)
    out = {stage: totals.get(stage, 0.0) / calls for stage in STAGES if stage != "rest"}
    out["rest"] = total / calls - sum(out.values())
    return out


def torch_stages(model: CED, audio: torch.Tensor) -> dict[str, float]:
    """Seconds per stage of one call of an eager CED ``model`` on ``audio``, one thread."""
    with threads(1), torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(WARMUP):
            model(audio)
        clock = _StageClock(model)
        try:
            start = time.perf_counter()
            for _ in range(CALLS):
                model(audio)
            total = time.perf_counter() - start
        finally:
            clock.remove()
    return _split(dict(clock.totals), total, CALLS)


def onnx_stages(path: Path, audio: torch.Tensor, folder: Path) -> dict[str, float]:
    """Seconds per stage of one ONNX Runtime call of the graph at ``path``, one thread."""
    import onnxruntime as ort

    options = ort_options(1)
    options.enable_profiling = True
    options.profile_file_prefix = str(folder / "ort-profile")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"waveform": audio.numpy()}
    for _ in range(WARMUP):
        session.run(None, feed)
    start = time.perf_counter()
    for _ in range(CALLS):
        session.run(None, feed)
    elapsed = time.perf_counter() - start
    events = json.loads(Path(session.end_profiling()).read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    if len(runs) != WARMUP + CALLS:
        raise RuntimeError(f"ONNX Runtime's profile has {len(runs)} runs, not {WARMUP + CALLS}")
    first = sorted(run["ts"] for run in runs)[WARMUP]
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["ts"] >= first:
            totals[stage_of(event["name"].removesuffix("_kernel_time"))] += event["dur"] / 1e6
    totals.pop("rest", None)
    return _split(dict(totals), elapsed, CALLS)


def breakdown(path: CED | Path, folder: Path) -> dict:
    """Stage table of one path: an eager torch model, or the ONNX graph at a ``Path``."""
    audio = synthetic_audio(1)
    if isinstance(path, Path):
        seconds = onnx_stages(path, audio, folder)
    else:
        seconds = torch_stages(path, audio)
    total = sum(seconds.values())
    return {
        "calls": CALLS,
        "total_ms": total * 1e3,
        "stages": [
            {"stage": stage, "ms": s * 1e3, "share": s / total} for stage, s in seconds.items()
        ],
    }
