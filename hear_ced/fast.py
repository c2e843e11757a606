"""Optional CPU inference fast paths for CED.

``optimize_for_inference`` returns a *new* model (the argument is deep-copied and
never touched), so the float32 default path keeps its exact outputs. Every
mode keeps the full ``CED`` interface (``mel``, ``tokens``, ``encode``,
``forward_mel``, ``head``), so the HEAR API and the CLI can use it unchanged.

Modes (speed and accuracy measured in BENCHMARKS.md):

- ``fp32``: float32 everywhere; only the frontend's power spectrum is
  computed as z * conj(z) instead of ``abs(z)**2`` (the same features to
  float32 rounding, about 2x faster frontend).
- ``bf16``: the transformer runs in bfloat16 (weights converted once, not per
  call as under autocast); attention as two bf16 matmuls with a float32
  softmax; the frontend, the input BatchNorm, the final LayerNorm and the head
  stay float32 so the dB floor and the returned tokens keep full range. Fast
  only on CPUs with native bf16 (AVX512-BF16, AMX); see ``native_bf16``.
- ``int8``: the Linear layers of the transformer blocks are dynamically
  quantised to int8 (per-channel weights, activation scales computed per call),
  the rest float32. Uses VNNI where present.
- ``int8-bf16``: int8 Linear layers and bf16 attention matmuls.
- ``auto``: the fastest of the above whose probabilities stay within
  ``AUTO_TOLERANCE`` (0.01) of float32 on this CPU. The candidates follow from
  the CPU's features (``auto_candidates``: bf16 where the CPU has native bf16,
  int8 where it has int8 dot products, float32 otherwise); the first is
  checked on a probe clip against the float32 model, and a candidate that
  misses the bound is dropped with a logged warning, ending at ``fp32``.

``compile=True`` additionally compiles the token pass (patches to final
norm) with ``torch.compile``'s CPU backend and frozen weights; the first
calls pay the compile time (over a minute on a busy 2-core machine), so it
pays off only in long-running processes.
"""

from __future__ import annotations

import copy
import functools
import itertools
import logging
import math
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from hear_ced.frontend import SAMPLE_RATE, LogMelFrontend
from hear_ced.model import CED, Attention

log = logging.getLogger(__name__)

Mode = Literal["auto", "fp32", "bf16", "int8", "int8-bf16"]
MODES: tuple[str, ...] = ("fp32", "bf16", "int8", "int8-bf16")
AUTO = "auto"
# ``auto`` accepts a reduced-precision path only this close to float32 (max |p - p_fp32|).
AUTO_TOLERANCE = 0.01
_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
_INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


@dataclass(frozen=True)
class CpuFeatures:
    """What ``auto`` decides from: torch's CPU capability and the CPU's feature flags."""

    capability: str
    flags: frozenset[str]

    @property
    def native_bf16(self) -> bool:
        """bf16 dot products in hardware (AVX512-BF16 or AMX), which oneDNN's bf16 GEMMs use."""
        return bool(self.flags & _BF16_FLAGS)

    @property
    def int8_dot(self) -> bool:
        """int8 dot products in hardware (VNNI or AMX), which dynamic quantisation uses."""
        return bool(self.flags & _INT8_DOT_FLAGS)


def _cpuinfo_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The first processor's flags; empty where the file does not exist (not Linux)."""
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def cpu_features() -> CpuFeatures:
    """This machine's features (only the flags that matter here, to keep it readable)."""
    wanted = _BF16_FLAGS | _INT8_DOT_FLAGS | {"avx2", "avx512f"}
    return CpuFeatures(torch.backends.cpu.get_cpu_capability(), _cpuinfo_flags() & wanted)


def native_bf16() -> bool:
    """True when this CPU has bf16 arithmetic that oneDNN uses (AVX512-BF16 or AMX)."""
    return cpu_features().native_bf16 and torch.backends.mkldnn.is_available()


def auto_candidates(features: CpuFeatures) -> tuple[str, ...]:
    """The modes ``auto`` tries, fastest first (as measured, BENCHMARKS.md); ``fp32`` last.

    Emulated bf16 (no hardware dot product) is slower than float32, and int8
    only pays with VNNI, so each needs its CPU feature.
    """
    if features.native_bf16:
        return ("bf16", "fp32")
    if features.int8_dot:
        return ("int8", "fp32")
    return ("fp32",)


def probe_clip(seconds: float = 3.0, seed: int = 0) -> torch.Tensor:
    """A fixed (1, samples) 16 kHz test clip: a gliding tone, noise bursts and clicks.

    Its log-mel has the contrast of real sound (quiet gaps, loud onsets), so a
    reduced-precision path is checked on more than one level of input.
    """
    gen = torch.Generator().manual_seed(seed)
    n = int(seconds * SAMPLE_RATE)
    t = torch.arange(n, dtype=torch.float64) / SAMPLE_RATE
    glide = 300.0 * (1.0 + 0.5 * torch.sin(2 * math.pi * 0.7 * t))
    tone = torch.sin(2 * math.pi * torch.cumsum(glide, 0) / SAMPLE_RATE)
    gate = (torch.sin(2 * math.pi * 1.3 * t) > 0).double()
    bursts = torch.randn(n, generator=gen, dtype=torch.float64)
    bursts *= (torch.rand(n // 800 + 1, generator=gen) > 0.6).double().repeat_interleave(800)[:n]
    clicks = (torch.rand(n, generator=gen) > 0.9995).double()
    clip = 0.4 * tone * gate + 0.1 * bursts + 0.5 * clicks
    return (0.8 * clip / clip.abs().max()).float()[None]


def max_prob_diff(reference: CED, candidate: CED, audio: torch.Tensor) -> float:
    """max |sigmoid(candidate) - sigmoid(reference)| over the clip's class probabilities."""
    with torch.inference_mode():
        p_ref = torch.sigmoid(reference(audio).float())
        p_new = torch.sigmoid(candidate(audio).float())
    return (p_new - p_ref).abs().max().item()


class FastLogMelFrontend(LogMelFrontend):
    """``LogMelFrontend`` with the power spectrum as z * conj(z).

    ``abs()`` of a complex tensor takes a square root that ``pow(2)`` then
    undoes; the complex product gives re^2 + im^2 directly (about 7x faster
    on this step) and works in the time-major layout the filterbank matmul wants.
    """

    def power_mel(self, waveform: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            frames = self.spectrum(waveform).transpose(-1, -2)  # (B, T, F) for the matmul
            power = (frames * frames.conj()).real
            return torch.matmul(power, self.mel_fb).transpose(-1, -2)


class MatmulAttention(nn.Module):
    """Attention with the weights of an ``Attention`` module, as explicit matmuls.

    In bf16 the two matmuls run on the CPU's bf16 units, about twice as fast as
    the fused CPU kernel for CED's 248-token sequences; the softmax runs in
    float32. ``compute_dtype`` is the dtype of the two matmuls.
    """

    def __init__(self, attn: Attention, compute_dtype: torch.dtype) -> None:
        super().__init__()
        self.num_heads = attn.num_heads
        self.qkv = attn.qkv
        self.proj = attn.proj
        self.compute_dtype = compute_dtype
        weight = getattr(attn.proj, "weight", None)
        # A dynamically quantised Linear exposes weight() as a method and takes float32.
        self.proj_dtype = weight.dtype if isinstance(weight, torch.Tensor) else torch.float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        d_head = d // self.num_heads
        qkv = self.qkv(x).to(self.compute_dtype).view(b, n, 3, self.num_heads, d_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, d_head)
        scores = torch.matmul(q * d_head**-0.5, k.transpose(-1, -2))
        weights = F.softmax(scores.float(), dim=-1).to(self.compute_dtype)
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


def _to_bf16_transformer(model: CED) -> None:
    """Convert patches, positions and blocks to bf16; the final norm maps back to float32."""
    bf16 = torch.bfloat16
    model.patch_embed = CastInput(model.patch_embed.to(bf16), bf16)
    model.time_pos_embed = nn.Parameter(model.time_pos_embed.detach().to(bf16), False)
    model.freq_pos_embed = nn.Parameter(model.freq_pos_embed.detach().to(bf16), False)
    model.blocks.to(bf16)
    model.norm = CastInput(model.norm, torch.float32)


def _quantize_block_linears(model: CED) -> None:
    with warnings.catch_warnings():
        # torch marks its eager quantisation API deprecated; it is still the one
        # that needs no extra package.
        warnings.simplefilter("ignore", (DeprecationWarning, UserWarning))
        qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
        model.blocks = torch.ao.quantization.quantize_dynamic(
            model.blocks, {nn.Linear: qconfig}, dtype=torch.qint8
        )


def optimize_for_inference(
    model: CED,
    mode: Mode = "fp32",
    compile: bool = False,
    features: CpuFeatures | None = None,
) -> CED:
    """A faster copy of ``model`` for inference (eval mode, no gradients needed).

    ``model`` itself is left unchanged. See the module docstring for what each
    mode changes; BENCHMARKS.md lists each mode's speed and its distance from
    the float32 outputs. The returned model's ``fast_mode`` attribute names
    the mode it runs (for ``auto``: the one chosen). ``features`` overrides the
    detected CPU features for ``auto``.
    """
    if mode != AUTO and mode not in MODES:
        choices = ", ".join((AUTO, *MODES))
        raise ValueError(f"unknown inference mode {mode!r}; choose one of {choices}")
    if not isinstance(model, CED):
        raise TypeError(f"optimize_for_inference takes a CED model, got {type(model).__name__}")
    if mode == AUTO:
        fast = _verified_auto(model, features or cpu_features())
    else:
        fast = _convert(model, mode)
    if compile:
        # The whole token pass as one graph, weights frozen as constants: inductor
        # then fuses the elementwise work (adds, GELU, LayerNorm, softmax) and
        # prepacks the weights for oneDNN. A new input length recompiles once,
        # after which shapes are dynamic.
        fast.tokens = torch.compile(fast.tokens, options={"freezing": True})
    return fast


def _verified_auto(model: CED, features: CpuFeatures) -> CED:
    """The first of ``auto_candidates`` within ``AUTO_TOLERANCE`` of ``model`` on the probe clip."""
    candidates = auto_candidates(features)
    audio = probe_clip().to(next(model.parameters()).device)
    for mode, fallback in itertools.pairwise(candidates):
        fast = _convert(model, mode)
        was_training = model.training
        try:
            diff = max_prob_diff(model.eval(), fast, audio)
        finally:
            model.train(was_training)
        if diff <= AUTO_TOLERANCE:
            log.debug("fast=auto: %s (probe clip within %.1e of float32)", mode, diff)
            return fast
        log.warning(
            "fast=auto: %s is %.3g from float32 on the probe clip (bound %g); using %s",
            mode,
            diff,
            AUTO_TOLERANCE,
            fallback,
        )
    return _convert(model, candidates[-1])  # fp32: float32 arithmetic throughout, nothing to verify


def _convert(model: CED, mode: str) -> CED:
    """The fast copy of ``model`` for one concrete mode."""
    fast = copy.deepcopy(model).eval()
    fast.requires_grad_(False)
    fast.front_end = FastLogMelFrontend().to(next(model.parameters()).device)
    if mode in ("int8", "int8-bf16"):
        _quantize_block_linears(fast)
    if mode == "bf16":
        _to_bf16_transformer(fast)
    if mode in ("bf16", "int8-bf16"):
        for block in fast.blocks:
            block.attn = MatmulAttention(block.attn, torch.bfloat16)
    fast.fast_mode = mode
    return fast
