"""Where a CED path's time goes: per-stage time of one 10 s clip at one thread.

Stages follow the model's module paths (``blocks.3.attn.qkv``):

- *frontend*: STFT, mel projection and dB (``front_end``);
- *patch embed*: the 16x16 patch convolution;
- *attention GEMMs*: the qkv and output projections (bias included);
- *attention core*: scores, softmax and the weighted sum of values (with the
  head reshapes around them);
- *MLP GEMMs*: fc1 and fc2 (bias included);
- *rest*: the call's total minus the above (input BatchNorm, positions,
  LayerNorms, GELU, residual adds, pooling, head, framework overhead).

Paths are timed eagerly with forward hooks (at one thread every op runs
synchronously in the caller, so ``perf_counter`` around a module is its time);
a compiled path fuses across these boundaries, so its eager twin is measured
instead.
"""

from __future__ import annotations

import time
import warnings
from collections import defaultdict

import torch
from torch import nn

from bench.common import threads
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
    """The stage of a module path (``blocks.0.attn.qkv``)."""
    parts = path.split(".")
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


def breakdown(model: CED) -> dict:
    """Stage table of an eager CED ``model`` on one 10 s clip."""
    seconds = torch_stages(model, synthetic_audio(1))
    total = sum(seconds.values())
    return {
        "calls": CALLS,
        "total_ms": total * 1e3,
        "stages": [
            {"stage": stage, "ms": s * 1e3, "share": s / total} for stage, s in seconds.items()
        ],
    }
