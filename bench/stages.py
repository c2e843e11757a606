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
instead. Each stage with matmul work also gets its GFLOP/s (operations counted
on the float32 model) over the same-run 1024^3 matmul rate of the precision it
computes in: how far the stage is from what the CPU's kernels reach.
"""

from __future__ import annotations

import time
import warnings
from collections import defaultdict

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from bench.common import MATMUL_PREFIX, interleaved, matmul_fn, reference_gflops, threads
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
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.int8}


def stage_flops(model: CED, audio: torch.Tensor) -> dict[str, int]:
    """Operations (2 x MACs) of each matmul stage of one call of a float32 ``model``."""
    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model(audio)
    flops = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}

    def total(*suffixes: str) -> int:
        return sum(
            v for k, v in flops.items() if k.startswith("CED.blocks.") and k.endswith(suffixes)
        )

    gemms = total(".attn.qkv", ".attn.proj")
    return {
        "patch embed": flops.get("CED.patch_embed", 0),
        "attention GEMMs": gemms,
        "attention core": total(".attn") - gemms,
        "MLP GEMMs": total(".mlp.fc1", ".mlp.fc2"),
    }


def stage_precisions(mode: str) -> dict[str, str]:
    """The precision each matmul stage of a ``hear_ced.fast`` mode computes in."""
    linear = "int8" if "int8" in mode else "bf16" if mode == "bf16" else "fp32"
    return {
        "patch embed": "bf16" if mode == "bf16" else "fp32",
        "attention GEMMs": linear,
        "attention core": "bf16" if "bf16" in mode else "fp32",
        "MLP GEMMs": linear,
    }


def breakdown(model: CED, reference: CED | None = None) -> dict:
    """Stage table of one call of an eager CED ``model`` on one 10 s clip, one thread.

    Forward hooks add each timed module's wall time to its stage; *rest* is what
    the stages leave of the call's time. With the float32 ``reference`` of the
    same weights, each matmul stage also gets its rate against the same-run
    matmul of its precision, timed right after at one thread.
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
    rows = [
        {"stage": stage, "ms": s * 1e3, "share": s * CALLS / total} for stage, s in seconds.items()
    ]
    table: dict = {"calls": CALLS, "total_ms": total / CALLS * 1e3, "stages": rows}
    if reference is not None:
        precisions = stage_precisions(model.config.fast_mode or "fp32")
        fns = {f"{MATMUL_PREFIX}{p}": matmul_fn(PRECISIONS[p]) for p in set(precisions.values())}
        with threads(1):
            rates = reference_gflops(interleaved(fns, budget_s=1.0))
        flops = stage_flops(reference, audio)
        for row in rows:
            if row["stage"] in flops:
                precision = precisions[row["stage"]]
                gflops = flops[row["stage"]] / row["ms"] / 1e6
                row.update(gflops=gflops, precision=precision, of_matmul=gflops / rates[precision])
        table["matmul_gflops"] = rates
    return table
