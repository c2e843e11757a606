"""CPU (and, when present, GPU) inference of 10 s clips: CED sizes x modes x threads x batch.

Each CED row times waveform -> logits (frontend included). The peer is the
MN10 stand-in (``bench.mobilenet``), timed on its 128 x 1000 log-mel input
plus the cost of a 32 kHz 128-mel frontend, so both sides run from audio.
"""

from __future__ import annotations

import copy
import functools
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from bench.common import Timing, interleaved, matmul_fn, matmul_gflops, paired_ratio, threads
from bench.mobilenet import N_FRAMES, N_MELS, mn10
from bench.models import CLIP_SECONDS, calibrated_model, count_macs, param_count, synthetic_audio
from hear_ced.export import export_onnx
from hear_ced.fast import MODES, native_bf16, optimize_for_inference
from hear_ced.model import CED

VARIANTS = ("tiny", "mini", "small", "base")
THREADS = (1, 2)
BATCHES = (1, 8)
# Matmul precision each mode's speed is compared with.
MODE_PRECISION = {
    "default": torch.float32,
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "int8": torch.int8,
    "int8-bf16": torch.int8,
}
EFFICIENTAT_SR = 32_000


def efficientat_frontend(waveform: torch.Tensor, mel_fb: torch.Tensor) -> torch.Tensor:
    """EfficientAT's feature cost: 32 kHz, 25 ms window in a 1024 FFT, hop 10 ms, 128 mels, log."""
    window = torch.hann_window(800, periodic=False)
    spec = torch.stft(
        waveform, 1024, 320, 800, window, center=True, pad_mode="reflect", return_complex=True
    )
    mel = torch.matmul(mel_fb, spec.abs().pow(2.0))
    return (torch.log(mel + 1e-5) + 4.5) / 5.0


def accuracy(reference: CED, fast: CED, audio: torch.Tensor) -> dict:
    """Distance of a fast path from float32: probabilities and mean-token embeddings."""
    with torch.inference_mode():
        p_ref = torch.sigmoid(reference(audio))
        p_fast = torch.sigmoid(fast(audio).float())
        e_ref = reference.tokens(reference.mel(audio)).mean(dim=(1, 2))
        e_fast = fast.tokens(fast.mel(audio)).float().mean(dim=(1, 2))
    return {
        "max_abs_prob_diff": (p_ref - p_fast).abs().max().item(),
        "min_embedding_cosine": F.cosine_similarity(e_ref, e_fast, dim=-1).min().item(),
    }


MATMUL_PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.int8}
# Matmul precision each mode's speed is compared with.
MODE_PRECISION = {
    "default": "fp32",
    "fp32": "fp32",
    "bf16": "bf16",
    "int8": "int8",
    "int8-bf16": "int8",
    "onnx-fp32": "fp32",
    "onnx-int8": "int8",
    "fp32-channels-last": "fp32",
    "bf16-channels-last": "bf16",
}


def _row(model: str, mode: str, n_threads: int, batch: int, macs: int, timing: Timing) -> dict:
    return {
        "model": model,
        "mode": mode,
        "threads": n_threads,
        "batch": batch,
        "latency_ms": timing.median * 1e3,
        "ms_per_clip": timing.median * 1e3 / batch,
        "gflops": 2 * macs * batch / timing.median / 1e9,
        "timing": timing.to_dict(),
    }


def peer_model() -> tuple[dict, dict]:
    """MN10 stand-in: its size and MACs, and its runnable layouts/precisions."""
    model = mn10()
    info = {
        "params": param_count(model),
        "macs": count_macs(model, torch.randn(1, 1, N_MELS, N_FRAMES)),
    }
    variants = {"fp32": (model, torch.float32, torch.contiguous_format)}
    variants["fp32-channels-last"] = (
        copy.deepcopy(model).to(memory_format=torch.channels_last),
        torch.float32,
        torch.channels_last,
    )
    if native_bf16():
        variants["bf16-channels-last"] = (
            copy.deepcopy(model).to(dtype=torch.bfloat16, memory_format=torch.channels_last),
            torch.bfloat16,
            torch.channels_last,
        )
    return info, variants


def _peer_fns(variants: dict, audio: torch.Tensor) -> dict:
    audio32 = F.interpolate(audio[:, None], scale_factor=EFFICIENTAT_SR / 16_000, mode="linear")[
        :, 0
    ]
    mel_fb = torch.rand(N_MELS, 513)
    fns = {}
    for name, (net, dtype, layout) in variants.items():

        def run(net=net, dtype=dtype, layout=layout) -> object:
            feats = efficientat_frontend(audio32, mel_fb)[:, None, :, :N_FRAMES]
            return net(feats.to(dtype=dtype, memory_format=layout))

        fns[f"mn10:{name}"] = run
    return fns


class OnnxRuntimeModes:
    """The exported graphs of one model (float32 and int8) under ONNX Runtime.

    Sessions are made per thread count, since ORT fixes its threads at creation.
    """

    MODES = {"onnx-fp32": False, "onnx-int8": True}

    def __init__(self, model: CED, folder: Path) -> None:
        self.paths = {
            (mode, output): export_onnx(model, folder / f"{mode}-{output}.onnx", output, int8)
            for mode, int8 in self.MODES.items()
            for output in ("probabilities", "embeddings")
        }
        self._sessions: dict = {}

    def session(self, mode: str, output: str, n_threads: int):
        import onnxruntime as ort

        key = (mode, output, n_threads)
        if key not in self._sessions:
            options = ort.SessionOptions()
            options.intra_op_num_threads = n_threads
            options.inter_op_num_threads = 1
            self._sessions[key] = ort.InferenceSession(
                str(self.paths[(mode, output)]), options, providers=["CPUExecutionProvider"]
            )
        return self._sessions[key]

    def run(self, mode: str, audio: torch.Tensor, n_threads: int, output: str = "probabilities"):
        return self.session(mode, output, n_threads).run(None, {"waveform": audio.numpy()})[0]

    def accuracy(self, reference: CED, audio: torch.Tensor) -> dict:
        with torch.inference_mode():
            p_ref = torch.sigmoid(reference(audio))
            e_ref = reference.tokens(reference.mel(audio)).mean(dim=(1, 2))
        out = {}
        for mode in self.MODES:
            probs = torch.from_numpy(self.run(mode, audio, 2))
            emb = torch.from_numpy(self.run(mode, audio, 2, "embeddings"))
            out[mode] = {
                "max_abs_prob_diff": (p_ref - probs).abs().max().item(),
                "min_embedding_cosine": F.cosine_similarity(e_ref, emb, dim=-1).min().item(),
            }
        return out


def grid(
    variants: tuple[str, ...],
    budget_s: float,
    progress: bool = True,
    onnx_variants: tuple[str, ...] = ("tiny",),
) -> dict:
    """Latency grid per (size, threads, batch), timed round-robin with the matmul references.

    ``default`` is the unmodified model; the MN10 peer joins the tiny groups;
    ONNX Runtime runs the exported graphs of ``onnx_variants``. Accuracy of
    each mode against float32 is measured once per size.
    """
    with tempfile.TemporaryDirectory() as tmp:
        return _grid(variants, budget_s, progress, onnx_variants, Path(tmp))


def _grid(variants, budget_s, progress, onnx_variants, tmp: Path) -> dict:
    modes = [m for m in MODES if native_bf16() or "bf16" not in m]
    precisions = {k: v for k, v in MATMUL_PRECISIONS.items() if native_bf16() or k != "bf16"}
    peer_info, peer_variants = peer_model()
    results: dict = {"sizes": {}, "accuracy": {}, "rows": [], "matmul_gflops": []}
    models: dict[str, dict[str, CED]] = {}
    onnx: dict[str, OnnxRuntimeModes] = {}
    for variant in variants:
        reference = calibrated_model(variant)
        models[variant] = {"default": reference}
        models[variant].update({m: optimize_for_inference(reference, m) for m in modes})
        results["sizes"][variant] = {
            "params": param_count(reference),
            "macs_10s": count_macs(reference, synthetic_audio(1)),
        }
        check = synthetic_audio(4, seed=11)
        with threads(2):
            results["accuracy"][variant] = {
                m: accuracy(reference, models[variant][m], check) for m in modes
            }
        if variant in onnx_variants:
            onnx[variant] = OnnxRuntimeModes(reference, tmp / variant)
            results["accuracy"][variant].update(onnx[variant].accuracy(reference, check))
    cells = [(v, t, b) for v in variants for t in THREADS for b in BATCHES]
    for variant, n_threads, batch in tqdm(cells, desc="inference grid", disable=not progress):
        audio = synthetic_audio(batch, seed=batch)
        fns = {f"matmul:{p}": matmul_fn(dtype) for p, dtype in precisions.items()}
        fns.update(
            {f"ced:{m}": functools.partial(net, audio) for m, net in models[variant].items()}
        )
        if variant == "tiny":
            fns.update(_peer_fns(peer_variants, audio))
        if variant in onnx:
            for mode in OnnxRuntimeModes.MODES:
                onnx[variant].session(mode, "probabilities", n_threads)
                fns[f"ced:{mode}"] = functools.partial(onnx[variant].run, mode, audio, n_threads)
        with threads(n_threads), torch.inference_mode():
            timings = interleaved(fns, budget_s)
        reference = {p: matmul_gflops(timings[f"matmul:{p}"]) for p in precisions}
        results["matmul_gflops"].append(
            {"model": variant, "threads": n_threads, "batch": batch, **reference}
        )
        for key, timing in timings.items():
            kind, mode = key.split(":")
            if kind == "matmul":
                continue
            macs = peer_info["macs"] if kind == "mn10" else results["sizes"][variant]["macs_10s"]
            row = _row(variant if kind == "ced" else "mn10", mode, n_threads, batch, macs, timing)
            row["ratio_to_matmul"] = row["gflops"] / reference[MODE_PRECISION[mode]]
            row["matmul_precision"] = MODE_PRECISION[mode]
            results["rows"].append(row)
    results["peer"] = {"name": "MobileNetV3-Large MN10 stand-in", **peer_info}
    return results


def headline(budget_s: float = 25.0, max_rounds: int = 80) -> dict:
    """CED-Tiny against the MN10 stand-in: one thread, one 10 s clip, many paired rounds.

    Speed-ups are medians of per-round time ratios, so load that changes
    between rounds cancels; accuracy is each path's distance from float32.
    """
    reference = calibrated_model("tiny")
    audio = synthetic_audio(1)
    check = synthetic_audio(4, seed=11)
    candidates: dict[str, CED] = {"default": reference}
    if native_bf16():
        candidates["bf16"] = optimize_for_inference(reference, "bf16")
        candidates["bf16+compile"] = optimize_for_inference(reference, "bf16", compile=True)
    candidates["fp32"] = optimize_for_inference(reference, "fp32")
    with warnings.catch_warnings(), threads(2):
        warnings.simplefilter("ignore")
        acc = {name: accuracy(reference, model, check) for name, model in candidates.items()}
    fns = {f"ced:{name}": functools.partial(model, audio) for name, model in candidates.items()}
    with tempfile.TemporaryDirectory() as tmp:
        onnx = OnnxRuntimeModes(reference, Path(tmp))
        acc.update(onnx.accuracy(reference, check))
        for mode in OnnxRuntimeModes.MODES:
            onnx.session(mode, "probabilities", 1)
            fns[f"ced:{mode}"] = functools.partial(onnx.run, mode, audio, 1)
        fns.update(_peer_fns(peer_model()[1], audio))
        with threads(1), torch.inference_mode():
            timings = interleaved(fns, budget_s, max_rounds=max_rounds)
    ced = {k.split(":")[1]: t for k, t in timings.items() if k.startswith("ced:")}
    peers = {k.split(":")[1]: t for k, t in timings.items() if k.startswith("mn10:")}
    return {
        "threads": 1,
        "batch": 1,
        "rounds": next(iter(timings.values())).repeats,
        "median_ms": {k: t.median * 1e3 for k, t in timings.items()},
        "accuracy": acc,
        "speedup_over_peer": {
            mode: {peer: paired_ratio(pt, t) for peer, pt in peers.items()}
            for mode, t in ced.items()
        },
    }


def compile_rows(variant: str, modes: tuple[str, ...], budget_s: float) -> list[dict]:
    """torch.compile on top of a mode (one clip), timed round-robin with the same mode uncompiled."""
    reference = calibrated_model(variant)
    audio = synthetic_audio(1)
    check = synthetic_audio(4, seed=11)
    macs = count_macs(reference, audio)
    rows = []
    for mode in modes:
        plain = optimize_for_inference(reference, mode)
        compiled = optimize_for_inference(reference, mode, compile=True)
        start = time.perf_counter()
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            compiled(audio)
            compiled(check)
        compile_s = time.perf_counter() - start
        acc = accuracy(reference, compiled, check)
        for n_threads in THREADS:
            fns = {
                "compiled": lambda m=compiled: m(audio),
                "plain": lambda m=plain: m(audio),
                "matmul": matmul_fn(MATMUL_PRECISIONS[MODE_PRECISION[mode]]),
            }
            with threads(n_threads), torch.inference_mode():
                timings = interleaved(fns, budget_s)
            row = _row(variant, f"{mode}+compile", n_threads, 1, macs, timings["compiled"])
            row.update(
                compile_s=compile_s,
                uncompiled_ms=timings["plain"].median * 1e3,
                ratio_to_matmul=row["gflops"] / matmul_gflops(timings["matmul"]),
                **acc,
            )
            rows.append(row)
    return rows


def gpu_rows(variants: tuple[str, ...], budget_s: float) -> list[dict]:
    """CUDA latency in fp32 and bf16 autocast with a same-run matmul; empty without a GPU."""
    if not torch.cuda.is_available():
        return []
    rows = []
    for variant in variants:
        model = calibrated_model(variant).cuda()
        macs = count_macs(model, synthetic_audio(1).cuda())
        for batch in BATCHES:
            audio = synthetic_audio(batch).cuda()
            fns = {}
            for mode, dtype in (("fp32", torch.float32), ("bf16-autocast", torch.bfloat16)):

                def run(dtype=dtype, model=model, audio=audio) -> None:
                    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
                        model(audio)
                    torch.cuda.synchronize()

                fns[mode] = run
            a = torch.randn(4096, 4096, device="cuda")

            def matmul(a=a) -> None:
                a @ a
                torch.cuda.synchronize()

            fns["matmul"] = matmul
            with torch.inference_mode():
                timings = interleaved(fns, budget_s)
            peak = 2 * 4096**3 / timings.pop("matmul").median / 1e9
            for mode, timing in timings.items():
                row = _row(variant, mode, 0, batch, macs, timing)
                row.update(device=torch.cuda.get_device_name(0), fp32_matmul_gflops=peak)
                row["ratio_to_matmul"] = row["gflops"] / peak
                rows.append(row)
    return rows


def run(budget_s: float = 1.0, variants: tuple[str, ...] = VARIANTS) -> dict:
    """The CPU grid with its peer, torch.compile on CED-Tiny, and the GPU rows when CUDA exists."""
    return {
        "clip_seconds": CLIP_SECONDS,
        "native_bf16": native_bf16(),
        "headline": headline(),
        "cpu": grid(variants, budget_s),
        "compiled": compile_rows(
            "tiny", ("fp32", "bf16") if native_bf16() else ("fp32",), budget_s
        ),
        "gpu": gpu_rows(variants, budget_s),
    }
