"""CPU inference of 10 s clips: CED sizes x modes x threads x batch (``bench.gpu``: GPUs).

Each CED row times waveform -> logits (frontend included). The headline is the
grid's CED-Tiny cells at batch 1, timed for more rounds and with the
torch.compile paths beside the others. The peer is MN10,
EfficientAT's own model and ``AugmentMelSTFT`` frontend from a checkout
(``bench.efficientat``), timed from a 10 s 32 kHz waveform so both sides run
from audio; without a checkout CED's paths are timed alone.
"""

from __future__ import annotations

import functools
import logging
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from bench import efficientat, stages
from bench.common import (
    MATMUL_PREFIX,
    MAX_ATTEMPTS,
    InterferenceGuard,
    Timing,
    count_macs,
    interleaved,
    matmul_fn,
    paired_ratio,
    param_count,
    threads,
)
from hear_ced.common.logs import progress_bar
from hear_ced.export import export_onnx
from hear_ced.fast import (
    AUTO_TOLERANCE,
    MODES,
    calibrated_model,
    native_bf16,
    optimize_for_inference,
    synthetic_audio,
)
from hear_ced.model import CED, PUBLISHED_SIZES
from hear_ced.runtime import session_options

log = logging.getLogger(__name__)

THREADS = (1, 2)
BATCHES = (1, 8)
# Grid cells that time MN10 too, for CED's time ratio to it.
PEER_CELLS = ("tiny", "mini")
# The size whose batch-1 cells are the headline (with the torch.compile paths).
HEADLINE = "tiny"
# The exported graphs of CED-Tiny run in ONNX Runtime: mode -> int8.
ONNX_MODES = {"onnx-fp32": False, "onnx-int8": True}
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


MATMUL_PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.int8}


def matmul_precision(mode: str) -> str:
    """The matmul precision a mode's speed is compared with: its lowest-precision GEMMs."""
    for precision in ("int8", "bf16"):
        if precision in mode:
            return precision
    return "fp32"


def onnx_session(path: Path, n_threads: int):
    """An ONNX Runtime session of the graph at ``path`` on ``n_threads``, without spinning.

    ORT's idle workers spin after each run; torch paths and the matmul reference
    timed next in the same round would share the cores with them.
    """
    import onnxruntime as ort

    options = session_options()
    options.intra_op_num_threads = n_threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def candidates(reference: CED) -> dict[str, CED]:
    """``reference`` as published (``default``) and in every fast mode this CPU runs natively."""
    modes = [m for m in MODES if native_bf16() or "bf16" not in m]
    return {"default": reference, **{m: optimize_for_inference(reference, m) for m in modes}}


def compiled(model: CED, audio: torch.Tensor, check: torch.Tensor) -> tuple[CED, float]:
    """A compiled ``model`` after its first calls (both shapes), and their time (compile cost)."""
    start = time.perf_counter()
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        model(audio)
        model(check)
    return model, time.perf_counter() - start


def _timed(fns: dict, n_threads: int, budget_s: float, max_rounds: int):
    """A measurement ``InterferenceGuard`` can repeat: one round-robin run of ``fns``."""

    def measure() -> dict[str, Timing]:
        with threads(n_threads), torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return interleaved(fns, budget_s, max_rounds=max_rounds)

    return measure


def rows(macs: dict[str, int], cells: dict) -> tuple[list[dict], list[dict]]:
    """Each path's row and each cell's references, from the settled cells.

    A CED row's ``time_ratio_to_peer`` holds, per MN10 layout of its cell, the
    median over rounds of the per-round time ratio, so load that changes between
    rounds cancels. Rows of invalid cells carry ``valid: False``.
    """
    out, references = [], []
    for (variant, n_threads, batch), cell in cells.items():
        references.append({"model": variant, "threads": n_threads, "batch": batch, **cell.report()})
        peers = {k.split(":")[1]: t for k, t in cell.timings.items() if k.startswith("mn10:")}
        for name, timing in cell.timings.items():
            kind, mode = name.split(":")
            if kind == "matmul":
                continue
            precision = matmul_precision(mode)
            gflops = 2 * macs[variant if kind == "ced" else "mn10"] * batch / timing.median / 1e9
            row = {
                "cell": variant,
                "model": variant if kind == "ced" else "mn10",
                "mode": mode,
                "threads": n_threads,
                "batch": batch,
                "ms_per_clip": timing.median * 1e3 / batch,
                "matmul_precision": precision,
                "ratio_to_matmul": gflops / cell.references[precision],
                "valid": cell.valid,
            }
            if kind == "ced":
                row["time_ratio_to_peer"] = {
                    p: 1 / paired_ratio(t, timing) for p, t in peers.items()
                }
            out.append(row)
    return out, references


def headline(results: dict, machine: dict) -> dict:
    """This run's CED-Tiny batch-1 paths beside MN10, as BENCHMARKS.md keeps them per CPU class.

    Per thread count: each valid path's ms per clip, its time ratio to the faster
    float32 MN10 layout of the same cell (the median of per-round ratios), and
    its distance from float32.
    """
    accuracy = results["accuracy"][HEADLINE]
    cells = [r for r in results["rows"] if r["cell"] == HEADLINE and r["batch"] == 1 and r["valid"]]
    bars: dict[int, dict] = {}  # threads -> the faster float32 MN10 row
    for r in cells:
        best = bars.get(r["threads"])
        if (
            r["model"] == "mn10"
            and "fp32" in r["mode"]
            and (best is None or r["ms_per_clip"] < best["ms_per_clip"])
        ):
            bars[r["threads"]] = r
    rows = [
        {
            "mode": r["mode"],
            "threads": r["threads"],
            "ms": r["ms_per_clip"],
            "to_mn10": (
                r["time_ratio_to_peer"][bars[r["threads"]]["mode"]]
                if r["threads"] in bars
                else None
            ),
            "max_abs_prob_diff": accuracy[r["mode"]]["max_abs_prob_diff"],
        }
        for r in cells
        if r["model"] == HEADLINE
    ]
    keep = ("date_utc", "cpu_model", "cpu_flags", "cpu_capability", "torch", "emulation")
    return {
        "machine": {k: machine.get(k) for k in keep},
        "peer": results["peer"] and results["peer"]["name"],
        "auto": results.get("auto_mode"),
        "mn10_ms": {str(n): r["ms_per_clip"] for n, r in bars.items()},
        "rows": rows,
    }


def profiled_paths(results: dict) -> list[str]:
    """The headline's fastest accurate torch path at one thread, then its fastest torch path
    when that one is not accurate (within ``ACCURATE``): where each one's time goes.

    Torch paths only: ``bench.stages`` times a path's stages with forward hooks.
    """
    accuracy = results["accuracy"][HEADLINE]
    ms = {
        r["mode"]: r["ms_per_clip"]
        for r in results["rows"]
        if r["model"] == HEADLINE and r["threads"] == 1 and r["batch"] == 1 and r["valid"]
        and r["mode"] not in ONNX_MODES
    }  # fmt: skip
    accurate = [m for m in ms if accuracy[m]["max_abs_prob_diff"] <= ACCURATE]
    return list(dict.fromkeys([min(accurate, key=ms.get), min(ms, key=ms.get)]))


def run(
    budget_s: float = 1.0,
    variants: tuple[str, ...] = PUBLISHED_SIZES,
    headline_budget_s: float = 20.0,
    headline_rounds: int = 60,
    attempts: int = MAX_ATTEMPTS,
    compile: bool = True,
    mn10_src: Path | None = None,
) -> dict:
    """The latency grid (size x threads x batch), its headline cells and where the time goes.

    CED-Tiny is always measured: its batch-1 cells are the headline, timed for
    ``headline_rounds`` rounds with the torch.compile paths (``compile=False``
    leaves those out: minutes of compiling on a loaded machine) and the exported
    graphs in ONNX Runtime beside the others. ``mn10_src``: the EfficientAT
    checkout whose MN10 joins the ``PEER_CELLS`` sizes (CED's paths alone without
    one). All cells go through one ``InterferenceGuard``: cells whose matmul
    reference falls below 0.8 of the run's best are measured again and, if still
    disturbed, marked invalid. Accuracy against float32 is measured once per size.
    """
    guard = InterferenceGuard(attempts=attempts)
    peer = None if mn10_src is None else efficientat.MN10(mn10_src)
    precisions = {k: v for k, v in MATMUL_PRECISIONS.items() if native_bf16() or k != "bf16"}
    compile_modes = (("bf16", "fp32") if native_bf16() else ("fp32",)) if compile else ()
    variants = tuple(dict.fromkeys((HEADLINE, *variants)))
    check = synthetic_audio(4, seed=11)
    out: dict = {"sizes": {}, "accuracy": {}, "compile_s": {}, "peer": peer and peer.info()}
    macs = {"mn10": out["peer"]["macs"]} if peer else {}
    bar = progress_bar(
        total=len(variants) * len(THREADS) * len(BATCHES), desc="inference grid", logger=log
    )
    with tempfile.TemporaryDirectory() as tmp:
        for variant in variants:
            reference = calibrated_model(variant)
            models = candidates(reference)
            macs[variant] = count_macs(reference, synthetic_audio(1))
            out["sizes"][variant] = {"params": param_count(reference), "macs_10s": macs[variant]}
            compiled_paths, graphs = {}, {}
            if variant == HEADLINE:
                out["auto_mode"] = optimize_for_inference(reference, "auto").config.fast_mode
                for mode in compile_modes:
                    net = optimize_for_inference(reference, mode, compile=True)
                    name = f"{mode}+compile"
                    compiled_paths[name], out["compile_s"][name] = compiled(
                        net, synthetic_audio(1), check
                    )
                headline_models = models
                graphs = {
                    mode: {o: export_onnx(reference, Path(tmp) / f"{mode}-{o}.onnx", o, int8,
                                          allow_inaccurate=True)  # its distance is reported
                           for o in ("probabilities", "embeddings")}
                    for mode, int8 in ONNX_MODES.items()
                }  # fmt: skip
            expected = outputs(reference, check)
            with warnings.catch_warnings(), threads(2):
                warnings.simplefilter("ignore")
                acc = {
                    m: distance(expected, outputs(net, check))
                    for m, net in {**models, **compiled_paths}.items()
                }
            for mode, graph in graphs.items():
                feed = {"waveform": check.numpy()}
                got = (onnx_session(path, 2).run(None, feed)[0] for path in graph.values())
                acc[mode] = distance(expected, tuple(map(torch.from_numpy, got)))
            out["accuracy"][variant] = acc
            for n_threads in THREADS:
                # Opened now, untimed; ORT fixes its threads when it opens a session.
                sessions = {
                    m: onnx_session(g["probabilities"], n_threads) for m, g in graphs.items()
                }
                for batch in BATCHES:
                    audio = synthetic_audio(batch, seed=batch)
                    long = variant == HEADLINE and batch == 1
                    paths = {**models, **compiled_paths} if long else models
                    fns = {
                        f"{MATMUL_PREFIX}{p}": matmul_fn(dtype) for p, dtype in precisions.items()
                    }
                    fns.update(
                        {f"ced:{m}": functools.partial(net, audio) for m, net in paths.items()}
                    )
                    if peer is not None and variant in PEER_CELLS:
                        fns.update(peer.fns(audio))
                    for mode, session in sessions.items():
                        feed = {"waveform": audio.numpy()}
                        fns[f"ced:{mode}"] = functools.partial(session.run, None, feed)
                    measure = _timed(
                        fns,
                        n_threads,
                        headline_budget_s if long else budget_s,
                        headline_rounds if long else 15,
                    )
                    guard.measure((variant, n_threads, batch), n_threads, measure)
                    bar.update()
        bar.close()
        out["rows"], out["matmul_gflops"] = rows(macs, guard.finish())
    # A compiled path fuses across stages: its eager twin is timed.
    out["profiles"] = [
        {
            "mode": mode,
            "max_abs_prob_diff": out["accuracy"][HEADLINE][mode]["max_abs_prob_diff"],
            "stages": stages.breakdown(
                headline_models[mode.removesuffix("+compile")], headline_models["default"]
            ),
        }
        for mode in profiled_paths(out)
    ]
    return out
