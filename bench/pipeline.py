"""Distillation throughput on CPU: student train step and logit extraction.

``bench.gpu`` measures the same steps on a GPU (``make bench-gpu``).

Every augmented input is built with ``hear_ced.distill.views``, as extraction and
training build it.

- Train step: forward on an augmented log-mel batch, BCE with sparse top-K
  targets, backward, optimizer step, through the training engine
  (``hear_ced.distill.engine``, default precision) with ``hear_ced.distill.train.make_optimizer``
  (the recipes' 8-bit Adam where bitsandbytes runs, else torch's Adam).
- Logit extraction: ``teacher_probs`` of a one-teacher ensemble plus top-K,
  per teacher size.
"""

from __future__ import annotations

import logging
import warnings

import torch

from bench.common import calls_per_second, threads
from hear_ced.common.logs import progress_bar
from hear_ced.distill.augment import AugmentConfig
from hear_ced.distill.config import OptimConfig
from hear_ced.distill.engine import Engine, Schedule
from hear_ced.distill.extract import teacher_probs
from hear_ced.distill.teachers import TeacherEnsemble
from hear_ced.distill.train import make_optimizer
from hear_ced.distill.views import augmented_mel
from hear_ced.fast import synthetic_audio
from hear_ced.model import PUBLISHED_SIZES, build_model

log = logging.getLogger(__name__)

TOP_K = 20


def train_rate(variant: str, batch: int, steps: int, device: str = "cpu", **sizes) -> float:
    """Student training samples per second: full steps on augmented log-mel input.

    On CUDA the log-mel and masks are computed inside the step, as in a GPU
    training run (waves on the device, frontend in float32, the transformer
    under the engine's default precision: bf16 autocast). On CPU they are
    computed once outside it, so the step is the model's work alone.
    """
    dev = torch.device(device)
    model = build_model(variant, **sizes).to(dev).train()
    optim = OptimConfig(allow_fallback=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimizer = make_optimizer(model, optim, dev)
    # The recipe's peak rate, constant: the rate does not change the cost of a step.
    engine = Engine(model, optimizer, Schedule(optim.lr, 1, 0, 1.0))
    wave = synthetic_audio(batch, seed=5).to(dev)
    target = torch.zeros(batch, model.config.num_classes, device=dev)
    target[:, :TOP_K] = torch.rand(batch, TOP_K, device=dev)
    seeds = torch.arange(batch, device=dev)
    augment = AugmentConfig()
    cpu_mel = None if dev.type == "cuda" else augmented_mel(model.mel, wave, seeds, augment)

    def step() -> None:
        mel = cpu_mel if cpu_mel is not None else augmented_mel(model.mel, wave, seeds, augment)
        engine.train_step([(mel, target)])

    return batch * calls_per_second(step, steps, dev)


def extraction_rate(variant: str, batch: int, batches: int, device: str = "cpu", **sizes) -> float:
    """Samples per second of teacher probabilities + top-K on raw waves (bf16 on CUDA)."""
    dev = torch.device(device)
    teachers = TeacherEnsemble([build_model(variant, **sizes).to(dev)])
    wave = synthetic_audio(batch, seed=6).to(dev)
    seeds = torch.arange(batch, device=dev)
    augment = AugmentConfig()

    def extract() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            teacher_probs(teachers, wave, seeds, augment).topk(TOP_K)

    return batch * calls_per_second(extract, batches, dev)


def run(
    n_threads: int = 1,
    batch: int = 8,
    students: tuple[str, ...] = ("tiny", "mini"),
    teachers: tuple[str, ...] = PUBLISHED_SIZES,
) -> dict:
    """Both rates, per model size.

    One thread by default, so that other jobs on a small machine disturb the
    figures less.
    """
    out: dict = {"threads": n_threads, "batch": batch, "train": [], "extract": []}
    with threads(n_threads):
        for variant in progress_bar(students, desc="train step", logger=log):
            rate = train_rate(variant, batch, steps=2)
            out["train"].append({"model": variant, "samples_per_s": rate})
        for variant in progress_bar(teachers, desc="extract", logger=log):
            rate = extraction_rate(variant, batch, batches=1 if variant == "base" else 2)
            out["extract"].append({"model": variant, "samples_per_s": rate})
    return out
