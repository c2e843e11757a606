"""``make bench-gpu``: training, save-logits and HEAR throughput on one GPU.

On a CUDA machine (sized for at most 8 minutes; not yet timed on one): training clips/s of CED tiny,
mini and base (the training step of ``hear_ced.distill.train``: mel frontend and
SpecAugment on the device, bf16 autocast, BCE with logits on sparse top-K
targets, the project's optimizer; ``bench.pipeline.train_rate``),
save-logits clips/s of base-sized teachers (``hear_ced.distill.extract.teacher_probs``
plus top-K), HEAR scene + timestamp embeddings of 10 s clips, each with its
peak GPU memory. A batch that runs out of memory is halved (and the halving
recorded); a size that does not fit at batch 1 is an error. Without CUDA it
measures nothing; ``make bench`` measures the same steps on the CPU (``bench.pipeline``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import click
import torch

from bench.common import calls_per_second
from bench.pipeline import extraction_rate, train_rate
from bench.run import measure, output_options
from hear_ced.common import logs
from hear_ced.fast import synthetic_audio
from hear_ced.hear import CEDEmbedder, get_scene_embeddings, get_timestamp_embeddings
from hear_ced.model import build_model

log = logging.getLogger(__spec__.name if __spec__ else __name__)


@dataclass(frozen=True)
class Plan:
    """What one run measures; ``GPU_PLAN`` is sized for at most 8 minutes on one GPU (not yet timed)."""

    students: tuple[str, ...]
    teachers: tuple[str, ...]
    hear_models: tuple[str, ...]
    batch: int
    steps: int
    hear_batch: int


GPU_PLAN = Plan(
    students=("tiny", "mini", "base"),
    teachers=("base",),
    hear_models=("tiny", "mini", "base"),
    batch=128,
    steps=20,
    hear_batch=32,
)


def fitting(name: str, measure: Callable[[int], float], start: int, device: torch.device) -> dict:
    """Clips/s of ``measure(batch)`` from batch ``start``, halved on out-of-memory."""
    batch = start
    while True:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        try:
            rate = measure(batch)
        except torch.OutOfMemoryError:
            if batch == 1:
                raise click.ClickException(
                    f"{name} does not fit in memory even at batch 1"
                ) from None
            log.warning("%s: out of memory at batch %d, halving it", name, batch)
            batch //= 2
            continue
        row = {"model": name, "batch": batch, "clips_per_s": rate}
        if device.type == "cuda":
            row["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        if batch != start:
            row["halved_from"] = start
        return row


def hear_rate(variant: str, batch: int, calls: int, device: torch.device) -> float:
    """Clips/s of HEAR scene + timestamp embeddings (float32, as published) of 10 s clips."""
    embedder = CEDEmbedder(build_model(variant).to(device).eval())
    audio = synthetic_audio(batch, seed=8).to(device)

    def embed() -> None:
        get_scene_embeddings(audio, embedder)
        get_timestamp_embeddings(audio, embedder)

    return batch * calls_per_second(embed, calls, device)


def run(plan: Plan = GPU_PLAN, device: str = "cuda") -> dict:
    """Every figure of ``plan`` on ``device`` (peak memory on CUDA only)."""
    device = torch.device(device)
    out: dict = {
        "plan": asdict(plan),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
    }
    steps, batch = plan.steps, plan.batch
    out["train"] = [
        fitting(v, lambda b, v=v: train_rate(v, b, steps, device.type), batch, device)
        for v in plan.students
    ]
    out["save_logits"] = [
        fitting(v, lambda b, v=v: extraction_rate(v, b, steps, device.type), batch, device)
        for v in plan.teachers
    ]
    out["hear"] = [
        fitting(v, lambda b, v=v: hear_rate(v, b, steps, device), plan.hear_batch, device)
        for v in plan.hear_models
    ]
    return out


@click.command()
@output_options
@click.option(
    "--batch", type=click.IntRange(min=1), default=None, help="Batch to start from (halved on OOM)."
)
def main(out_dir: str, report: str, batch: int | None) -> None:
    """Measure GPU training, save-logits and HEAR throughput."""
    logs.configure()
    if not torch.cuda.is_available():
        raise click.ClickException("no CUDA device: make bench-gpu measures a GPU")
    plan = replace(GPU_PLAN, batch=batch) if batch else GPU_PLAN
    measure(out_dir, report, {"gpu_bench": lambda: run(plan)})


if __name__ == "__main__":
    main()
