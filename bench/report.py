"""BENCHMARKS.md from the raw figures in results.json.

``python -m bench.report bench/out/results.json BENCHMARKS.md`` rewrites the
report without re-measuring. Sections measured by hand (whole-process timings,
peak memory of long files) sit between :data:`HAND_START` and :data:`HAND_END`
and are carried over from the report being replaced.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from ced_common.files import read_json, write_text
from ced_common.tables import markdown_table

# A fast path counts for the headline only if its probabilities stay this close to float32.
HEADLINE_PROB_TOLERANCE = 0.01


def _f(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


# The goals for CED-Tiny, one thread, one 10 s clip.
GOAL_PEER_TIME_RATIO = 0.33
GOAL_BF16_FRACTION = 0.35
GOAL_FP32_FRACTION = 0.85


# Results written before the peer was recorded compared with the stand-in.
STAND_IN = {"name": "MN10 stand-in", "stand_in": True, "commit": None}


def _peer_title(peer: dict) -> str:
    if peer["stand_in"]:
        return "the MN10 stand-in"
    return f"EfficientAT MN10 (commit {(peer['commit'] or 'unknown')[:7]})"


def _peer_note(peer: dict) -> str:
    """Which MN10 the times are divided by."""
    if peer["stand_in"]:
        return (
            "MN10 here is a **stand-in**: EfficientAT's MobileNetV3 MN10 configuration written "
            "in this project (`bench/mobilenet.py`) behind a 32 kHz log-mel frontend of the "
            "same cost, not EfficientAT's code, and faster than it. `make bench "
            "MN10_SRC=PATH` (`python -m bench.run --mn10-src PATH`) times the real one from an "
            "EfficientAT checkout."
        )
    commit = peer["commit"] or "unknown (not a git checkout)"
    return (
        "MN10 is EfficientAT's own code, imported from the checkout at commit "
        f"`{commit}`: `get_model` (width 1.0, 527 classes, random weights, nothing "
        "downloaded) and its `AugmentMelSTFT` frontend (32 kHz, 128 mels, eval mode), timed "
        "together on a 10 s 32 kHz clip as CED-Tiny is timed with its own frontend on a 10 s "
        "16 kHz clip (`bench.efficientat`; torchvision and torchaudio, which have no build for "
        "this torch, are replaced by the few names EfficientAT uses, "
        "`bench/efficientat_shims.py`)."
    )


def _headline(h: dict) -> list[str]:
    """CED-Tiny paths vs MN10 at each thread count, paired per-round ratios."""
    peer = h.get("peer", STAND_IN)
    out = [f"## Headline: CED-Tiny vs {_peer_title(peer)} (one 10 s clip)", ""]
    out += [_peer_note(peer), ""]
    out.append(
        "Every CED-Tiny path, MN10's layouts and 1024^3 matmuls take turns for "
        "many rounds. *Time / MN10* is the median over rounds of (CED time / MN10 time) in "
        "the same round, which cancels load that changes between rounds; the bar is the "
        "faster float32 layout of MN10 in that run. *Of matmul* is the path's GFLOP/s over "
        "the same-run matmul of its precision. Accuracy: max |p - p_fp32| over four 10 s "
        f"clips; *accurate* means within {HEADLINE_PROB_TOLERANCE}. Goals (1 thread): best "
        f"accurate path <= {GOAL_PEER_TIME_RATIO} of MN10's time and >= "
        f"{GOAL_BF16_FRACTION:.0%} of the bf16 matmul rate; float32 path >= "
        f"{GOAL_FP32_FRACTION:.0%} of the float32 matmul rate."
    )
    out.append("")
    if h.get("auto_mode"):
        out.append(f'`fast="auto"` chose `{h["auto_mode"]}` on this machine.')
        out.append("")
    for n_threads, cell in sorted(h["threads"].items(), key=lambda kv: int(kv[0])):
        out.append(f"### {n_threads} thread(s)")
        out.append("")
        if not cell["valid"]:
            out += [f"This cell is {_invalid_note(cell)}", ""]
            continue
        peers = cell["peer_ms"]
        bar = min((p for p in peers if "fp32" in p), key=peers.get)
        out.append(
            ("MN10 stand-in: " if peer["stand_in"] else "MN10 with its frontend: ")
            + ", ".join(f"{p} {_f(ms)} ms" for p, ms in peers.items())
            + f" (bar: {bar}). Same-run matmul GFLOP/s: "
            + ", ".join(f"{p} {_f(r)}" for p, r in cell["matmul_gflops"].items())
            + f"; {_attempts(cell)}."
        )
        out.append("")
        rows = []
        for mode, r in cell["rows"].items():
            acc = h["accuracy"][mode]["max_abs_prob_diff"]
            ratios = r["time_ratio_to_peer"]
            bf16_peer = ratios.get("bf16-channels-last")
            rows.append(
                [
                    mode,
                    _f(r["median_ms"]),
                    f"{acc:.1e}",
                    "yes" if acc <= HEADLINE_PROB_TOLERANCE else "no",
                    f"{ratios[bar]:.2f}",
                    "" if bf16_peer is None else f"{bf16_peer:.2f}",
                    f"{r['fraction_of_matmul']:.0%} ({r['matmul_precision']})",
                    _f(h["compile_s"].get(mode)),
                ]
            )
        header = ["CED-Tiny path", "median ms", "max prob diff", "accurate"]
        header += [f"time / MN10 {bar}", "time / MN10 bf16", "of matmul", "compile s"]
        out += [markdown_table(header, rows), ""]
    out.append(
        "*compile s*: the first two calls of a compiled path (paid once per process; an "
        "inductor cache left on disk by earlier runs shortens it)."
    )
    out.append("")
    return out


def _attempts(cell: dict) -> str:
    n = cell["attempts"]
    return "measured once" if n == 1 else f"measured {n} times (interference)"


def _invalid_note(cell: dict) -> str:
    worst = min(
        cell["matmul_gflops"][p] / cell["run_best_matmul_gflops"][p] for p in cell["matmul_gflops"]
    )
    times = "once" if cell["attempts"] == 1 else f"{cell['attempts']} times"
    return (
        f"invalid (measured {times}): its same-run matmul reached only {worst:.0%} of the "
        "run's best at this thread count (other jobs were running); no figures are published."
    )


def _profile(inf: dict) -> list[str]:
    """Per-stage time of the best accurate path (and torch's op table for torch paths)."""
    p = inf["profile"]
    out = [f"## Where the time goes: CED-Tiny `{p['mode']}`, 1 thread, 10 s clip", ""]
    # Thread counts are ints in a fresh run and strings once read back from results.json.
    by_threads = {str(k): v for k, v in inf.get("headline", {}).get("threads", {}).items()}
    one = by_threads.get("1")
    row = (one or {}).get("rows", {}).get(p["mode"])
    if row and one.get("valid", True):
        peers = one["peer_ms"]
        bar = min((k for k in peers if "fp32" in k), key=peers.get)
        ratio = row["time_ratio_to_peer"][bar]
        met = "met" if ratio <= GOAL_PEER_TIME_RATIO else "not met"
        out += [
            f"`{p['mode']}` is the fastest accurate path of the headline at one thread: "
            f"{_f(row['median_ms'])} ms, {ratio:.2f} of MN10's time (goal "
            f"{GOAL_PEER_TIME_RATIO}: {met}).",
            "",
        ]
    stages = p.get("stages")
    if stages:
        how = (
            "ONNX Runtime's profiler (per-node kernel times, nodes grouped by the module path "
            "their names keep)"
            if p["mode"].startswith("onnx")
            else "forward hooks timing each stage's modules, eager"
            + (
                " (the compiled path fuses across stages: its eager twin is timed)"
                if p["mode"].endswith("+compile")
                else ""
            )
        )
        out.append(
            f"Per stage, mean of {stages['calls']} calls after three warm-up calls, measured "
            f"with {how} (`bench.stages`). *rest* is the call's time the stages leave: input "
            "BatchNorm, positions, LayerNorms, GELU (unless fused into fc1), residual adds, "
            "pooling, head and framework overhead."
        )
        out.append("")
        rows = [[r["stage"], _f(r["ms"], 2), f"{r['share']:.0%}"] for r in stages["stages"]]
        rows.append(["total", _f(stages["total_ms"], 2), "100%"])
        out += [markdown_table(["stage", "ms per call", "share"], rows), ""]
    if p.get("table"):
        out.append(
            "torch.profiler of the path itself, ten calls after three warm-up calls, sorted by "
            "self CPU time (`bench.inference.profile_table`)."
        )
        out += ["", "```", p["table"].strip(), "```", ""]
    out.append(
        "What was tried and its measured effect: docs/performance.md, *Goals and where the "
        "time goes*."
    )
    return out + [""]


def _fusion(f: dict) -> list[str]:
    """What ONNX Runtime's and torch's fusions do to CED-Tiny, measured."""
    onnx = f["onnx"]
    out = ["## Fusions: ONNX Runtime and torch (CED-Tiny, 1 thread, 10 s clip)", ""]
    out.append(
        "ONNX Runtime variants of the float32 graph, timed round-robin with a float32 1024^3 "
        f"matmul ({_f(onnx['matmul_fp32_ms'])} ms) for {onnx['rounds']} rounds; *time / "
        "plain* is the median per-round ratio to the plain graph at the session's default "
        "level; *open ms*: median time to open the session (five turns); *max diff*: "
        "probabilities against the plain graph (`bench.fusion`). `export --optimize` is "
        "`hear-ced export-onnx --optimize` (`hear_ced.onnx_optimize`)."
    )
    out.append("")
    rows = [
        [
            r["variant"],
            f"{r['nodes']:,}",
            ", ".join(f"{op} {n}" for op, n in r["fused_ops"].items()),
            _f(r["median_ms"], 2),
            f"{r['ratio_to_plain']:.3f}",
            _f(r["open_ms"], 0),
            f"{r['max_abs_diff']:.1e}",
        ]
        for r in onnx["rows"]
    ]
    header = ["variant", "nodes", "fused op types", "median ms", "time / plain", "open ms"]
    out += [markdown_table(header + ["max diff"], rows), ""]
    applied = onnx["transformers_fusions"]
    attention = "matched" if {"Attention", "MultiHeadAttention"} & set(applied) else "no match"
    out += [
        "onnxruntime.transformers (`optimize_model`, model type vit) applied: "
        + (", ".join(f"{op} {n}" for op, n in applied.items()) or "nothing")
        + f"; its attention fusion: {attention}.",
        "",
    ]
    out.append(
        "torch: the kernels of one profiled call per path (`bench.fusion.torch_kernels`). "
        "*Other leaf aten ops* are the elementwise, normalisation and layout ops around the "
        "GEMMs; a compiled path runs most of them inside inductor's generated kernels instead."
    )
    out.append("")
    rows = [
        [
            name,
            k["attention"],
            ", ".join(f"{op.split('::')[-1]} {n}" for op, n in sorted(k["gemm_calls"].items())),
            str(k["other_aten_ops"]),
        ]
        for name, k in f["torch"].items()
    ]
    header = ["path", "attention kernel", "GEMM / conv calls", "other leaf aten ops"]
    return out + [markdown_table(header, rows), ""]


def _machine(m: dict) -> str:
    gpu = m.get("cuda_device") or "none (no CUDA device on this machine: GPU rows are empty)"
    return "\n".join(
        [
            f"- Date: {m['date_utc']}",
            f"- CPU: {m['cpu_model']} ({m['vendor']}), {m['nproc']} cores visible, "
            f"L3 {m['l3_cache']}, {m['mem_total_gb']} GB RAM",
            f"- Relevant CPU flags: {', '.join(m['cpu_flags']) or 'none'}; "
            f"torch CPU capability {m['cpu_capability']}",
            f"- torch {m['torch']}, Python {m['python']}",
            f"- GPU: {gpu}",
            f"- Load average when the run started: {m.get('load_avg_at_start')} "
            "(the machine is shared; see the ratio columns)",
        ]
    )


def _inference(inf: dict) -> list[str]:
    cpu = inf["cpu"]
    peer = {**STAND_IN, **cpu["peer"]}
    out = ["## CPU inference, 10 s clip", ""]
    out.append(
        "Latency is waveform -> logits, frontend included, median of round-robin repeats "
        "(all models of a cell and the reference matmuls take turns, so they see the same "
        "load). GFLOP/s = 2 x MACs / latency. *Ratio* = achieved GFLOP/s over a 1024^3 "
        "matmul of the mode's precision timed in the same rounds (fp32: float32; bf16: "
        "bfloat16; int8 modes: int8 x int8 -> int32 `torch._int_mm`). `default` is the "
        "model as published; the other modes come from "
        "`hear_ced.fast.optimize_for_inference`; `onnx-fp32` / `onnx-int8` run the exported "
        "graph (`hear_ced.export`, frontend inside) in ONNX Runtime with the same thread count. "
        "Weights are calibrated random weights "
        "(`bench.models.calibrated_model`): no published checkpoint is needed. "
        "*Time / MN10*: median latency over the faster float32 layout of "
        f"{_peer_title(peer)}, frontend included, timed in the same cell (CED-Tiny and "
        "CED-Mini cells). "
        "A cell whose same-run matmul reaches less than 0.8 of the run's best at the same "
        "thread count was disturbed by other jobs: it is measured again (up to three times in "
        "all) and, if it stays disturbed, shown as *invalid* without figures "
        "(`bench.common.InterferenceGuard`)."
    )
    out.append("")
    sizes = [
        [name, f"{s['params']:,}", f"{s['macs_10s'] / 1e9:.3f}"] for name, s in cpu["sizes"].items()
    ]
    sizes.append(
        [
            "MN10 stand-in (bench/mobilenet.py)" if peer["stand_in"] else _peer_title(peer),
            f"{peer['params']:,}",
            f"{peer['macs'] / 1e9:.3f} (published: 4.88 M params, 0.54 GMACs)",
        ]
    )
    out += ["Model sizes (counted with `torch.utils.flop_counter`, attention included):", ""]
    out += [markdown_table(["model", "params", "GMACs per 10 s"], sizes), ""]
    for n_threads in sorted({r["threads"] for r in cpu["rows"]}):
        for batch in sorted({r["batch"] for r in cpu["rows"]}):
            cell = [r for r in cpu["rows"] if r["threads"] == n_threads and r["batch"] == batch]
            ref = next(
                m for m in cpu["matmul_gflops"] if m["threads"] == n_threads and m["batch"] == batch
            )
            out.append(f"### {n_threads} thread(s), batch {batch}")
            out.append("")
            out.append(
                "Same-run matmul GFLOP/s (tiny cell): "
                + ", ".join(f"{p} {_f(ref[p])}" for p in ("fp32", "bf16", "int8") if p in ref)
            )
            out.append("")
            rows = [
                [
                    r["model"],
                    r["mode"],
                    _f(r["latency_ms"]),
                    _f(r["ms_per_clip"]),
                    _f(r["gflops"]),
                    f"{r['ratio_to_matmul']:.2f} ({r['matmul_precision']})",
                    _f(r.get("time_ratio_to_peer"), 2),
                ]
                if r.get("valid", True)
                else [r["model"], r["mode"], "invalid", "", "", "", ""]
                for r in cell
            ]
            refs = [
                m for m in cpu["matmul_gflops"] if m["threads"] == n_threads and m["batch"] == batch
            ]
            invalid = [m for m in refs if not m.get("valid", True)]
            if invalid:
                out += ["; ".join(f"*{m['model']}*: {_invalid_note(m)}" for m in invalid), ""]
            out += [
                markdown_table(
                    ["model", "mode", "latency ms", "ms / clip", "GFLOP/s", "ratio", "time / MN10"],
                    rows,
                ),
                "",
            ]
    out += ["### Accuracy of each fast path against float32", ""]
    out.append(
        "Four 10 s synthetic clips; max |p - p_fp32| over all 527 probabilities, and the "
        "smallest cosine similarity of the scene embeddings (mean final-norm token)."
    )
    out.append("")
    rows = [
        [variant, mode, f"{a['max_abs_prob_diff']:.2e}", f"{a['min_embedding_cosine']:.6f}"]
        for variant, modes in cpu["accuracy"].items()
        for mode, a in modes.items()
    ]
    out += [markdown_table(["model", "mode", "max abs prob diff", "min cosine"], rows), ""]
    out += ["## GPU inference", ""]
    if inf.get("gpu"):
        rows = [
            [
                r["device"],
                r["model"],
                r["mode"],
                r["batch"],
                _f(r["latency_ms"], 2),
                _f(r["gflops"]),
                f"{r['ratio_to_matmul']:.2f}",
            ]
            for r in inf["gpu"]
        ]
        header = ["device", "model", "mode", "batch", "latency ms", "GFLOP/s", "ratio"]
        out += [markdown_table(header, rows), ""]
    else:
        out.append(
            "No GPU was available for this run, so this table is empty (nothing is "
            "estimated). `make bench` fills it on a machine with CUDA "
            "(`bench.inference.gpu_rows`: fp32 and bf16 autocast, batch 1 and 8)."
        )
        out += [
            "",
            markdown_table(["device", "model", "mode", "batch", "latency ms", "GFLOP/s"], []),
            "",
        ]
    return out


def _cold_start(c: dict) -> list[str]:
    out = ["## Cold start: one `hear-ced tag` process, one 10 s file", ""]
    if c.get("skipped"):
        return out + [f"Not measured: {c['skipped']}.", ""]
    out.append(
        "Fresh processes timed by `/usr/bin/time` (wall s, peak RSS), "
        f"CED-{c['variant'].capitalize()} from a local checkpoint (`--model`), imports, "
        "weights, audio, inference and printing included; the commands take turns "
        "(`bench.coldstart`). *import torch only* is the floor every path pays."
        f" Load average at the end: {_load(c['load_avg'])}. "
        "A C++ port of CED reports about 0.15 s for the same job."
    )
    out.append("")
    rows = [
        [r["command"], r["runs"], f"{r['min_s']:.2f}", f"{r['median_s']:.2f}", _f(r["peak_rss_mb"])]
        for r in c["rows"]
    ]
    return out + [markdown_table(["command", "runs", "min s", "median s", "peak RSS MB"], rows), ""]


def _load(values) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


def _embeddings(e: dict) -> list[str]:
    out = [f"## HEAR embeddings (CED-{e['model'].capitalize()}, {e['threads']} threads)", ""]
    out.append(
        f"Throughput on {e['clips']} clips, seconds of audio per wall-clock second; "
        f"timestamp embeddings every {e['hop_ms']:g} ms with {e['passes']} shifted passes "
        f"(the API's defaults). Same-run fp32 matmul: {_f(e['matmul_fp32_gflops'])} GFLOP/s."
    )
    out.append("")
    rows = [
        [
            r["mode"],
            _f(r["scene_audio_s_per_s"]),
            _f(r["timestamp_audio_s_per_s"]),
            f"{r['timestamp_over_scene_cost']:.2f}",
        ]
        for r in e["rows"]
    ]
    header = ["model path", "scene (audio s / s)", "timestamp (audio s / s)"]
    header += ["timestamp cost / scene cost"]
    out += [markdown_table(header, rows), ""]
    out.append(
        "A 10-minute clip, float32, in a fresh process: peak resident memory rise over "
        "the level after loading the model and the audio."
    )
    out.append("")
    rows = [
        [r["kind"], _f(r["rise_mb"]), _f(r["peak_mb"]), _f(r["seconds"]), _f(r["audio_s_per_s"])]
        for r in e["long_clip"]
    ]
    header = ["call", "peak rise MB", "peak RSS MB", "wall s", "audio s / s"]
    return out + [markdown_table(header, rows), ""]


def _pipeline(p: dict) -> list[str]:
    out = [f"## Distillation pipeline on CPU ({p['threads']} thread(s), batch {p['batch']})", ""]
    out.append(
        "Data path: HDF5 int16 read, seeded mixup + shift (`AugmentedClips`), log-mel and "
        "`spec_augment`, through a `DataLoader` with the stated workers. Train step: "
        "forward, BCE against top-20 targets, backward, optimizer step (8-bit Adam when "
        "bitsandbytes runs). Extraction: one-teacher `teacher_probs` + top-20."
    )
    out.append("")
    train = {r["model"]: r["samples_per_s"] for r in p["train"]}
    rows = [
        [
            "data path",
            f"{d['workers']} workers",
            _f(d["samples_per_s"], 2),
            ", ".join(f"{d['samples_per_s'] / rate:.1f}x {m}" for m, rate in train.items()),
        ]
        for d in p["data_path"]
    ]
    rows += [["train step", r["model"], _f(r["samples_per_s"], 2), ""] for r in p["train"]]
    rows += [["logit extraction", r["model"], _f(r["samples_per_s"], 2), ""] for r in p["extract"]]
    header = ["stage", "setting", "samples / s", "data path / train step"]
    return out + [markdown_table(header, rows), ""] + _gpu_pipeline(p.get("gpu") or {})


def _gpu_pipeline(g: dict) -> list[str]:
    out = ["## Distillation on GPU (bf16, 10 s clips, frontend and SpecAugment on the GPU)", ""]
    if not g.get("device"):
        out += [
            "Not measured (no GPU lent): No GPU was available for this run, so these rows "
            "are empty (nothing is estimated). "
            "`make bench` fills them on a machine with CUDA (`bench.pipeline.gpu_run`).",
            "",
        ]
    else:
        out += [
            f"Device: {g['device']}; same-run bf16 matmul: {g['bf16_matmul_tflops']:.0f} TFLOP/s.",
            "",
        ]
    peak = g.get("bf16_matmul_tflops")
    rows = [
        [
            "student training",
            r["model"],
            str(r["batch"]),
            _f(r["samples_per_s"], 1),
            f"{r['tflops'] / peak:.2f}" if peak else "",
        ]
        for r in g.get("train", [])
    ]
    rows += [
        ["logit extraction", r["model"], str(r["batch"]), _f(r["samples_per_s"], 1), ""]
        for r in g.get("extract", [])
    ]
    header = ["stage", "model", "batch", "samples / s", "fraction of bf16 matmul"]
    return out + [markdown_table(header, rows), ""]


def _gpu_bench(g: dict | None) -> list[str]:
    """``make bench-gpu``: GPU figures when measured; a smoke run's GPU figures are never shown."""
    out = ["## GPU: training, save-logits and HEAR throughput (`make bench-gpu`)", ""]
    if not g or g["smoke"]:
        note = " (the last run was a CPU smoke run, which checks the code, not the speed)"
        out += [f"Not measured: no GPU{note if g else ''}.", ""]
    else:
        out.append(
            f"Device: {g['device']}, torch {g['torch']}; {g['plan']['steps']} timed calls per "
            "row after one warm-up, synthetic 10 s clips on the device. Training: mel frontend "
            "and SpecAugment on the device, bf16 autocast, BCE on top-K targets, the project's "
            "optimizer. Save-logits: teacher probabilities + top-K under bf16. HEAR: scene + "
            "timestamp embeddings in float32. Peak memory: `torch.cuda.max_memory_allocated`."
        )
        out.append("")
        rows = [
            [
                stage,
                r["model"],
                f"{r['batch']}"
                + (f" (halved from {r['halved_from']})" if "halved_from" in r else ""),
                _f(r["clips_per_s"]),
                _f(r["peak_memory_mb"], 0),
            ]
            for stage, key in (
                ("training", "train"),
                ("save-logits", "save_logits"),
                ("HEAR", "hear"),
            )
            for r in g[key]
        ]
        header = ["stage", "model", "batch", "clips / s", "peak GPU MiB"]
        out += [markdown_table(header, rows), ""]
    if g:
        d = g["data_path"]
        load = ", ".join(f"{x:.1f}" for x in d["load_average"])
        out += [
            "### CPU data path per worker",
            "",
            f"One process reading {d['clips']} rows of a synthetic int16 HDF5 shard "
            "(`distill.data.AudioStore`; just written, so read from the OS page cache) with "
            "seeded shift and mixup (`AugmentedClips`), one "
            f"thread: {_f(d['clips_per_s_per_worker'])} clips/s per worker, so "
            f"{d['workers_for_target']} workers would feed {d['feed_target_clips_per_s']:,} "
            "clips/s (computed from that rate, assuming workers scale linearly; not measured "
            f"with that many). Load average when measured: {load} (the machine is shared and "
            "busy, so the rate is a lower bound for a quiet machine).",
            "",
        ]
    return out


def _storage(s: dict) -> list[str]:
    out = ["## Stored teacher outputs: bytes per sample-epoch", ""]
    out.append(
        f"Synthetic teacher top-K over {s['num_classes']} classes (see `bench/storage.py`), "
        "written to disk by `distill.logits.EpochWriter` (HDF5, gzip + shuffle on values "
        "and indices, int32 seeds) and by `bench/compact.py` (seeds derived, indices as "
        f"bit-packed sorted gaps, 15-bit values). The paper's layout: {s['paper_bytes_k20']} "
        "bytes at K=20 (K*4 + 4). Decode speeds are rows per second for a whole epoch."
    )
    out.append("")
    rows = [
        [
            r["k"],
            f"{r['n_rows']:,}",
            r["raw_bytes_per_row"],
            _f(r["plain_bytes_per_row"]),
            _f(r["compact_bytes_per_row"]),
            f"{r['plain_read_rows_per_s']:,.0f}",
            f"{r['compact_decode_rows_per_s']:,.0f}",
            "yes" if r["compact_lossless"] else "NO",
        ]
        for r in s["rows"]
    ]
    header = ["K", "rows", "raw K*4+4", "logit store (gzip HDF5)", "compact", "store read rows/s"]
    header += ["compact decode rows/s", "lossless"]
    return out + [markdown_table(header, rows), ""]


def render(results: dict) -> str:
    out = ["# Benchmarks", ""]
    out.append(
        "Measured by `make bench` (`python -m bench.run --out bench/out`); raw figures in "
        "`bench/out/results.json`. The machine is shared with other jobs, so raw latencies "
        "are noisy: compare the ratio columns, which divide by a matmul timed in the same "
        "rounds."
    )
    out += ["", "## Machine", "", _machine(results["machine"]), ""]
    head = results.get("inference", {}).get("headline")
    if head:
        out += _headline(head)
    if results.get("inference", {}).get("profile"):
        out += _profile(results["inference"])
    if results.get("inference", {}).get("fusion"):
        out += _fusion(results["inference"]["fusion"])
    sections = (
        ("inference", _inference),
        ("cold_start", _cold_start),
        ("embeddings", _embeddings),
        ("pipeline", _pipeline),
        ("storage", _storage),
    )
    for key, fn in sections:
        if results.get(key):
            out += fn(results[key])
        else:
            out += [f"## {key}", "", "Not measured in this run.", ""]
    out += _gpu_bench(results.get("gpu_bench"))
    stamps = results.get("measured_at", {})
    if stamps:
        out += ["## When each section was measured", ""]
        out += [f"- {name}: finished {stamp}" for name, stamp in stamps.items()]
        out.append("")
    durations = results.get("durations_s", {})
    if durations:
        total = sum(durations.values())
        parts = ", ".join(f"{k} {v:.0f} s" for k, v in durations.items())
        out += ["## Run time", "", f"{total:.0f} s in all ({parts}).", ""]
    return "\n".join(out)


HAND_START = "<!-- measured by hand: bench.report keeps this block -->"
HAND_END = "<!-- end of the block measured by hand -->"


def hand_blocks(report: str) -> list[str]:
    """The blocks measured by hand in an existing report, markers included."""
    pattern = re.escape(HAND_START) + ".*?" + re.escape(HAND_END)
    return re.findall(pattern, report, flags=re.S)


def write_report(results: dict, report_path: Path) -> None:
    """Render ``results`` into ``report_path``, keeping the blocks measured by hand there."""
    old = report_path.read_text() if report_path.exists() else ""
    kept = "".join(f"\n{block}\n" for block in hand_blocks(old))
    write_text(report_path, render(results) + kept)


def main(argv: list[str]) -> None:
    results_path, report_path = Path(argv[0]), Path(argv[1])
    write_report(read_json(results_path), report_path)


if __name__ == "__main__":
    main(sys.argv[1:])
