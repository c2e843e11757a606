"""Optional CPU inference fast paths for CED.

``optimize_for_inference`` returns a *new* model (the argument is deep-copied and
never touched), so the float32 default path keeps its exact outputs. Every
mode keeps the full ``CED`` interface (``mel``, ``tokens``, ``encode``,
``forward_mel``, ``head``), so the HEAR API and the CLI can use it unchanged.

Modes (speed and accuracy measured in BENCHMARKS.md):

- ``fp32``: float32 everywhere; only the frontend computes with its ``fast``
  arithmetic (``hear_ced.frontend.LogMelFrontend``).
- ``bf16``: the transformer runs in bfloat16 (weights converted once, not per
  call as under autocast); attention as two bf16 matmuls with a float32
  softmax; the frontend, the input BatchNorm, the final LayerNorm and the head
  stay float32 so the dB floor and the returned tokens keep full range. Fast
  only on CPUs with native bf16 (AVX512-BF16, AMX); see ``native_bf16``.
- ``int8``: the Linear layers of the transformer blocks are dynamically
  quantised to int8 (per-channel weights, activation scales computed per call),
  the rest float32. Runs on every x86 CPU (FBGEMM: AVX2's 16-bit int8 dot
  products, VNNI where present); weights decide how close it stays to float32.
  Static quantisation (activation scales calibrated beforehand) is no faster
  and no closer to float32 (docs/performance.md), so it is not offered.
- ``int8-bf16``: int8 Linear layers and bf16 attention matmuls.
- ``auto``: the fastest of the modes this CPU runs natively
  (``auto_candidates``) whose probabilities stay within ``AUTO_TOLERANCE``
  (0.01) of float32 on a probe clip, timed round-robin on that clip. The
  decision is kept (``auto_cache_path``) under a key of the CPU, the torch
  version and the weights, so a later process with the same model on the same
  machine converts at once, without probe or timing.

The bf16 modes run only where bf16 is native: a CPU without it emulates bf16
far slower than float32, so asking for them there is an error, not a silent
slowdown.

``compile=True`` additionally compiles the token pass (patches to final
norm) with ``torch.compile``'s CPU backend and frozen weights; the first
calls pay the compile time, so it pays off only in long-running processes.

Probabilities, for ``auto``'s check and timing, come from the one prediction
of a clip (``hear_ced.tagging.predict``).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import statistics
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from hear_ced.checkpoints import weights_sha256
from hear_ced.common.files import folder_lock, read_json, write_json
from hear_ced.frontend import SAMPLE_RATE, LogMelFrontend
from hear_ced.model import CED, Attention, build_model
from hear_ced.runtime import cpu_fields
from hear_ced.specs import cache_dir
from hear_ced.tagging import predict

log = logging.getLogger(__name__)

Mode = Literal["auto", "fp32", "bf16", "int8", "int8-bf16"]
MODES: tuple[str, ...] = ("fp32", "bf16", "int8", "int8-bf16")
AUTO = "auto"
# ``auto`` accepts a reduced-precision path only this close to float32 (max |p - p_fp32|).
AUTO_TOLERANCE = 0.01
# Rounds of ``auto``'s timing (each times every accurate candidate once, after a warm-up call).
AUTO_TIMING_ROUNDS = 3
# The file of ``auto``'s decisions: this variable, else ``fast-auto.json`` in the cache folder.
ENV_AUTO_CACHE = "HEAR_CED_FAST_CACHE"
AUTO_CACHE_FORMAT = "hear-ced fast=auto decisions v1"
_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
_INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


@dataclass(frozen=True)
class CpuFeatures:
    """What ``auto`` decides from: torch's CPU capability, the CPU's feature flags and model name."""

    capability: str
    flags: frozenset[str]
    model: str = ""

    @property
    def native_bf16(self) -> bool:
        """bf16 dot products in hardware (AVX512-BF16 or AMX), which oneDNN's bf16 GEMMs use."""
        return bool(self.flags & _BF16_FLAGS)

    def key(self) -> str:
        """The CPU as ``auto``'s cache names it: model, capability and the flags that matter."""
        return f"{self.model} | {self.capability} | {' '.join(sorted(self.flags))}"


@functools.cache
def cpu_features(cpuinfo: str = "/proc/cpuinfo") -> CpuFeatures:
    """This machine's features: torch's capability and the first processor's model and flags.

    Only the flags that matter here are kept, to keep the cache key readable;
    none where ``cpuinfo`` does not exist (not Linux).
    """
    fields = cpu_fields(cpuinfo)
    wanted = _BF16_FLAGS | _INT8_DOT_FLAGS | {"avx2", "avx512f"}
    return CpuFeatures(
        torch.backends.cpu.get_cpu_capability(),
        frozenset(fields.get("flags", "").split()) & wanted,
        fields.get("model name", ""),
    )


def native_bf16() -> bool:
    """True when this CPU has bf16 arithmetic that oneDNN uses (AVX512-BF16 or AMX)."""
    return cpu_features().native_bf16 and torch.backends.mkldnn.is_available()


def auto_candidates(features: CpuFeatures) -> tuple[str, ...]:
    """The modes ``auto`` checks and times on a CPU with ``features``, most exact first.

    Every mode the CPU runs natively: int8 everywhere, the bf16 modes with
    native bf16 (emulated bf16 is slower than float32). ``fp32`` wins ties.
    """
    if features.native_bf16:
        return ("fp32", "bf16", "int8", "int8-bf16")
    return ("fp32", "int8")


def auto_cache_path() -> Path:
    """The JSON file of ``auto``'s decisions (delete it to decide again).

    ``$HEAR_CED_FAST_CACHE`` if set, else ``fast-auto.json`` in the cache
    folder of the weights (``$HEAR_CED_CACHE`` or ``~/.cache/hear_ced``).
    """
    return Path(os.environ.get(ENV_AUTO_CACHE) or cache_dir() / "fast-auto.json")


def synthetic_audio(batch: int = 1, seconds: float = 10.0, seed: int = 0) -> torch.Tensor:
    """Seeded synthetic 16 kHz audio (B, samples): gliding tones, noise bursts and clicks.

    Unlike white noise its log-mel has the contrast of real recordings (quiet
    gaps, loud onsets), so the dB floor, the BatchNorm and the attention all
    see varied input, and a reduced-precision path is checked on more than one
    level of input.
    """
    gen = torch.Generator().manual_seed(seed)
    n = int(seconds * SAMPLE_RATE)
    t = torch.arange(n) / SAMPLE_RATE
    clips = []
    for _ in range(batch):
        r = torch.rand(8, generator=gen)
        f0 = 100 + 2000 * r[0]
        glide = f0 * (1 + 0.5 * torch.sin(2 * math.pi * (0.1 + r[1]) * t))
        tone = torch.sin(2 * math.pi * torch.cumsum(glide, 0) / SAMPLE_RATE)
        envelope = (torch.sin(2 * math.pi * (0.3 + 2 * r[2]) * t) > 0.3 * r[3]).float()
        bursts = (
            torch.randn(n, generator=gen)
            * ((torch.rand(n // 1600 + 1, generator=gen) > 0.7).float().repeat_interleave(1600)[:n])
        )
        clicks = (torch.rand(n, generator=gen) > 0.9995).float()
        clip = 0.3 * r[4] * tone * envelope + 0.1 * r[5] * bursts + 0.5 * clicks
        clips.append(clip / clip.abs().max().clamp(min=1e-3) * (0.2 + 0.7 * r[6]))
    return torch.stack(clips).float()


@torch.no_grad()
def calibrated_model(variant: str, seed: int = 0, **overrides) -> CED:
    """A randomly initialised CED whose activations and logits spread like a trained tagger's.

    CED's own initialisation (std 0.02) makes every token nearly alike and every
    probability close to 0.5, which would make any fast path look accurate. Here
    the layers get unit-gain random weights, the input BatchNorm is fitted to
    the features of ``synthetic_audio`` and the head is scaled so logits have
    mean -3 and std 2 over classes: precision loss shows in the outputs, and no
    published weights are needed to check a path.
    """
    torch.manual_seed(seed)
    model = build_model(variant, **overrides).eval()
    for module in model.blocks.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=module.in_features**-0.5)
            nn.init.normal_(module.bias, std=0.02)
        elif isinstance(module, nn.LayerNorm):
            nn.init.normal_(module.weight, mean=1.0, std=0.1)
            nn.init.normal_(module.bias, std=0.1)
    nn.init.normal_(model.time_pos_embed, std=0.5)
    nn.init.normal_(model.freq_pos_embed, std=0.5)
    mel = model.mel(synthetic_audio(4, seed=seed + 1))
    model.init_bn.running_mean.copy_(mel.mean(dim=(0, 2)))
    model.init_bn.running_var.copy_(mel.var(dim=(0, 2)))
    head = model.outputlayer[1]
    nn.init.normal_(head.weight, std=head.in_features**-0.5)
    logits = model.forward_mel(mel)
    scale = 2.0 / logits.std().clamp(min=1e-6)
    head.weight.mul_(scale)
    head.bias.copy_((head.bias - logits.mean()) * scale - 3.0)
    return model


def measure_latency(models: dict[str, CED], audio: torch.Tensor) -> dict[str, float]:
    """Median seconds per prediction of each model on the clip ``audio``, timed round-robin.

    Each of ``AUTO_TIMING_ROUNDS`` rounds calls every model once, so all of
    them see the same machine load; the models are expected warm (called once).
    """
    seconds: dict[str, list[float]] = {mode: [] for mode in models}
    for _ in range(AUTO_TIMING_ROUNDS):
        for mode, model in models.items():
            start = time.perf_counter()
            predict(model, audio)
            seconds[mode].append(time.perf_counter() - start)
    return {mode: statistics.median(times) for mode, times in seconds.items()}


class MatmulAttention(nn.Module):
    """Attention with the weights of an ``Attention`` module, as two bf16 matmuls.

    The matmuls run on the CPU's bf16 units, faster than the fused CPU kernel
    for CED's 248-token sequences; the softmax runs in float32.
    """

    def __init__(self, attn: Attention) -> None:
        super().__init__()
        self.num_heads = attn.num_heads
        self.qkv = attn.qkv
        self.proj = attn.proj
        weight = getattr(attn.proj, "weight", None)
        # A dynamically quantised Linear exposes weight() as a method and takes float32.
        self.proj_dtype = weight.dtype if isinstance(weight, torch.Tensor) else torch.float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        d_head = d // self.num_heads
        qkv = self.qkv(x).to(torch.bfloat16).view(b, n, 3, self.num_heads, d_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, d_head)
        scores = torch.matmul(q * d_head**-0.5, k.transpose(-1, -2))
        weights = F.softmax(scores.float(), dim=-1).to(torch.bfloat16)
        out = torch.matmul(weights, v).transpose(1, 2).reshape(b, n, d)
        return self.proj(out.to(self.proj_dtype))


class CastInput(nn.Module):
    """Runs ``module`` on its input cast to ``dtype`` (dtype boundaries of mixed precision)."""

    def __init__(self, module: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.module = module
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.to(self.dtype))


def optimize_for_inference(
    model: CED,
    mode: Mode = "fp32",
    compile: bool = False,
    features: CpuFeatures | None = None,
) -> CED:
    """A faster copy of ``model`` for inference (eval mode, no gradients needed).

    ``model`` itself is left unchanged. See the module docstring for what each
    mode changes; BENCHMARKS.md lists each mode's speed and its distance from
    the float32 outputs. The returned model's ``config.fast_mode`` names
    the mode it runs (for ``auto``: the one chosen). ``features`` overrides the
    detected CPU features (which modes run natively).
    """
    if mode != AUTO and mode not in MODES:
        choices = ", ".join((AUTO, *MODES))
        raise ValueError(f"unknown inference mode {mode!r}; choose one of {choices}")
    if not isinstance(model, CED):
        raise TypeError(f"optimize_for_inference takes a CED model, got {type(model).__name__}")
    features = features or cpu_features()
    on_cpu = next(model.parameters()).device.type == "cpu"
    if on_cpu and "bf16" in mode and not features.native_bf16:
        raise ValueError(
            f"inference mode {mode} needs native bf16 (AVX512-BF16 or AMX), which this CPU "
            f"({features.model or 'unknown model'}) lacks; use fp32, int8 or auto"
        )
    fast = _auto(model, features) if mode == AUTO else _convert(model, mode)
    if compile:
        # The whole token pass as one graph, weights frozen as constants: inductor
        # then fuses the elementwise work (adds, GELU, LayerNorm, softmax) and
        # prepacks the weights for oneDNN. A new input length recompiles once,
        # after which shapes are dynamic.
        fast.tokens = torch.compile(fast.tokens, options={"freezing": True})
    return fast


def _auto(model: CED, features: CpuFeatures) -> CED:
    """``auto``: the cached decision for this CPU, torch and weights, else a new one, stored."""
    candidates = auto_candidates(features)
    fields = {
        "cpu": features.key(),
        "torch": torch.__version__,
        "weights": weights_sha256(model),
        "tolerance": AUTO_TOLERANCE,
    }
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]
    path = auto_cache_path()
    entry = _read_decisions(path).get(key)
    if isinstance(entry, dict) and entry.get("mode") in candidates:
        log.debug("fast=auto: %s, as decided before (%s)", entry["mode"], path)
        return _convert(model, entry["mode"])
    if entry is not None:
        log.warning("fast=auto: ignoring a cached decision this CPU cannot run (%s)", path)
    fast, decision = _decide(model, candidates)
    _store_decision(path, key, {**fields, **decision})
    return fast


def _decide(model: CED, candidates: tuple[str, ...]) -> tuple[CED, dict]:
    """The fastest candidate within ``AUTO_TOLERANCE`` of ``model`` on a synthetic clip, and the record."""
    audio = synthetic_audio(seconds=3.0)[0]
    was_training = model.training
    try:
        reference = predict(model.eval(), audio)
    finally:
        model.train(was_training)
    accurate: dict[str, CED] = {}
    diffs: dict[str, float] = {}
    for mode in candidates:
        fast = _convert(model, mode)
        # max |p - p_fp32| over the classes; also the warm-up call of the timing.
        diffs[mode] = (predict(fast, audio) - reference).abs().max().item()
        # fp32 is float32 arithmetic throughout: the fallback, kept whatever its rounding.
        if mode == "fp32" or diffs[mode] <= AUTO_TOLERANCE:
            accurate[mode] = fast
        else:
            log.debug(
                "fast=auto: %s is %.3g from float32 on the probe clip (bound %g); not used",
                mode,
                diffs[mode],
                AUTO_TOLERANCE,
            )
    latency = measure_latency(accurate, audio) if len(accurate) > 1 else {}
    chosen = min(accurate, key=lambda mode: latency.get(mode, 0.0))  # ties: the more exact mode
    ms = {mode: round(1e3 * seconds, 3) for mode, seconds in latency.items()}
    log.debug("fast=auto: %s (probe clip ms %s, max prob diff %s)", chosen, ms, diffs)
    decision = {
        "mode": chosen,
        "max_prob_diff": diffs,
        "ms": ms,
        "decided": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return accurate[chosen], decision


def _read_decisions(path: Path, quiet: bool = False) -> dict[str, dict]:
    """The decisions stored in ``path``: none for a missing file, none with a warning for a bad one."""
    if not path.exists():
        return {}
    try:
        data = read_json(path)
    except (OSError, ValueError) as exc:
        problem = str(exc)
    else:
        valid = isinstance(data, dict) and data.get("format") == AUTO_CACHE_FORMAT
        if valid and isinstance(data.get("decisions"), dict):
            return data["decisions"]
        problem = f"{path} is not a file of fast=auto decisions ({AUTO_CACHE_FORMAT!r})"
    if not quiet:
        log.warning("fast=auto: ignoring its cache: %s", problem)
    return {}


def _store_decision(path: Path, key: str, decision: dict) -> None:
    """Add ``decision`` to the file atomically, under a lock; a failed write only costs a later re-run."""
    try:
        with folder_lock(path.parent, path.stem):
            decisions = _read_decisions(path, quiet=True)
            decisions[key] = decision
            write_json(path, {"format": AUTO_CACHE_FORMAT, "decisions": decisions})
    except OSError as exc:
        log.warning("fast=auto: could not keep the decision in %s (%s)", path, exc)


def _convert(model: CED, mode: str) -> CED:
    """The fast copy of ``model`` for one concrete mode (module docstring)."""
    fast = copy.deepcopy(model).eval()
    fast.requires_grad_(False)
    fast.front_end = LogMelFrontend("fast").to(next(model.parameters()).device)
    if mode in ("int8", "int8-bf16"):
        with warnings.catch_warnings():
            # torch marks its eager quantisation API deprecated; it is still the
            # one that needs no extra package.
            warnings.simplefilter("ignore", (DeprecationWarning, UserWarning))
            qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
            fast.blocks = torch.ao.quantization.quantize_dynamic(
                fast.blocks, {nn.Linear: qconfig}, dtype=torch.qint8, inplace=True
            )
    if mode == "bf16":
        # Patches, positions and blocks in bf16; the final norm maps back to float32.
        bf16 = torch.bfloat16
        fast.patch_embed = CastInput(fast.patch_embed.to(bf16), bf16)
        fast.time_pos_embed = nn.Parameter(fast.time_pos_embed.detach().to(bf16), False)
        fast.freq_pos_embed = nn.Parameter(fast.freq_pos_embed.detach().to(bf16), False)
        fast.blocks.to(bf16)
        fast.norm = CastInput(fast.norm, torch.float32)
    if mode in ("bf16", "int8-bf16"):
        for block in fast.blocks:
            block.attn = MatmulAttention(block.attn)
    fast.config = dataclasses.replace(model.config, fast_mode=mode)
    return fast
