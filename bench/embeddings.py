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
import time

import torch

from bench.common import MATMUL_PREFIX, interleaved, matmul_fn, reference_gflops, threads
from hear_ced.fast import calibrated_model, native_bf16, optimize_for_inference, synthetic_audio
from hear_ced.hear import CEDEmbedder, get_scene_embeddings, get_timestamp_embeddings
from hear_ced.model import build_model

VARIANT = "mini"
LONG_CLIP_SECONDS = 600.0


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def _probe(kind: str, seconds: float, n_threads: int) -> dict:
    """One call of ``kind`` on a ``seconds``-long clip; run in a fresh process by ``long_clip_memory``."""
    torch.set_num_threads(n_threads)
    embedder = CEDEmbedder(build_model(VARIANT))
    audio = synthetic_audio(1, seconds=seconds, seed=2)
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # reset the peak (VmHWM) to the current resident size
    before = _status_mb("VmRSS")
    start = time.perf_counter()
    (get_scene_embeddings if kind == "scene" else get_timestamp_embeddings)(audio, embedder)
    elapsed = time.perf_counter() - start
    peak = _status_mb("VmHWM")
    return {"kind": kind, "baseline_mb": before, "peak_mb": peak, "rise_mb": peak - before,
            "seconds": elapsed, "audio_s_per_s": seconds / elapsed}  # fmt: skip


def long_clip_memory(kind: str, n_threads: int, seconds: float = LONG_CLIP_SECONDS) -> dict:
    """Peak RSS rise and wall time of one call on a ``seconds``-long clip, in a fresh process."""
    command = [sys.executable, "-m", "bench.embeddings", kind, str(seconds), str(n_threads)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def run(n_threads: int = 2, n_clips: int = 4, clip_seconds: float = 10.0, budget_s: float = 6.0):
    """Throughput of scene and timestamp embeddings, and the 10-minute memory probe."""
    model = calibrated_model(VARIANT)
    embedders = {"fp32": CEDEmbedder(model)}
    if native_bf16():
        embedders["bf16"] = CEDEmbedder(optimize_for_inference(model, "bf16"))
    audio = synthetic_audio(n_clips, seconds=clip_seconds, seed=1)
    fns = {f"{MATMUL_PREFIX}fp32": matmul_fn(torch.float32)}
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
        "matmul_fp32_gflops": reference_gflops(timings)["fp32"],
        "rows": rows,
        "long_clip": [long_clip_memory(kind, n_threads) for kind in ("scene", "timestamp")],
    }


if __name__ == "__main__":
    print(json.dumps(_probe(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]))))
