"""Time the linear probe on a synthetic event task of MAESTRO's size.

MAESTRO 5h in HEAR: 5 folds of 120 s clips, 87 piano-key labels, about
250,000 timestamp embeddings at a 50 ms hop (CED-Mini: 256 dimensions). This
writes such a task in the layout heareval's embedding runner leaves
(``<fold>/<clip>.embedding.npy``, ``.target-labels.json``, ``.timestamps.json``,
``<fold>.json`` reference events) and times :func:`eval.probe.linear_probe` on it:

    python -m bench.probe_scale --out /tmp/probe_scale --threads 2

Embeddings are a noisy linear mix of the active notes' directions, so the
probe has something to find; only the sizes matter for the timing.
"""

from __future__ import annotations

import csv
import json
import logging
import resource
import signal
import time
from pathlib import Path

import click
import numpy as np

from ced_common import logs
from ced_common.files import write_json

# The module's own name also under ``python -m`` (where ``__name__`` is "__main__"),
# so its records follow the "bench" logger that ``logs.configure`` sets up.
log = logging.getLogger(__spec__.name if __spec__ else __name__)

HOP_MS = 50.0
CLIP_FRAMES = 2400  # 120 s at a 50 ms hop


def write_event_embeddings(
    folder: Path,
    frames: int = 250_000,
    labels: int = 87,
    folds: int = 5,
    dim: int = 256,
    notes_per_second: float = 8.0,
    noise: float = 2.0,
    clip_frames: int = CLIP_FRAMES,
    seed: int = 0,
) -> Path:
    """An event task's heareval embedding folder with about ``frames`` timestamps."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"key{k:02d}" for k in range(labels)]
    split_names = [f"fold{f:02d}" for f in range(folds)]
    metadata = {
        "task_name": "synthetic_maestro", "embedding_type": "event",
        "prediction_type": "multilabel", "split_mode": "presplit_kfold",
        "splits": split_names, "sample_duration": clip_frames * HOP_MS / 1000,
        "evaluation": ["event_onset_50ms_fms", "event_onset_offset_50ms_20perc_fms"],
    }  # fmt: skip
    with open(folder / "labelvocabulary.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("idx", "label"), *enumerate(names)])
    directions = rng.standard_normal((labels, dim)).astype(np.float32)
    clips_per_fold = max(1, round(frames / folds / clip_frames))
    seconds = clip_frames * HOP_MS / 1000
    times = np.arange(clip_frames) * HOP_MS
    for split in split_names:
        (folder / split).mkdir(exist_ok=True)
        reference = {}
        for index in range(clips_per_fold):
            name = f"{split}_{index:03d}.wav"
            count = rng.poisson(notes_per_second * seconds)
            starts = rng.uniform(0, seconds - 0.2, count) * 1000
            ends = np.minimum(starts + rng.uniform(100, 1000, count), seconds * 1000)
            keys = rng.integers(0, labels, count)
            active = np.zeros((clip_frames, labels), dtype=np.float32)
            for start, end, key in zip(starts, ends, keys, strict=True):
                active[(times >= start) & (times < end), key] = 1.0
            jitter = noise * rng.standard_normal((clip_frames, dim)).astype(np.float32)
            np.save(folder / split / f"{name}.embedding.npy", active @ directions + jitter)
            frame_labels = [[names[k] for k in np.flatnonzero(row)] for row in active]
            (folder / split / f"{name}.target-labels.json").write_text(json.dumps(frame_labels))
            (folder / split / f"{name}.timestamps.json").write_text(json.dumps(times.tolist()))
            reference[name] = [
                {"label": names[k], "start": round(float(s), 3), "end": round(float(e), 3)}
                for s, e, k in zip(starts, ends, keys, strict=True)
            ]
        (folder / f"{split}.json").write_text(json.dumps(reference))
    # Written last: its presence marks a complete task (``main`` reuses the folder then).
    write_json(folder / "task_metadata.json", metadata, indent=None)
    return folder


class _OutOfTime(Exception):
    pass


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@click.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Task folder.")
@click.option("--frames", default=250_000, show_default=True)
@click.option("--labels", default=87, show_default=True)
@click.option("--folds", default=5, show_default=True)
@click.option("--dim", default=256, show_default=True)
@click.option("--threads", default=2, show_default=True, help="torch and BLAS threads.")
@click.option(
    "--timeout", default=0, show_default=True, help="Give up after this many s (0: never)."
)
def main(out, frames, labels, folds, dim, threads, timeout) -> None:
    """Write the task (unless present) and time the linear probe on it."""
    import torch
    from threadpoolctl import threadpool_limits

    from eval.probe import linear_probe

    logs.configure()
    folder = Path(out)
    if not (folder / "task_metadata.json").exists():
        start = time.perf_counter()
        write_event_embeddings(folder, frames, labels, folds, dim)
        log.info("wrote %s in %.0f s", folder, time.perf_counter() - start)
    torch.set_num_threads(threads)

    def give_up(*_):
        raise _OutOfTime

    signal.signal(signal.SIGALRM, give_up)
    signal.alarm(timeout)
    start, cpu = time.perf_counter(), _cpu_seconds()
    try:
        with threadpool_limits(threads):
            result = linear_probe(folder)
    except _OutOfTime:
        click.echo(json.dumps({"finished": False, "wall_s": round(time.perf_counter() - start)}))
        return
    finally:
        signal.alarm(0)
    record = {
        "finished": True, "threads": threads, "wall_s": round(time.perf_counter() - start, 1),
        "cpu_s": round(_cpu_seconds() - cpu, 1),  # all threads; steadier than wall on a busy machine
    }  # fmt: skip
    click.echo(json.dumps({**record, **result}))


if __name__ == "__main__":
    main()
