"""The one training loop of ``distill``: ``train``, ``finetune`` and the ablation all step through it.

The caller supplies its data as a :class:`Loop`: the batches of an epoch
(from a given micro-batch on), ``prepare`` (a batch to the model's input and
the target, outside autocast) and its selection rules as hooks. The loss is
CED's: binary cross-entropy of the float32 logits against targets in [0, 1]
(labels or teacher probabilities). The :class:`Engine` owns what lies between:
the learning-rate :class:`Schedule`, precision (bf16 autocast, float32
master weights), gradient accumulation and clipping, the optimizer step,
resumable state, and throughput records. So a fix to any of these is made
once.

Nothing reads the loss back to the host per step: step losses stay on the
device and are read where a record is written (every ``log_every_steps``
steps and at the end of each epoch), so a GPU is never stalled for a number
no one looks at.

Resumable state (``save_state``: ``torch.save``, read back ``weights_only``) holds the weights, the optimizer, epoch and step, every RNG the loop
uses (torch's CPU and CUDA generators, and whatever the caller adds through
``Loop.state``). What a resume must share with the run it continues is the
run folder's record, claimed by :meth:`RunFolder.claim` for every command
that trains, with the engine's own part, :func:`engine_identity`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hear_ced.common.files import claim_folder
from hear_ced.common.logs import Progress, progress_bar
from hear_ced.distill.checkpointing import BestCheckpoints, load_state, save_state
from hear_ced.distill.config import OptimConfig, Precision
from hear_ced.distill.distributed import Context
from hear_ced.model import CED

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------
# The learning-rate schedule: a value.


@dataclass(frozen=True)
class Schedule:
    """Linear warmup to ``peak``, then cosine to ``peak * min_lr_ratio`` at the last step.

    ``lr(step)`` is a pure function of the 0-based optimizer step. A
    parameter group's ``lr_scale`` entry (default 1) multiplies it, so a new
    head can learn faster than a pretrained body on the same schedule.
    """

    peak: float
    total_steps: int
    warmup_steps: int
    min_lr_ratio: float = 0.1

    @classmethod
    def for_run(cls, optim: OptimConfig, total_steps: int) -> Schedule:
        """The configured schedule; a warmup as long as the run or longer is cut to 10 % of it.

        Adjusted with a warning rather than refused: the recipes' warmups are
        sized for full-length runs, and a shortened trial (``--set
        optim.epochs=3``) should still reach its peak learning rate.
        """
        warmup = optim.warmup_steps
        if warmup >= total_steps:
            warmup = max(1, total_steps // 10)
            log.warning(
                "optim.warmup_steps=%d is not shorter than the run's %d steps; using %d",
                optim.warmup_steps,
                total_steps,
                warmup,
            )
        return cls(optim.lr, total_steps, warmup, optim.min_lr_ratio)

    def lr(self, step: int) -> float:
        peak = self.peak
        if step < self.warmup_steps:
            return peak * (step + 1) / self.warmup_steps
        # The last update (step total_steps - 1) runs at exactly the floor.
        decay_steps = max(1, self.total_steps - 1 - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        floor = peak * self.min_lr_ratio
        return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every parameter group's rate for ``step``; returns the unscaled rate."""
        rate = self.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = rate * group.get("lr_scale", 1.0)
        return rate


def optimizer_steps(batches: int, accumulate: int) -> int:
    """Optimizer steps of an epoch of ``batches`` micro-batches, ``accumulate`` per step."""
    return math.ceil(batches / accumulate)


# --------------------------------------------------------------------------
# Settings and the caller's part.


def autocast_dtype(precision: Precision, device: torch.device) -> torch.dtype:
    """The dtype the forward runs in; master weights and the loss stay float32."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return torch.float32


def engine_identity(precision: Precision, device: torch.device, world: int = 1) -> dict:
    """The engine's part of a run's record: what a resume must share beyond the settings.

    ``auto`` precision resolves by device, and each process's share of an
    epoch follows from the number of processes, so a state continues
    faithfully only under the same dtype and as many processes as wrote it.
    """
    dtype = autocast_dtype(precision, device)
    return {"precision": str(dtype).removeprefix("torch."), "world_size": world}


@dataclass(frozen=True)
class Loop:
    """What a caller supplies: its data and its selection rules.

    ``batches(epoch, first)`` iterates the epoch's micro-batches from the
    ``first``-th on (non-zero only when resuming mid-epoch); ``prepare(epoch,
    batch)`` gives (model input, target) on the device. ``on_epoch_end(epochs_done,
    step_losses)`` runs after each epoch, before its state is written (the
    place for validation and checkpoint selection); ``on_step(step, loss)``
    after each step, with the step's loss still on the device. ``state()``
    adds the caller's resumable values (its RNG, its selection bookkeeping)
    to every state written; :func:`train_in_folder` hands them back to
    ``restore`` when it resumes.
    """

    batches: Callable[[int, int], Iterable[Any]]
    prepare: Callable[[int, Any], tuple[torch.Tensor, torch.Tensor]]
    batches_per_epoch: int
    epochs: int
    on_epoch_start: Callable[[int], None] | None = None
    on_epoch_end: Callable[[int, np.ndarray], None] | None = None
    on_step: Callable[[int, torch.Tensor], None] | None = None
    state: Callable[[], dict] | None = None
    restore: Callable[[dict], None] | None = None


# --------------------------------------------------------------------------
# Throughput.


class _Window:
    """Clips, step losses and data-wait time since the window opened.

    The wait is read off a running total (``Engine.waited``), so windows of
    different spans (since the last record, since the epoch began) share it.
    """

    def __init__(self, waited: float) -> None:
        self.started = time.perf_counter()
        self.waited_before = waited
        self.clips = 0
        self.losses: list[torch.Tensor] = []

    def record(self, waited: float) -> dict:
        seconds = max(time.perf_counter() - self.started, 1e-9)
        return {
            "clips_per_s": self.clips / seconds,
            "data_wait_share": min(1.0, (waited - self.waited_before) / seconds),
            "steps": len(self.losses),
        }


# --------------------------------------------------------------------------
# The engine.


class _MelToLogits(nn.Module):
    """A model's ``forward_mel`` as a module's ``forward``, which DistributedDataParallel syncs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.model.forward_mel(mel)


class Engine:
    """Steps ``optimizer`` over ``model`` through a caller's :class:`Loop`.

    ``precision``, ``clip_grad_norm`` (the largest total 2-norm; 0: none)
    and ``accumulate`` (micro-batches per step, each weighted by its share of
    the step's clips) shape the run's numbers; the commands' configs check
    them. Besides every epoch, the state is written every
    ``checkpoint_every_steps`` and a throughput record every
    ``log_every_steps`` (0: per epoch only). ``forward`` is what the input
    goes through (the model itself, a bound ``forward_mel``, or a
    DistributedDataParallel wrapper, whose gradient sync then runs once per
    step). Only the main process of ``ctx`` writes the state at
    ``state_path``; every process steps. Throughput records go out at
    ``log_level``.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: Schedule,
        ctx: Context | None = None,
        *,
        precision: Precision = "auto",
        clip_grad_norm: float = 0.0,
        accumulate: int = 1,
        checkpoint_every_steps: int = 0,
        log_every_steps: int = 0,
        state_path: Path | None = None,
        progress: bool = False,
        desc: str = "train",
        log_level: int = logging.INFO,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.schedule = schedule
        self.ctx = ctx or Context(0, 1, next(model.parameters()).device)
        self.clip_grad_norm = clip_grad_norm
        self.accumulate = accumulate
        self.checkpoint_every_steps = checkpoint_every_steps
        self.log_every_steps = log_every_steps
        self.forward: nn.Module = _MelToLogits(model)
        if self.ctx.world > 1:
            self.forward = nn.parallel.DistributedDataParallel(self.forward)
        self.bf16 = autocast_dtype(precision, self.ctx.device) == torch.bfloat16
        self.state_path = state_path
        self.progress = progress
        self.desc = desc
        self.log_level = log_level
        self.epoch = 0
        self.step = 0
        # Seconds spent waiting for the caller's batches, in total.
        self.waited = 0.0

    # ---- precision, one step ------------------------------------------------

    def _grad_sync(self, last: bool) -> contextlib.AbstractContextManager:
        """DDP syncs gradients on the last micro-batch of a step only."""
        no_sync = getattr(self.forward, "no_sync", None)
        return contextlib.nullcontext() if last or no_sync is None else no_sync()

    def train_step(self, micro_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """One optimizer step over prepared (input, target) micro-batches; the loss, on the device.

        With several micro-batches each loss is weighted by its share of the
        step's clips, so their summed gradients equal those of one batch of
        all of them (up to float rounding); a single batch is not rescaled.
        """
        self.schedule.apply(self.optimizer, self.step)
        self.optimizer.zero_grad(set_to_none=True)
        clips = sum(inputs.shape[0] for inputs, _ in micro_batches)
        parts = []
        for index, (inputs, target) in enumerate(micro_batches):
            with self._grad_sync(index == len(micro_batches) - 1):
                with torch.autocast(self.ctx.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                    output = self.forward(inputs)
                loss = F.binary_cross_entropy_with_logits(output.float(), target)
                if len(micro_batches) > 1:
                    loss = loss * (inputs.shape[0] / clips)
                loss.backward()
            parts.append(loss.detach())
        if self.clip_grad_norm:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
        self.optimizer.step()
        self.step += 1
        return parts[0] if len(parts) == 1 else torch.stack(parts).sum()

    # ---- the loop -----------------------------------------------------------

    def run(self, loop: Loop) -> None:
        """Train from the current epoch and step to the end of ``loop.epochs``."""
        per_epoch = optimizer_steps(loop.batches_per_epoch, self.accumulate)
        bar = progress_bar(
            total=per_epoch * loop.epochs,
            initial=self.step,
            desc=self.desc,
            logger=log,
            disable=not (self.progress and self.ctx.is_main),
            unit="step",
        )
        try:
            while self.epoch < loop.epochs:
                self.model.train()
                if loop.on_epoch_start is not None:
                    loop.on_epoch_start(self.epoch)
                done = self.step - self.epoch * per_epoch
                losses = self._epoch(loop, done * self.accumulate, bar, per_epoch)
                self.epoch += 1
                if loop.on_epoch_end is not None:
                    loop.on_epoch_end(self.epoch, losses)
                if self.ctx.is_main and self.state_path is not None:
                    self.save(loop)
                self.ctx.barrier()
        finally:
            bar.close()

    def _groups(self, loop: Loop, first: int) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
        """The epoch's prepared micro-batches, ``accumulate`` at a time; times the data wait."""
        batches = iter(loop.batches(self.epoch, first))
        while True:
            group = []
            for _ in range(self.accumulate):
                started = time.perf_counter()
                batch = next(batches, None)
                self.waited += time.perf_counter() - started
                if batch is None:
                    break
                group.append(loop.prepare(self.epoch, batch))
            if not group:
                return
            yield group

    def _epoch(self, loop: Loop, first: int, bar: Progress, per_epoch: int) -> np.ndarray:
        """One epoch's steps; returns their losses (float64, read once at its end).

        A step record that would fall on the epoch's last step is left to the
        epoch's own record, so the two do not repeat each other.
        """
        last_step = (self.epoch + 1) * per_epoch
        epoch_window, window = _Window(self.waited), _Window(self.waited)
        every_log = self.log_every_steps
        every_save = self.checkpoint_every_steps
        for group in self._groups(loop, first):
            loss = self.train_step(group)
            for meter in (window, epoch_window):
                meter.clips += sum(inputs.shape[0] for inputs, _ in group)
                meter.losses.append(loss)
            if every_save and self.step % every_save == 0 and self.ctx.is_main:
                self.save(loop)
            if loop.on_step is not None:
                loop.on_step(self.step, loss)
            if every_log and self.step % every_log == 0 and self.step != last_step:
                self._report(window, bar, "step")
                window = _Window(self.waited)
        if window.losses:
            bar.update(len(window.losses))
        losses = self._losses(epoch_window.losses)
        self._report(epoch_window, bar, "epoch", losses)
        return losses

    @staticmethod
    def _losses(losses: list[torch.Tensor]) -> np.ndarray:
        if not losses:
            return np.zeros(0)
        return torch.stack(losses).double().cpu().numpy()

    def _report(
        self, window: _Window, bar: Progress, kind: str, losses: np.ndarray | None = None
    ) -> None:
        """A throughput record (clips/s, data-wait share, mean loss); the bar follows it."""
        if not self.ctx.is_main or not window.losses:
            return
        if losses is None:
            losses = self._losses(window.losses)
            bar.update(len(window.losses))
        figures = window.record(self.waited) | {"loss": float(np.mean(losses)), "kind": kind}
        lr = self.schedule.lr(max(self.step - 1, 0))
        bar.set_postfix(
            epoch=self.epoch + 1, loss=f"{figures['loss']:.4f}", lr=f"{lr:.2e}", refresh=False
        )
        log.log(
            self.log_level,
            "%s epoch %d%s, step %d: %.1f clips/s, %.0f %% of the time waiting for data, loss %.4f",
            self.desc,
            self.epoch + 1,
            " done" if kind == "epoch" else "",
            self.step,
            figures["clips_per_s"],
            100 * figures["data_wait_share"],
            figures["loss"],
            extra={"throughput": figures},
        )

    # ---- resumable state -----------------------------------------------------

    def save(self, loop: Loop | None = None) -> None:
        """Write the resumable state to ``state_path`` (atomically)."""
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "progress": {"epoch": self.epoch, "step": self.step},
            "rng": rng,
            "caller": loop.state() if loop is not None and loop.state is not None else {},
        }
        save_state(self.state_path, state)

    def restore(self, state: dict) -> dict:
        """Continue from ``state`` (as ``save`` wrote it); returns the caller's part of it.

        The run folder's claim has already checked that this run continues it.
        """
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.epoch, self.step = state["progress"]["epoch"], state["progress"]["step"]
        return state["caller"]


# --------------------------------------------------------------------------
# A command's run in its folder.


@dataclass(frozen=True)
class RunFolder:
    """A command's run folder and the ``settings`` it is tied to, in ``out/config.json``.

    The ``runtime`` settings may change on resume. A longer schedule
    (``schedule_key``) is another run, since the learning rate spans the
    whole run: the refusal says to start it from the final weights through
    ``init_key``. ``spell`` names a setting as its user gives it.
    """

    out: Path
    settings: dict
    runtime: Collection[str]
    schedule_key: str
    init_key: str
    spell: Callable[[str], str] = str

    def claim(self, ctx: Context, precision: Precision) -> None:
        spell, out_dir = self.spell, self.spell("out_dir")
        claim_folder(
            self.out,
            self.settings | {"engine": engine_identity(precision, ctx.device, ctx.world)},
            "config.json",
            compared=lambda stored: {k: v for k, v in stored.items() if k not in self.runtime},
            spell=lambda key: key if key.startswith("engine.") else spell(key),
            hints={
                self.schedule_key: "the learning-rate schedule spans the whole run, so a "
                f"longer schedule is another run: start it with "
                f"{spell(self.init_key)}={self.out / 'final.safetensors'} and a new {out_dir}"
            },
            advice=f"use another {out_dir}, or --restart to delete it and start over",
        )


def train_in_folder(
    folder: RunFolder,
    model: CED,
    optimizer: torch.optim.Optimizer,
    loop: Loop,
    schedule: Callable[[int], Schedule],
    ctx: Context,
    *,
    score: Callable[[int, np.ndarray], float] | None = None,
    metric: str = "mAP",
    keep: int = 1,
    every: int = 1,
    precision: Precision = "auto",
    accumulate: int = 1,
    **engine_options: Any,
) -> tuple[Engine, list[dict], CED | None]:
    """The run ``train`` and ``finetune`` share: claim, resume, train, select, final weights.

    ``schedule(total_steps)`` is the run's schedule. The state goes to
    ``last.pt`` in the folder, a stopped run continues from it.
    ``score(epoch, step_losses)`` rates the model on the main process after
    every ``every``-th epoch and the last; the best ``keep`` by ``metric``
    stay in ``best/`` and their average (else the last weights) becomes
    ``final.safetensors``. Returns the engine, the kept epochs and, on the
    main process, the final model.
    """
    out = folder.out
    total_steps = optimizer_steps(loop.batches_per_epoch, accumulate) * loop.epochs
    engine = Engine(
        model,
        optimizer,
        schedule(total_steps),
        ctx,
        precision=precision,
        accumulate=accumulate,
        state_path=out / "last.pt",
        **engine_options,
    )
    folder.claim(ctx, precision)
    if engine.state_path.exists():
        caller = engine.restore(load_state(engine.state_path))
        if engine.epoch >= loop.epochs:
            log.info("%s finished all %d epochs: nothing to train", out, loop.epochs)
        else:
            log.info("resuming %s after epoch %d", out, engine.epoch)
        if loop.restore is not None:
            loop.restore(caller)
    best = BestCheckpoints(out / "best", keep, metric)

    def validate(epoch: int, losses: np.ndarray) -> None:
        if score is None or not ctx.is_main or (epoch % every and epoch != loop.epochs):
            return
        value = score(epoch, losses)
        log.info("epoch %d: validation %s %.4f", epoch, metric, value)
        best.offer(model, epoch, value)

    engine.run(dataclasses.replace(loop, on_epoch_end=validate))
    final = (
        best.final(model, out / "final.safetensors").to(ctx.device).eval() if ctx.is_main else None
    )
    return engine, best.entries, final
