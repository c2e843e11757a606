"""HEAR embeddings of a long clip: peak memory and speed.

The HEAR API (``hear_ced.hear``) runs on CED-Mini (float32, random weights).
Peak memory of a 10-minute clip is measured in a fresh subprocess per call
kind, as the rise of
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

from hear_ced.fast import synthetic_audio
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


def run(n_threads: int = 2, seconds: float = LONG_CLIP_SECONDS) -> dict:
    """Scene and timestamp embeddings of one ``seconds``-long clip, each in a fresh process."""
    probe = CEDEmbedder(build_model(VARIANT))
    return {
        "model": VARIANT,
        "threads": n_threads,
        "hop_ms": probe.hop_ms,
        "passes": probe.passes,
        "seconds": seconds,
        "long_clip": [long_clip_memory(k, n_threads, seconds) for k in ("scene", "timestamp")],
    }


if __name__ == "__main__":
    print(json.dumps(_probe(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]))))
