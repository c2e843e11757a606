"""HEAR embedding throughput (seconds of audio per wall-clock second) and peak memory.

The HEAR API (``hear_ced.hear``) runs on CED-Mini with calibrated random
weights, as published (float32) and through ``optimize_for_inference``'s bf16
path, which keeps the model interface the API uses. Peak memory of a
10-minute clip is measured in a fresh subprocess per call kind, as the rise of
the process's peak resident set size (``ru_maxrss``) over its level after
loading the model and the audio (Linux: the peak is reset through
``/proc/self/clear_refs``, then read as ``VmHWM``).
"""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from bench.common import interleaved, matmul_fn, matmul_gflops, threads
from bench.models import calibrated_model, synthetic_audio
from hear_ced.fast import native_bf16, optimize_for_inference
from hear_ced.hear import CEDEmbedder, get_scene_embeddings, get_timestamp_embeddings

VARIANT = "mini"
LONG_CLIP_SECONDS = 600.0

_MEMORY_PROBE = """
import json, sys, time, torch
from bench.models import synthetic_audio
from hear_ced.hear import CEDEmbedder, get_scene_embeddings, get_timestamp_embeddings
from hear_ced.model import build_model

def status_mb(field):
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024

kind, seconds, n_threads = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(n_threads)
embedder = CEDEmbedder(build_model("{variant}"))
audio = synthetic_audio(1, seconds=seconds, seed=2)
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # reset the peak (VmHWM) to the current resident size
before = status_mb("VmRSS")
start = time.perf_counter()
fn = get_scene_embeddings if kind == "scene" else get_timestamp_embeddings
fn(audio, embedder)
elapsed = time.perf_counter() - start
peak = status_mb("VmHWM")
print(json.dumps({{"kind": kind, "baseline_mb": before, "peak_mb": peak,
                   "rise_mb": peak - before, "seconds": elapsed}}))
"""


def long_clip_memory(kind: str, n_threads: int, seconds: float = LONG_CLIP_SECONDS) -> dict:
    """Peak RSS rise and wall time of one call on a ``seconds``-long clip, in a fresh process."""
    probe = _MEMORY_PROBE.format(variant=VARIANT)
    result = subprocess.run(
        [sys.executable, "-c", probe, kind, str(seconds), str(n_threads)],
        capture_output=True,
        text=True,
        check=True,
    )
    out = json.loads(result.stdout.strip().splitlines()[-1])
    out["audio_s_per_s"] = seconds / out["seconds"]
    return out


def run(n_threads: int = 2, n_clips: int = 4, clip_seconds: float = 10.0, budget_s: float = 6.0):
    """Throughput of scene and timestamp embeddings, and the 10-minute memory probe."""
    model = calibrated_model(VARIANT)
    embedders = {"fp32": CEDEmbedder(model)}
    if native_bf16():
        embedders["bf16"] = CEDEmbedder(optimize_for_inference(model, "bf16"))
    audio = synthetic_audio(n_clips, seconds=clip_seconds, seed=1)
    fns = {"matmul": matmul_fn(torch.float32)}
    for name, embedder in embedders.items():
        fns[f"scene:{name}"] = lambda e=embedder: get_scene_embeddings(audio, e)
        fns[f"timestamp:{name}"] = lambda e=embedder: get_timestamp_embeddings(audio, e)
    with threads(n_threads), torch.inference_mode():
        timings = interleaved(fns, budget_s)
    audio_seconds = n_clips * clip_seconds
    rows = []
    for name in embedders:
        scene, stamp = timings[f"scene:{name}"], timings[f"timestamp:{name}"]
        rows.append(
            {
                "mode": name,
                "scene_audio_s_per_s": audio_seconds / scene.median,
                "timestamp_audio_s_per_s": audio_seconds / stamp.median,
                "timestamp_over_scene_cost": stamp.median / scene.median,
            }
        )
    return {
        "model": VARIANT,
        "threads": n_threads,
        "clips": f"{n_clips} x {clip_seconds:g} s",
        "hop_ms": embedders["fp32"].hop_ms,
        "passes": embedders["fp32"].passes,
        "matmul_fp32_gflops": matmul_gflops(timings["matmul"]),
        "rows": rows,
        "long_clip": [long_clip_memory(kind, n_threads) for kind in ("scene", "timestamp")],
    }
