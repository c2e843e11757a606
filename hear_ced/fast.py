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

``compile=True`` additionally wraps every transformer block with
``torch.compile`` (dynamic shapes, since clip lengths vary); the first calls
pay the compile time.
"""

from __future__ import annotations

import copy
import functools
import warnings
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from hear_ced.frontend import LogMelFrontend
from hear_ced.model import CED, Attention

Mode = Literal["fp32", "bf16", "int8", "int8-bf16"]
MODES: tuple[str, ...] = ("fp32", "bf16", "int8", "int8-bf16")


@functools.cache
def native_bf16() -> bool:
    """True when this CPU has bf16 arithmetic that oneDNN uses (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


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


def optimize_for_inference(model: CED, mode: Mode = "fp32", compile: bool = False) -> CED:
    """A faster copy of ``model`` for inference (eval mode, no gradients needed).

    ``model`` itself is left unchanged. See the module docstring for what each
    mode changes; BENCHMARKS.md lists each mode's speed and its distance from
    the float32 outputs.
    """
    if mode not in MODES:
        raise ValueError(f"unknown inference mode {mode!r}; choose one of {', '.join(MODES)}")
    if not isinstance(model, CED):
        raise TypeError(f"optimize_for_inference takes a CED model, got {type(model).__name__}")
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
    if compile:
        for block in fast.blocks:
            block.compile(dynamic=True)
    return fast
