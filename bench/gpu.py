"""``make bench-gpu``: training, save-logits and HEAR throughput on one GPU, and the CPU data path.

On a CUDA machine (sized for at most 8 minutes; not yet timed on one): training clips/s of CED tiny,
mini and base (the training step of ``distill.train``: mel frontend and
SpecAugment on the device, bf16 autocast, BCE with logits on sparse top-K
targets, the project's optimizer; ``bench.pipeline.train_rate``),
save-logits clips/s of base-sized teachers (``distill.extract.teacher_probs``
plus top-K), HEAR scene + timestamp embeddings of 10 s clips, each with its
peak GPU memory. A batch that runs out of memory is halved (and the halving
recorded); a size that does not fit at batch 1 is an error.

Without CUDA the same code runs as a smoke run on the CPU (tiny models, a few
steps, batch 2): its figures check the code paths and are labelled smoke, never
reported as benchmarks.

Either way the CPU data path is measured per worker: HDF5 reads through
``distill.data.AudioStore`` with seeded shift and mixup (``AugmentedClips``),
and the workers needed to feed ``FEED_TARGET`` clips/s computed from it.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import torch

from bench.common import calls_per_second, machine_description, threads
from bench.models import synthetic_audio
from bench.pipeline import CLIP_SAMPLES, data_path_rate, extraction_rate, train_rate, write_shard
from bench.report import output_options, read_results, record
from ced_common import logs
from hear_ced.hear import CEDEmbedder, get_scene_embeddings, get_timestamp_embeddings
from hear_ced.model import build_model

log = logging.getLogger(__spec__.name if __spec__ else __name__)

# Clips/s the data path must feed (a GPU training CED-Base at about this rate).
FEED_TARGET = 2000
CLIP_BYTES = CLIP_SAMPLES * 4  # one float32 10 s clip


class DoesNotFit(RuntimeError):
    """A size does not fit in the device's memory even at batch 1."""


@dataclass(frozen=True)
class Plan:
    """What one run measures; ``GPU_PLAN`` is sized for at most 8 minutes on one GPU (not yet timed)."""

    students: tuple[str, ...]
    teachers: tuple[str, ...]
    hear_models: tuple[str, ...]
    batch: int
    steps: int
    hear_batch: int
    data_clips: int
    smoke: bool
    # Memory cap in MiB (0: none): a real cap on CUDA
    # (``set_per_process_memory_fraction``); in a CPU smoke run a batch whose
    # input waves exceed it is refused as out of memory, to exercise halving.
    memory_cap_mb: float = 0.0


GPU_PLAN = Plan(
    students=("tiny", "mini", "base"),
    teachers=("base",),
    hear_models=("tiny", "mini", "base"),
    batch=128,
    steps=20,
    hear_batch=32,
    data_clips=256,
    smoke=False,
)
SMOKE_PLAN = Plan(
    students=("tiny",),
    teachers=("tiny",),
    hear_models=("tiny",),
    batch=2,
    steps=2,
    hear_batch=2,
    data_clips=128,
    smoke=True,
)


def _peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory since the last reset; on CPU the process's peak resident size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _check_cap(batch: int, plan: Plan, device: torch.device) -> None:
    if (
        device.type != "cuda"
        and plan.memory_cap_mb
        and batch * CLIP_BYTES > plan.memory_cap_mb * 2**20
    ):
        raise torch.OutOfMemoryError(
            f"batch {batch} of 10 s clips exceeds the {plan.memory_cap_mb} MiB cap"
        )


def fitting(name: str, measure: Callable[[int], float], plan: Plan, device: torch.device) -> dict:
    """Clips/s of ``measure(batch)`` at the plan's batch, halved on out-of-memory."""
    batch = plan.batch
    while True:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        try:
            _check_cap(batch, plan, device)
            rate = measure(batch)
        except torch.OutOfMemoryError:
            if batch == 1:
                raise DoesNotFit(f"{name} does not fit in memory even at batch 1") from None
            log.warning("%s: out of memory at batch %d, halving it", name, batch)
            batch //= 2
            continue
        row = {"model": name, "batch": batch, "clips_per_s": rate}
        row["peak_memory_mb"] = _peak_memory_mb(device)
        if batch != plan.batch:
            row["halved_from"] = plan.batch
        return row


def hear_rate(variant: str, batch: int, calls: int, device: torch.device) -> float:
    """Clips/s of HEAR scene + timestamp embeddings (float32, as published) of 10 s clips."""
    embedder = CEDEmbedder(build_model(variant).to(device).eval())
    audio = synthetic_audio(batch, seed=8).to(device)

    def embed() -> None:
        get_scene_embeddings(audio, embedder)
        get_timestamp_embeddings(audio, embedder)

    return batch * calls_per_second(embed, calls, device)


def data_path_per_worker(n_clips: int) -> dict:
    """Clips/s of one worker's part of the data path, and workers for ``FEED_TARGET``.

    One process (no loader workers) reads rows of a synthetic int16 HDF5
    shard and applies the seeded shift and mixup, as a loader worker does; the
    log-mel and masks run on the GPU and are not part of it. The clips come in
    eight batches, the first (which opens the file) untimed.
    """
    batch = max(1, n_clips // 8)
    with tempfile.TemporaryDirectory() as tmp, threads(1):
        rows = write_shard(Path(tmp) / "shard.h5", n_clips)
        load = os.getloadavg()
        rate = data_path_rate(rows, batch, workers=0, batches=n_clips // batch - 1, mel=False)
    return {
        "clips": n_clips,
        "clips_per_s_per_worker": rate,
        "feed_target_clips_per_s": FEED_TARGET,
        "workers_for_target": math.ceil(FEED_TARGET / rate),
        "load_average": list(load),
    }


def run(plan: Plan | None = None, device: str | None = None) -> dict:
    """Every figure of ``plan`` on ``device`` (default: CUDA and ``GPU_PLAN`` when present,
    else the CPU and ``SMOKE_PLAN``)."""
    cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
    plan = plan or (GPU_PLAN if cuda else SMOKE_PLAN)
    device = torch.device("cuda" if cuda else "cpu")
    if cuda and plan.memory_cap_mb:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, plan.memory_cap_mb * 2**20 / total))
    started = time.perf_counter()
    out: dict = {
        "smoke": plan.smoke,
        "plan": asdict(plan),
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "torch": torch.__version__,
        "peak_memory_kind": "torch.cuda.max_memory_allocated" if cuda else "process peak RSS",
    }
    with threads(torch.get_num_threads() if cuda else 1):
        out["train"] = [
            fitting(v, lambda b, v=v: train_rate(v, b, plan.steps, device.type), plan, device)
            for v in plan.students
        ]
        out["save_logits"] = [
            fitting(v, lambda b, v=v: extraction_rate(v, b, plan.steps, device.type), plan, device)
            for v in plan.teachers
        ]
        hear_plan = Plan(**{**asdict(plan), "batch": plan.hear_batch})
        out["hear"] = [
            fitting(v, lambda b, v=v: hear_rate(v, b, plan.steps, device), hear_plan, device)
            for v in plan.hear_models
        ]
    out["data_path"] = data_path_per_worker(plan.data_clips)
    out["seconds"] = time.perf_counter() - started
    return out


@click.command()
@output_options
@click.option(
    "--batch", type=click.IntRange(min=1), default=None, help="Batch to start from (halved on OOM)."
)
@click.option(
    "--memory-cap-mb",
    type=click.FloatRange(min=0),
    default=0.0,
    help="Cap the memory a batch may use (CPU smoke runs: the input waves).",
)
def main(out_dir: str, report: str, batch: int | None, memory_cap_mb: float) -> None:
    """Measure GPU training, save-logits and HEAR throughput (a CPU smoke run without CUDA)."""
    logs.configure()
    plan = GPU_PLAN if torch.cuda.is_available() else SMOKE_PLAN
    changes = {"memory_cap_mb": memory_cap_mb} | ({"batch": batch} if batch else {})
    plan = Plan(**{**asdict(plan), **changes})
    results_path, results = read_results(out_dir)
    results.setdefault("machine", machine_description())
    try:
        results["gpu_bench"] = run(plan)
    except DoesNotFit as error:
        raise click.ClickException(str(error)) from None
    record(results, "gpu_bench", results_path, Path(report))
    click.echo(f"wrote {results_path} and {report}")


if __name__ == "__main__":
    main()
