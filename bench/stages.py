"""Where a CED path's time goes: per-stage time of one 10 s clip at one thread.

Stages are groups of the model's modules:

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


def breakdown(model: CED) -> dict:
    """Stage table of one call of an eager CED ``model`` on one 10 s clip, one thread.

    Forward hooks add each timed module's wall time to its stage; *rest* is what
    the stages leave of the call's time.
    """
    audio = synthetic_audio(1)
    totals: dict[str, float] = defaultdict(float)
    handles = []

    def watch(stage: str, module: nn.Module) -> None:
        starts: list[float] = []

        def after(_module, _args, _out) -> None:
            totals[stage] += time.perf_counter() - starts.pop()

        handles.append(
            module.register_forward_pre_hook(lambda *_: starts.append(time.perf_counter()))
        )
        handles.append(module.register_forward_hook(after))

    with threads(1), torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(WARMUP):
            model(audio)
        watch("frontend", model.front_end)
        watch("patch embed", model.patch_embed)
        for block in model.blocks:
            watch("attention", block.attn)  # whole: its GEMMs are subtracted to leave the core
            watch("attention GEMMs", block.attn.qkv)
            watch("attention GEMMs", block.attn.proj)
            watch("MLP GEMMs", block.mlp.fc1)
            watch("MLP GEMMs", block.mlp.fc2)
        try:
            start = time.perf_counter()
            for _ in range(CALLS):
                model(audio)
            total = time.perf_counter() - start
        finally:
            for handle in handles:
                handle.remove()
    totals["attention core"] = totals.pop("attention") - totals["attention GEMMs"]
    seconds = {stage: totals[stage] / CALLS for stage in STAGES if stage != "rest"}
    seconds["rest"] = total / CALLS - sum(seconds.values())
    return {
        "calls": CALLS,
        "total_ms": total / CALLS * 1e3,
        "stages": [
            {"stage": stage, "ms": s * 1e3, "share": s * CALLS / total}
            for stage, s in seconds.items()
        ],
    }
