"""CPU inference of 10 s clips: CED sizes x modes x threads x batch (``bench.gpu``: GPUs).

Each CED row times waveform -> logits (frontend included). The peer is MN10,
EfficientAT's own model and ``AugmentMelSTFT`` frontend from a checkout
(``bench.efficientat``), timed from a 10 s 32 kHz waveform so both sides run
from audio; without a checkout CED's paths are timed alone.
"""

from __future__ import annotations

import copy
import functools
import logging
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from bench import efficientat, stages
from bench.common import (
    MATMUL_PREFIX,
    MAX_ATTEMPTS,
    InterferenceGuard,
    Timing,
    interleaved,
    matmul_fn,
    ort_options,
    paired_ratio,
    threads,
)
from bench.models import CLIP_SECONDS, calibrated_model, count_macs, param_count, synthetic_audio
from hear_ced.common.logs import progress_bar
from hear_ced.export import export_onnx
from hear_ced.fast import AUTO_TOLERANCE, MODES, native_bf16, optimize_for_inference
from hear_ced.frontend import SAMPLE_RATE
from hear_ced.model import CED, PUBLISHED_SIZES

log = logging.getLogger(__name__)

THREADS = (1, 2)
BATCHES = (1, 8)
# Grid cells that time MN10 too, for CED's time ratio to it.
PEER_CELLS = ("tiny", "mini")
# Probabilities within this of float32 make a path "accurate" (as for fast="auto").
ACCURATE = AUTO_TOLERANCE


def outputs(model: CED, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities and mean-token scene embeddings of ``model`` on ``audio``, float32."""
    with torch.inference_mode():
        probs = torch.sigmoid(model(audio).float())
        embeddings = model.tokens(model.mel(audio)).float().mean(dim=(1, 2))
    return probs, embeddings


def distance(reference: tuple, other: tuple) -> dict:
    """How far ``other``'s (probabilities, embeddings) are from ``reference``'s."""
    (p_ref, e_ref), (p, e) = reference, other
    return {
        "max_abs_prob_diff": (p_ref - p).abs().max().item(),
        "min_embedding_cosine": F.cosine_similarity(e_ref, e, dim=-1).min().item(),
    }


def accuracy(reference: CED, fast: CED, audio: torch.Tensor) -> dict:
    """Distance of a fast path from float32: probabilities and mean-token embeddings."""
    return distance(outputs(reference, audio), outputs(fast, audio))


MATMUL_PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.int8}


def matmul_precision(mode: str) -> str:
    """The matmul precision a mode's speed is compared with: its lowest-precision GEMMs."""
    for precision in ("int8", "bf16"):
        if precision in mode:
            return precision
    return "fp32"


class Peer:
    """EfficientAT's MN10 from a checkout, run from audio as CED is (its frontend included).

    ``variants``: layout/precision name -> (network, input dtype, memory format):
    float32 in both memory layouts, and bf16 channels-last where the CPU has
    native bf16.
    """

    def __init__(self, checkout: efficientat.Checkout) -> None:
        self.checkout = checkout
        self.frontend, model = efficientat.load(checkout)
        self.variants = {"fp32": (model, torch.float32, torch.contiguous_format)}
        self.variants["fp32-channels-last"] = (
            copy.deepcopy(model).to(memory_format=torch.channels_last),
            torch.float32,
            torch.channels_last,
        )
        if native_bf16():
            self.variants["bf16-channels-last"] = (
                copy.deepcopy(model).to(dtype=torch.bfloat16, memory_format=torch.channels_last),
                torch.bfloat16,
                torch.channels_last,
            )

    def features(self, audio32: torch.Tensor) -> torch.Tensor:
        """The network's float32 (B, 1, mels, frames) input of a 32 kHz waveform (B, samples)."""
        return self.frontend(audio32)[:, None]

    def info(self) -> dict:
        """What results.json records: which MN10, its size and MACs (network only)."""
        net = self.variants["fp32"][0]
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EfficientAT's deprecated torch calls
            feats = self.features(torch.zeros(1, int(CLIP_SECONDS * efficientat.SAMPLE_RATE)))
        return {
            "name": self.checkout.label,
            "source": str(self.checkout.path),
            "commit": self.checkout.commit,
            "params": param_count(net),
            "macs": count_macs(net, feats),
        }

    def fns(self, audio: torch.Tensor) -> dict[str, Callable[[], object]]:
        """One callable per variant on ``audio`` (16 kHz, resampled to 32 kHz once, untimed)."""
        audio32 = F.interpolate(
            audio[:, None], scale_factor=efficientat.SAMPLE_RATE / SAMPLE_RATE, mode="linear"
        )[:, 0]
        fns = {}
        for name, (net, dtype, layout) in self.variants.items():

            def run(net=net, dtype=dtype, layout=layout) -> object:
                return net(self.features(audio32).to(dtype=dtype, memory_format=layout))

            fns[f"mn10:{name}"] = run
        return fns


class OnnxRuntimeModes:
    """The exported graphs of one model (float32 and int8) under ONNX Runtime.

    Sessions are made per thread count, since ORT fixes its threads at creation.
    """

    MODES = {"onnx-fp32": False, "onnx-int8": True}
    OUTPUTS = ("probabilities", "embeddings")

    def __init__(self, model: CED, folder: Path) -> None:
        self.paths = {
            (mode, output): export_onnx(model, folder / f"{mode}-{output}.onnx", output, int8)
            for mode, int8 in self.MODES.items()
            for output in self.OUTPUTS
        }
        self._sessions: dict = {}

    def session(self, mode: str, output: str, n_threads: int):
        import onnxruntime as ort

        key = (mode, output, n_threads)
        if key not in self._sessions:
            self._sessions[key] = ort.InferenceSession(
                str(self.paths[(mode, output)]),
                ort_options(n_threads),
                providers=["CPUExecutionProvider"],
            )
        return self._sessions[key]

    def run(self, mode: str, audio: torch.Tensor, n_threads: int, output: str = "probabilities"):
        return self.session(mode, output, n_threads).run(None, {"waveform": audio.numpy()})[0]

    def accuracy(self, reference: CED, audio: torch.Tensor) -> dict:
        """Each graph's distance from the float32 torch model."""
        expected = outputs(reference, audio)
        return {
            mode: distance(
                expected,
                tuple(torch.from_numpy(self.run(mode, audio, 2, o)) for o in self.OUTPUTS),
            )
            for mode in self.MODES
        }

    def timed(self, audio: torch.Tensor, n_threads: int) -> dict[str, Callable[[], object]]:
        """One callable per graph on ``audio`` (its session opened now, untimed)."""
        fns = {}
        for mode in self.MODES:
            self.session(mode, "probabilities", n_threads)
            fns[f"ced:{mode}"] = functools.partial(self.run, mode, audio, n_threads)
        return fns


def _precisions() -> dict[str, torch.dtype]:
    return {k: v for k, v in MATMUL_PRECISIONS.items() if native_bf16() or k != "bf16"}


def candidates(reference: CED) -> dict[str, CED]:
    """``reference`` as published (``default``) and in every fast mode this CPU runs natively."""
    modes = [m for m in MODES if native_bf16() or "bf16" not in m]
    return {"default": reference, **{m: optimize_for_inference(reference, m) for m in modes}}


def _timed(fns: dict, n_threads: int, budget_s: float, max_rounds: int = 15):
    """A measurement ``InterferenceGuard`` can repeat: one round-robin run of ``fns``."""

    def measure() -> dict[str, Timing]:
        with threads(n_threads), torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return interleaved(fns, budget_s, max_rounds=max_rounds)

    return measure


def _prepare_grid(
    variants: tuple[str, ...],
    guard: InterferenceGuard,
    budget_s: float,
    tmp: Path,
    peer: Peer | None,
) -> dict:
    """Register the latency grid's cells (size x threads x batch) with ``guard`` and time them.

    ``default`` is the unmodified model;
    ONNX Runtime runs the exported graphs of CED-Tiny; ``peer`` (MN10), if
    any, joins the ``PEER_CELLS`` sizes. Accuracy of each mode
    against float32 is measured once per size. Rows are made by ``grid_rows``
    once the guard has settled every cell.
    """
    precisions = _precisions()
    results: dict = {"sizes": {}, "accuracy": {}, "peer": peer and peer.info()}
    bar = progress_bar(
        total=len(variants) * len(THREADS) * len(BATCHES), desc="inference grid", logger=log
    )
    for variant in variants:
        reference = calibrated_model(variant)
        models = candidates(reference)
        results["sizes"][variant] = {
            "params": param_count(reference),
            "macs_10s": count_macs(reference, synthetic_audio(1)),
        }
        check = synthetic_audio(4, seed=11)
        with threads(2):
            results["accuracy"][variant] = {
                m: accuracy(reference, net, check) for m, net in models.items() if m != "default"
            }
        onnx = None
        if variant == "tiny":
            onnx = OnnxRuntimeModes(reference, tmp / variant)
            results["accuracy"][variant].update(onnx.accuracy(reference, check))
        for n_threads in THREADS:
            for batch in BATCHES:
                audio = synthetic_audio(batch, seed=batch)
                fns = {f"{MATMUL_PREFIX}{p}": matmul_fn(dtype) for p, dtype in precisions.items()}
                fns.update({f"ced:{m}": functools.partial(net, audio) for m, net in models.items()})
                if peer is not None and variant in PEER_CELLS:
                    fns.update(peer.fns(audio))
                if onnx is not None:
                    fns.update(onnx.timed(audio, n_threads))
                key = ("grid", variant, n_threads, batch)
                guard.measure(key, n_threads, _timed(fns, n_threads, budget_s))
                bar.update()
    bar.close()
    return results


def grid_rows(results: dict, cells: dict) -> dict:
    """The grid's rows from the settled cells; rows of invalid cells carry ``valid: False``."""
    results = {**results, "rows": [], "matmul_gflops": []}
    for key, cell in cells.items():
        if key[0] != "grid":
            continue
        _, variant, n_threads, batch = key
        reference = cell.references
        results["matmul_gflops"].append(
            {"model": variant, "threads": n_threads, "batch": batch, **reference, **cell.report()}
        )
        # The bar for CED: the faster float32 MN10 layout's median, same cell.
        bar = min(
            (t.median for k, t in cell.timings.items() if k.startswith("mn10:fp32")), default=None
        )
        for name, timing in cell.timings.items():
            kind, mode = name.split(":")
            if kind == "matmul":
                continue
            macs = (
                results["peer"]["macs"] if kind == "mn10" else results["sizes"][variant]["macs_10s"]
            )
            precision = matmul_precision(mode)
            gflops = 2 * macs * batch / timing.median / 1e9
            row = {
                "cell": variant,
                "model": variant if kind == "ced" else "mn10",
                "mode": mode,
                "threads": n_threads,
                "batch": batch,
                "ms_per_clip": timing.median * 1e3 / batch,
                "matmul_precision": precision,
                "ratio_to_matmul": gflops / reference[precision],
                "valid": cell.valid,
            }
            if bar is not None and kind == "ced":
                row["time_ratio_to_peer"] = timing.median / bar
            results["rows"].append(row)
    return results


def compiled(model: CED, audio: torch.Tensor, check: torch.Tensor) -> tuple[CED, float]:
    """A compiled ``model`` after its first calls (both shapes), and their time (compile cost)."""
    start = time.perf_counter()
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        model(audio)
        model(check)
    return model, time.perf_counter() - start


def _prepare_headline(
    guard: InterferenceGuard,
    budget_s: float,
    max_rounds: int,
    tmp: Path,
    compile_modes: tuple[str, ...],
    peer: Peer | None,
) -> tuple[dict, dict[str, CED], OnnxRuntimeModes]:
    """CED-Tiny's paths against MN10 (``peer``, if any), one 10 s clip, at 1 and 2 threads.

    Every path, MN10's layouts (each with its frontend) and the matmul references take
    turns for many rounds; ratios are medians of per-round time ratios, so load
    that changes between rounds cancels.
    """
    reference = calibrated_model("tiny")
    audio = synthetic_audio(1)
    check = synthetic_audio(4, seed=11)
    paths = candidates(reference)
    compile_s = {}
    for mode in compile_modes:
        net = optimize_for_inference(reference, mode, compile=True)
        paths[f"{mode}+compile"], compile_s[f"{mode}+compile"] = compiled(net, audio, check)
    auto = optimize_for_inference(reference, "auto")
    with warnings.catch_warnings(), threads(2):
        warnings.simplefilter("ignore")
        acc = {name: accuracy(reference, model, check) for name, model in paths.items()}
    onnx = OnnxRuntimeModes(reference, tmp / "headline")
    acc.update(onnx.accuracy(reference, check))
    fns = {f"{MATMUL_PREFIX}{p}": matmul_fn(dtype) for p, dtype in _precisions().items()}
    fns.update({f"ced:{name}": functools.partial(net, audio) for name, net in paths.items()})
    if peer is not None:
        fns.update(peer.fns(audio))
    for n_threads in THREADS:
        cell = {**fns, **onnx.timed(audio, n_threads)}
        measure = _timed(cell, n_threads, budget_s, max_rounds)
        guard.measure(("headline", n_threads), n_threads, measure)
    info = {
        "batch": 1,
        "accuracy": acc,
        "compile_s": compile_s,
        "auto_mode": auto.config.fast_mode,
        "macs": count_macs(reference, audio),
        "peer": peer and peer.info(),
    }
    return info, paths, onnx


def headline_rows(info: dict, cells: dict) -> dict:
    """Per thread count: each path's median, fraction of its matmul rate, time ratio to MN10."""
    out = {**info, "threads": {}}
    for key, cell in cells.items():
        if key[0] != "headline":
            continue
        timings = cell.timings
        ced = {k.split(":")[1]: t for k, t in timings.items() if k.startswith("ced:")}
        peers = {k.split(":")[1]: t for k, t in timings.items() if k.startswith("mn10:")}
        rows = {}
        for mode, t in ced.items():
            precision = matmul_precision(mode)
            gflops = 2 * info["macs"] / t.median / 1e9
            rows[mode] = {
                "median_ms": t.median * 1e3,
                "fraction_of_matmul": gflops / cell.references[precision],
                "matmul_precision": precision,
                # CED time / peer time, median over rounds of the per-round ratio.
                "time_ratio_to_peer": {p: 1 / paired_ratio(pt, t) for p, pt in peers.items()},
            }
        out["threads"][key[1]] = {
            "rows": rows,
            "peer_ms": {p: pt.median * 1e3 for p, pt in peers.items()},
            **cell.report(),
        }
    return out


def best_accurate_path(headline: dict) -> str:
    """The fastest path at one thread whose probabilities stay within ``ACCURATE`` of float32."""
    rows = headline["threads"][1]["rows"]
    accurate = [m for m in rows if headline["accuracy"][m]["max_abs_prob_diff"] <= ACCURATE]
    return min(accurate, key=lambda m: rows[m]["median_ms"])


def _profile(mode: str, nets: dict[str, CED], onnx: OnnxRuntimeModes, folder: Path) -> dict:
    """Per-stage time of ``mode``: its ONNX graph, or its eager model (a compiled path's twin)."""
    if mode in OnnxRuntimeModes.MODES:
        path = onnx.paths[(mode, "probabilities")]
    else:
        path = nets[mode.removesuffix("+compile")]
    return {"mode": mode, "stages": stages.breakdown(path, folder)}


def run(
    budget_s: float = 1.0,
    variants: tuple[str, ...] = PUBLISHED_SIZES,
    headline_budget_s: float = 20.0,
    headline_rounds: int = 60,
    attempts: int = MAX_ATTEMPTS,
    compile: bool = True,
    mn10_src: efficientat.Checkout | None = None,
) -> dict:
    """Headline (torch.compile included), CPU grid and where the time goes.

    ``compile=False`` leaves out the torch.compile paths (minutes of compiling
    on a loaded machine). All CPU cells go through one ``InterferenceGuard``:
    cells whose matmul reference falls below 0.8 of the run's best are
    measured again and, if still disturbed, marked invalid. ``mn10_src``: the
    EfficientAT checkout whose MN10 is the peer (CED's paths alone without one).
    """
    guard = InterferenceGuard(attempts=attempts)
    with tempfile.TemporaryDirectory() as tmp:
        compile_modes = (("bf16", "fp32") if native_bf16() else ("fp32",)) if compile else ()
        peer = None if mn10_src is None else Peer(mn10_src)
        head, nets, onnx = _prepare_headline(
            guard, headline_budget_s, headline_rounds, Path(tmp), compile_modes, peer
        )
        cpu = _prepare_grid(variants, guard, budget_s, Path(tmp), peer)
        cells = guard.finish()
        headline = headline_rows(head, cells)
        profile = _profile(best_accurate_path(headline), nets, onnx, Path(tmp))
    return {
        "headline": headline,
        "cpu": grid_rows(cpu, cells),
        "profile": profile,
    }
