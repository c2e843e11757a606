"""BENCHMARKS.md from the results.json of ``make bench`` and ``make bench-gpu`` (``bench.run``).

Every figure comes from the results of a run, beside the reference measured in
the same run.
"""

from __future__ import annotations

from bench.inference import ACCURATE, HEADLINE
from hear_ced.common.tables import markdown_table
from hear_ced.fast import MODES

# The CPU classes BENCHMARKS.md always names, and the goals for the best accurate
# path's time over MN10's, per thread count.
CPU_CLASSES = ("AVX2 without VNNI", "AVX512 with BF16/VNNI", "AMX")
GOALS = {
    "AVX2 without VNNI": {1: 0.6, 2: 0.5},
    "AVX512 with BF16/VNNI": {1: 0.33},
    "AMX": {1: 0.25},
}
# ``auto`` is held to this fraction over the best accurate mode it can choose.
AUTO_SLACK = 0.10


def _f(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def _peer_note(peer: dict | None) -> str:
    """Which MN10 the times are divided by, or what a run needs to compare with one."""
    if peer is None:
        return (
            "No MN10 in this run: the ratios to EfficientAT's MN10 need an EfficientAT checkout "
            "(`make bench MN10_SRC=PATH`)."
        )
    commit = peer["commit"] or "unknown (not a git checkout)"
    return (
        "MN10 is EfficientAT's own `get_model` (width 1.0, random weights) and `AugmentMelSTFT` "
        f"frontend from the checkout at commit `{commit}` (`bench.efficientat`), timed on a "
        "10 s 32 kHz clip as CED-Tiny is timed with its own frontend on a 10 s 16 kHz clip."
    )


def _bar(peer_ms: dict[str, float]) -> str | None:
    """The MN10 layout CED is held to: its faster float32 one (None without MN10)."""
    return min((p for p in peer_ms if "fp32" in p), key=peer_ms.get, default=None)


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
    """Per-stage time of the best accurate path, and of the fastest path if it is not accurate."""
    out = []
    for p in inf["profiles"]:
        out += [f"## Where the time goes: CED-Tiny `{p['mode']}`, 1 thread, 10 s clip", ""]
        what = (
            "fastest accurate torch path"
            if p["max_abs_prob_diff"] <= ACCURATE
            else f"fastest torch path, {p['max_abs_prob_diff']:.1e} from float32 (not accurate)"
        )
        out += [
            f"`{p['mode']}` is CED-Tiny's {what} at one thread, batch 1 (its time is in the "
            "grid below).",
            "",
        ]
        stages = p.get("stages")
        if stages:
            out += _stage_table(p["mode"], stages)
    out.append(
        "What was tried and what it decided: docs/performance.md, *What the measurements decided*."
    )
    return out + [""]


def _stage_table(mode: str, stages: dict) -> list[str]:
    how = "forward hooks timing each stage's modules, eager" + (
        " (the compiled path fuses across stages: its eager twin is timed)"
        if mode.endswith("+compile")
        else ""
    )
    out = [
        f"Per stage, mean of {stages['calls']} calls after three warm-up calls, measured "
        f"with {how} (`bench.stages`). *rest* is the call's time the stages leave: input "
        "BatchNorm, positions, LayerNorms, GELU (unless fused into fc1), residual adds, "
        "pooling, head and framework overhead.",
        "",
    ]
    rates = stages.get("matmul_gflops")
    if rates:
        measured = ", ".join(f"{p} {_f(r)}" for p, r in rates.items())
        out += [
            f"*GFLOP/s*: the stage's operations (counted on the float32 model) over its time; "
            f"*of matmul*: that over the same-run 1024^3 matmul of the precision the stage "
            f"computes in, at one thread ({measured} GFLOP/s).",
            "",
        ]
    rows = [
        [r["stage"], _f(r["ms"], 2), f"{r['share']:.0%}", _f(r.get("gflops")),
         f"{r['of_matmul']:.2f} ({r['precision']})" if "of_matmul" in r else ""]
        for r in stages["stages"]
    ]  # fmt: skip
    rows.append(["total", _f(stages["total_ms"], 2), "100%", "", ""])
    header = ["stage", "ms per call", "share", "GFLOP/s", "of matmul"]
    out += [markdown_table(header, rows), ""]
    return out


def _goal_lines(name: str, entry: dict) -> list[str]:
    """Where the class's best accurate path and ``auto`` stand against their goals."""
    rows = entry["rows"]
    accurate = [r for r in rows if r["max_abs_prob_diff"] <= ACCURATE]
    lines = []
    for n_threads in sorted({r["threads"] for r in rows}):
        best = min((r for r in accurate if r["threads"] == n_threads), key=lambda r: r["ms"])
        goal = GOALS.get(name.removesuffix(" (emulated)"), {}).get(n_threads)
        verdict = ""
        if best["to_mn10"] is not None and goal is not None:
            verdict = f" (goal at most {goal}: {'met' if best['to_mn10'] <= goal else 'not met'})"
        to_mn10 = "" if best["to_mn10"] is None else f", {best['to_mn10']:.2f} of MN10's time"
        lines.append(
            f"- {n_threads} thread(s): best accurate path `{best['mode']}`, "
            f"{_f(best['ms'])} ms{to_mn10}{verdict}."
        )
    auto = next((r for r in rows if r["mode"] == entry["auto"] and r["threads"] == 1), None)
    choosable = [r for r in accurate if r["threads"] == 1 and r["mode"] in MODES]
    if auto and choosable:
        best = min(choosable, key=lambda r: r["ms"])
        over = auto["ms"] / best["ms"] - 1
        within = "within" if over <= AUTO_SLACK else "not within"
        lines.append(
            f'- `fast="auto"` chose `{entry["auto"]}`: {over:+.0%} against `{best["mode"]}`, the '
            f"fastest accurate mode it can choose at 1 thread ({within} {AUTO_SLACK:.0%})."
        )
    return lines


def _headlines(headlines: dict) -> list[str]:
    """One headline table per CPU class measured; the classes not measured say so."""
    out = ["## Headline: CED-Tiny against MN10 on each CPU class", ""]
    out.append(
        "One 10 s clip, batch 1, calibrated random weights, waveform -> logits with each "
        "model's own frontend; *time / MN10*: the median over rounds of the ratio to the "
        "faster float32 layout of EfficientAT's MN10 timed in the same rounds; *accurate*: "
        f"probabilities within {ACCURATE} of float32. Each class keeps the figures of the last "
        "`make bench` run on it (`bench/headlines.json`); an emulated class ran on a newer "
        "CPU with its kernels limited (docs/performance.md)."
    )
    out.append("")
    for name in dict.fromkeys([*CPU_CLASSES, *headlines]):
        out += [f"### {name}", ""]
        entry = headlines.get(name)
        if entry is None:
            out += ["Not measured: no run of `make bench` on a CPU of this class.", ""]
            continue
        m = entry["machine"]
        emulated = ", ".join(f"{k}={v}" for k, v in (m.get("emulation") or {}).items())
        out.append(
            f"Measured {m['date_utc']} on {m['cpu_model']} (flags: "
            f"{', '.join(m['cpu_flags']) or 'none'}; torch capability {m['cpu_capability']}"
            + (f"; emulated with {emulated}" if emulated else "")
            + f"), torch {m['torch']}. MN10: "
            + (
                f"{entry['peer']}, "
                + ", ".join(f"{_f(ms)} ms at {n} thread(s)" for n, ms in entry["mn10_ms"].items())
                if entry["peer"]
                else "not timed in that run"
            )
            + "."
            + (f" {entry['note']}" if entry.get("note") else "")
        )
        out.append("")
        table: dict[str, dict[int, dict]] = {}
        for r in entry["rows"]:
            table.setdefault(r["mode"], {})[r["threads"]] = r
        threads = sorted({r["threads"] for r in entry["rows"]})
        body = []
        for mode, by_threads in table.items():
            line = [mode]
            for n in threads:
                r = by_threads.get(n)
                line += [_f(r and r["ms"]), _f(r and r["to_mn10"], 2)]
            diff = next(iter(by_threads.values()))["max_abs_prob_diff"]
            line += [f"{diff:.1e}", "yes" if diff <= ACCURATE else "no"]
            body.append(line)
        header = ["path"]
        header += [c for n in threads for c in (f"{n} thread(s) ms", "time / MN10")]
        header += ["max abs prob diff", "accurate"]
        out += [markdown_table(header, body), ""]
        out += [*_goal_lines(name, entry), ""]
    return out


def _machine(m: dict) -> list[str]:
    gpu = m.get("cuda_device") or "none (no CUDA device on this machine: GPU rows are empty)"
    return [
        "## Machine",
        "",
        f"- Date: {m['date_utc']}",
        f"- CPU: {m['cpu_model']}, {m['nproc']} cores visible, {m['mem_total_gb']} GB RAM; "
        f"class {m.get('cpu_class', 'unknown')}",
        f"- Relevant CPU flags: {', '.join(m['cpu_flags']) or 'none'}; "
        f"torch CPU capability {m['cpu_capability']}",
        f"- torch {m['torch']}, Python {m['python']}",
        f"- GPU: {gpu}",
        f"- Load average when the run started: {_load(m.get('load_avg_at_start', ()))} "
        "(the machine is shared; see the ratio columns)",
        "",
    ]


def _inference(inf: dict) -> list[str]:
    peer = inf["peer"]
    out = ["## CPU inference, 10 s clip", "", _peer_note(peer), ""]
    if inf.get("auto_mode"):
        out += [f'`fast="auto"` chose `{inf["auto_mode"]}` on this machine.', ""]
    out.append(
        "Waveform -> logits, frontend included, calibrated random weights. *bN*: batch N; "
        "*ms / clip*: its median latency over N. *Ratio*: GFLOP/s (2 x MACs / latency) over "
        "the same-run 1024^3 matmul of the mode's precision. `default` is the model as "
        "published, the other modes `hear_ced.fast.optimize_for_inference` or the exported "
        "graph in ONNX Runtime. "
        + (
            "*Time / MN10*: the median over rounds of (CED time / MN10 time) over the faster "
            f"float32 layout of {peer['name']}, same cell (CED-Tiny and CED-Mini cells). "
            if peer
            else ""
        )
        + "*Invalid*: a cell whose same-run matmul stayed below 0.8 of the run's best (other "
        "jobs' load)."
    )
    out.append("")
    sizes = [
        [name, f"{s['params']:,}", f"{s['macs_10s'] / 1e9:.3f}"] for name, s in inf["sizes"].items()
    ]
    if peer:
        published = "(published: 4.88 M params, 0.54 GMACs)"
        sizes.append([peer["name"], f"{peer['params']:,}", f"{peer['macs'] / 1e9:.3f} {published}"])
    out += ["Model sizes (counted with `torch.utils.flop_counter`, attention included):", ""]
    out += [markdown_table(["model", "params", "GMACs per 10 s"], sizes), ""]
    for n_threads in sorted({r["threads"] for r in inf["rows"]}):
        out += _grid(inf, n_threads)
    out += ["### Accuracy of each fast path against float32", ""]
    out.append(
        "Four 10 s synthetic clips; max |p - p_fp32| over all 527 probabilities / the "
        "smallest cosine similarity of the scene embeddings (mean final-norm token). A path "
        f'within {ACCURATE} of the probabilities is *accurate* (as for `fast="auto"`).'
    )
    out.append("")
    models = list(inf["accuracy"])
    modes = dict.fromkeys(m for modes in inf["accuracy"].values() for m in modes if m != "default")
    rows = [
        [mode]
        + [
            f"{a['max_abs_prob_diff']:.1e} / {a['min_embedding_cosine']:.6f}" if a else ""
            for a in (inf["accuracy"][model].get(mode) for model in models)
        ]
        for mode in modes
    ]
    out += [markdown_table(["mode", *models], rows), ""]
    if inf["compile_s"]:
        compile_s = ", ".join(f"`{mode}` {_f(t)} s" for mode, t in inf["compile_s"].items())
        out += [
            f"Compile time, the first two calls of a compiled path (paid once per process; an "
            f"inductor cache left on disk by earlier runs shortens it): {compile_s}.",
            "",
        ]
    return out


def _grid(inf: dict, n_threads: int) -> list[str]:
    """One table per thread count: each cell's rows, the batch sizes side by side."""
    rows = [r for r in inf["rows"] if r["threads"] == n_threads]
    refs = [m for m in inf["matmul_gflops"] if m["threads"] == n_threads]
    batches = sorted({r["batch"] for r in rows})
    out = [f"### {n_threads} thread(s)", ""]
    tiny = (
        f"batch {m['batch']}: " + ", ".join(f"{p} {_f(r)}" for p, r in m["matmul_gflops"].items())
        for m in refs
        if m["model"] == HEADLINE
    )
    out += [f"Same-run matmul GFLOP/s (tiny cell): {'; '.join(tiny)}", ""]
    invalid = [m for m in refs if not m["valid"]]
    if invalid:
        notes = (f"*{m['model']}, batch {m['batch']}*: {_invalid_note(m)}" for m in invalid)
        out += ["; ".join(notes), ""]
    table: dict[tuple, dict[int, dict]] = {}
    peers: dict[tuple, dict[str, float]] = {}
    for r in rows:
        table.setdefault((r["cell"], r["model"], r["mode"]), {})[r["batch"]] = r
        if r["model"] == "mn10":
            peers.setdefault((r["cell"], r["batch"]), {})[r["mode"]] = r["ms_per_clip"]

    columns = ("ms / clip", "ratio", "time / MN10") if inf["peer"] else ("ms / clip", "ratio")

    def cells(r: dict | None) -> list[str]:
        if r is None or not r["valid"]:
            return ["invalid" if r else ""] + [""] * (len(columns) - 1)
        ratio = f"{r['ratio_to_matmul']:.2f} ({r['matmul_precision']})"
        bar = _bar(peers.get((r["cell"], r["batch"]), {}))
        to_peer = r.get("time_ratio_to_peer", {}).get(bar)
        return [_f(r["ms_per_clip"]), ratio, _f(to_peer, 2)][: len(columns)]

    body = [
        [model, mode, *(c for b in batches for c in cells(by_batch.get(b)))]
        for (_, model, mode), by_batch in table.items()
    ]
    header = ["model", "mode"]
    header += [f"b{b} {c}" for b in batches for c in columns]
    return out + [markdown_table(header, body), ""]


def _cold_start(c: dict) -> list[str]:
    out = ["## Cold start: one `hear-ced tag` process, one 10 s file", ""]
    if c.get("skipped"):
        return out + [f"Not measured: {c['skipped']}.", ""]
    out.append(
        "Fresh processes timed by `/usr/bin/time` (wall s, peak RSS), "
        f"CED-{c['variant'].capitalize()} from a local checkpoint (`--model`), imports, "
        "weights, audio, inference and printing included; the commands take turns "
        "(`bench.coldstart`). *import torch only* is the floor every path pays."
        f" Load average at the end: {_load(c['load_avg'])}."
    )
    out.append("")
    rows = [
        [r["command"], r["runs"], f"{r['min_s']:.2f}", f"{r['median_s']:.2f}", _f(r["peak_rss_mb"])]
        for r in c["rows"]
    ]
    out += [markdown_table(["command", "runs", "min s", "median s", "peak RSS MB"], rows), ""]
    if "onnx_warm_to_import_torch" in c:
        ratio = c["onnx_warm_to_import_torch"]
        out += [
            f"`tag --onnx` from the torch-free install, later runs (its optimised graph cached): "
            f"{ratio:.2f} of `import torch` (goal at most 0.15: "
            f"{'met' if ratio <= 0.15 else 'not met'}).",
            "",
        ]
    return out


def _load(values) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


def _embeddings(e: dict) -> list[str]:
    out = [f"## HEAR embeddings (CED-{e['model'].capitalize()}, {e['threads']} threads)", ""]
    out.append(
        f"A {e['seconds']:g} s clip, float32, in a fresh process: peak resident memory rise over "
        "the level after loading the model and the audio; timestamp embeddings every "
        f"{e['hop_ms']:g} ms with {e['passes']} shifted passes (the API's defaults)."
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
        "Train step: forward, BCE against top-20 targets, backward, optimizer step (8-bit "
        "Adam when bitsandbytes runs). Extraction: one-teacher `teacher_probs` + top-20."
    )
    out.append("")
    rows = [["train step", r["model"], _f(r["samples_per_s"], 2)] for r in p["train"]]
    rows += [["logit extraction", r["model"], _f(r["samples_per_s"], 2)] for r in p["extract"]]
    header = ["stage", "model", "samples / s"]
    return out + [markdown_table(header, rows), ""]


def _gpu_bench(g: dict) -> list[str]:
    """``make bench-gpu``: GPU figures when measured."""
    out = ["## GPU: training, save-logits and HEAR throughput (`make bench-gpu`)", ""]
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
            f"{r['batch']}" + (f" (halved from {r['halved_from']})" if "halved_from" in r else ""),
            _f(r["clips_per_s"]),
            _f(r["peak_memory_mb"], 0),
        ]
        for stage, key in (("training", "train"), ("save-logits", "save_logits"), ("HEAR", "hear"))
        for r in g[key]
    ]
    header = ["stage", "model", "batch", "clips / s", "peak GPU MiB"]
    return out + [markdown_table(header, rows), ""]


def render(results: dict, headlines: dict | None = None) -> str:
    out = ["# Benchmarks", ""]
    out.append(
        "Measured by `make bench` (`python -m bench.run --out bench/out`); raw figures in "
        "`bench/out/results.json`. The machine is shared with other jobs, so raw latencies "
        "are noisy: compare the ratio columns, which divide by a matmul timed in the same "
        "rounds. Speeds and the reduced-precision paths' distances from float32 differ across "
        "CPUs; how each figure is measured: docs/performance.md."
    )
    out.append("")
    out += _headlines(headlines or {})
    out += ["# The latest run", ""]
    sections = (
        ("machine", _machine),
        ("inference", lambda inf: _profile(inf) + _inference(inf)),
        ("cold_start", _cold_start),
        ("embeddings", _embeddings),
        ("pipeline", _pipeline),
        ("gpu_bench", _gpu_bench),
    )
    for key, fn in sections:
        if results.get(key):
            out += fn(results[key])
        else:
            out += [f"## {key}", "", "Not measured in this run.", ""]
    measured = results.get("measured", {})
    if measured:
        total = sum(m["seconds"] for m in measured.values())
        out += ["## When each section was measured", ""]
        out += [
            f"- {k}: finished {m['finished']}, {m['seconds']:.0f} s" for k, m in measured.items()
        ]
        out += ["", f"{total:.0f} s in all.", ""]
    return "\n".join(out)
