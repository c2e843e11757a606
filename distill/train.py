"""Train a CED student from stored teacher probabilities (or from labels).

Read top to bottom: data and targets, model and optimizer, then the run
that ``finetune`` shares (``hear_ced.distill.engine.train_in_folder``) and
the result.

Consistent teaching: the student's input is rebuilt through ``hear_ced.distill.views``,
the functions the teachers' input went through when the logits were stored
(``AugmentedClips`` with the stored per-row seeds, then ``augmented_mel``).
Training epoch ``e`` uses stored epoch ``e % E``, so all E stored epochs are
cycled through.

Determinism: the row order is a function of (seed, epoch), augmentation a
function of the stored seeds, and the resumable state (weights, optimizer,
step, RNG) is saved every epoch (and every N steps if asked), so a run
killed part-way and resumed ends with the same weights as one that was not.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from hear_ced.checkpoints import load_partial, read_tensors
from hear_ced.common.config import to_plain
from hear_ced.common.files import read_json, remove_tree, write_json
from hear_ced.distill.augment import epoch_seeds
from hear_ced.distill.config import ConfigError, OptimConfig, TrainConfig
from hear_ced.distill.data import (
    CLASS_LABELS_NAME,
    AudioStore,
    ClassLabels,
    Row,
    class_labels_for,
    dataset_fingerprint,
    table_targets,
    usable_workers,
)
from hear_ced.distill.distributed import init_distributed
from hear_ced.distill.engine import Loop, RunFolder, Schedule, train_in_folder
from hear_ced.distill.evaluate import evaluate_models, load_eval_set
from hear_ced.distill.logits import LogitStore, LogitStoreMismatch
from hear_ced.distill.views import AugmentedClips, augmented_mel, clip_samples, load_rows
from hear_ced.model import CED

log = logging.getLogger(__name__)

# Settings that may change between a run and its resumption.
_RUNTIME_KEYS = {"num_workers", "progress", "device", "checkpoint_every_steps", "log_every_steps"}
# Separates the row-order random stream from every other use of the seed.
_ORDER_STREAM = 0x5EED


@dataclass(frozen=True)
class TrainResult:
    """What its callers read of a finished run's ``result.json`` (which records more)."""

    final_checkpoint: Path
    steps: int
    metrics: dict | None
    seconds: float


# --------------------------------------------------------------------------
# Schedule and data order: pure functions of (config, step/epoch).


def epoch_order(seed: int, epoch: int, n_rows: int) -> np.ndarray:
    """Random sampling without class balancing: a permutation fixed by (seed, epoch)."""
    return np.random.default_rng([seed, epoch, _ORDER_STREAM]).permutation(n_rows)


def rank_shard(order: np.ndarray, rank: int, world: int) -> np.ndarray:
    """This process's share of an epoch; padded by wrap-around so all ranks step equally."""
    per_rank = math.ceil(len(order) / world)
    padded = np.resize(order, per_rank * world)
    return padded[rank::world]


# --------------------------------------------------------------------------
# Targets: stored teacher probabilities or (mixup-consistent) hard labels.


class LogitTargets:
    """Dense teacher probabilities from a LogitStore (zeros outside the top K)."""

    def __init__(self, store: LogitStore) -> None:
        self.store = store
        self.stored_epochs = store.num_epochs

    def seeds(self, epoch: int) -> np.ndarray:
        return self.store.seeds(epoch % self.stored_epochs)

    def batch(self, epoch: int, batch: dict) -> torch.Tensor:
        # The stored probabilities already belong to the (mixed) input of each seed.
        return self.store.dense_targets(epoch % self.stored_epochs, batch["index"].numpy())


class LabelTargets:
    """Multi-hot labels; a mixed-up row gets the same mixture of its labels."""

    def __init__(
        self,
        rows: list[Row],
        num_classes: int,
        run_seed: int,
        classes: ClassLabels | None = None,
        source: str = "",
    ) -> None:
        where = [f"{source}: {row.filename}" for row in rows]
        self.labels = table_targets([r.labels for r in rows], num_classes, classes, where)
        self.run_seed = run_seed

    def seeds(self, epoch: int) -> np.ndarray:
        return epoch_seeds(self.run_seed, epoch, len(self.labels))

    def batch(self, epoch: int, batch: dict) -> torch.Tensor:
        del epoch
        own = self.labels[batch["index"].numpy()]
        partner = batch["partner"].numpy()
        lam = batch["lam"].numpy().astype(np.float32)[:, None]
        mixed = np.where(partner[:, None] >= 0, self.labels[np.maximum(partner, 0)], own)
        return torch.from_numpy(lam * own + (1.0 - lam) * mixed)


def make_targets(
    cfg: TrainConfig, rows: list[Row], samples: int, classes: ClassLabels | None = None
):
    """The targets of the run; a logit store made for other rows or settings is refused.

    Checked against the store's header: the row list, the augmentation (the
    student's own: teaching is consistent), the class count and the clip
    length. Every mismatch is listed in one error.
    """
    if cfg.targets.kind == "labels":
        return LabelTargets(rows, cfg.model.num_classes, cfg.seed, classes, cfg.data.train_tsv)
    store = LogitStore(cfg.targets.logits_dir)
    header = store.header
    problems = store.mismatches(dataset_fingerprint(rows), augment=cfg.augment)
    if header.num_classes != cfg.model.num_classes:
        problems.append(
            f"the store has {header.num_classes} classes but model.num_classes is "
            f"{cfg.model.num_classes}"
        )
    if header.clip_samples != samples:
        problems.append(
            f"the logits were stored for {header.clip_samples}-sample clips, but "
            f"data.clip_seconds gives {samples}"
        )
    if len(store.complete_epochs()) != header.epochs:
        problems.append(
            f"save-logits has not finished all {header.epochs} epochs "
            "(run it again to complete them)"
        )
    if problems:
        raise LogitStoreMismatch(f"targets.logits_dir {store.path}: " + "; ".join(problems))
    return LogitTargets(store)


# --------------------------------------------------------------------------
# Model, optimizer.


def make_optimizer(
    model: nn.Module, optim: OptimConfig, device: torch.device
) -> torch.optim.Optimizer:
    """The configured Adam or AdamW: bitsandbytes' 8-bit kernel when ``adam_8bit``.

    Without a working bitsandbytes, an 8-bit request fails (the recipe would
    silently change) unless ``optim.allow_fallback`` accepts torch's 32-bit
    optimizer of the same family.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    kwargs = {"lr": optim.lr, "weight_decay": optim.weight_decay}
    fallback = torch.optim.Adam if optim.optimizer == "adam" else torch.optim.AdamW
    if not optim.adam_8bit:
        return fallback(params, **kwargs)
    name = "Adam8bit" if optim.optimizer == "adam" else "AdamW8bit"
    try:
        import bitsandbytes as bnb

        return getattr(bnb.optim, name)(params, **kwargs)
    except (ImportError, RuntimeError, OSError) as err:  # missing library or kernel
        reason = f"{type(err).__name__}: {err}"
    if not optim.allow_fallback:
        raise ConfigError(
            f"optim.adam_8bit asks for bitsandbytes' {name}, which is unavailable on {device} "
            f"({reason}); install bitsandbytes, or set optim.allow_fallback=true to train "
            f"with 32-bit torch.optim.{fallback.__name__}"
        )
    log.warning("%s unavailable (%s); using torch.optim.%s", name, reason, fallback.__name__)
    return fallback(params, **kwargs)


def optimizer_record(optimizer: torch.optim.Optimizer, optim: OptimConfig) -> dict:
    """What ``result.json`` says about the optimizer that actually ran."""
    cls = type(optimizer)
    eight_bit = cls.__module__.startswith("bitsandbytes")
    return {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "eight_bit": eight_bit,
        "fallback": optim.adam_8bit and not eight_bit,
        "lr": optim.lr,
        "weight_decay": optim.weight_decay,
    }


# --------------------------------------------------------------------------
# The training run.


def train(
    cfg: TrainConfig,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
    restart: bool = False,
) -> TrainResult:
    """Train (or resume, or just report a finished run in ``cfg.out_dir``).

    ``on_step(step, loss)`` is called after every optimizer step, with the
    step's loss as a tensor on the device (reading it waits for the device);
    ``restart`` deletes ``cfg.out_dir`` first.
    """
    started = time.perf_counter()
    ctx = init_distributed(cfg.device)
    try:
        if restart and ctx.is_main:
            remove_tree(cfg.out_dir)
        ctx.barrier()
        out = Path(cfg.out_dir)
        folder = RunFolder(
            out,
            to_plain(cfg),
            _RUNTIME_KEYS,
            schedule_key="optim.epochs",
            init_key="model.init",
        )
        finished = out / "result.json"
        if finished.exists():
            folder.claim(ctx, cfg.precision)
            return _result(out)

        # Data: rows (10 s chunks), their targets, the validation set.
        samples = clip_samples(cfg.data.clip_seconds)
        required = ("filename", "hdf5path") + (("labels",) if cfg.targets.kind == "labels" else ())
        rows = load_rows(
            cfg.data.train_tsv, cfg.data.clip_seconds, cfg.data.min_chunk_seconds, required
        )
        if not rows:
            raise ValueError(f"{cfg.data.train_tsv} yields no training rows")
        # The class names: a label file's, else those stored with the logits.
        stored = cfg.targets.kind == "logits"
        classes = class_labels_for(
            cfg.data.labels,
            cfg.data.train_tsv,
            cfg.model.num_classes,
            "data.labels",
            LogitStore(cfg.targets.logits_dir).header.labels if stored else None,
            f"the class names stored in {cfg.targets.logits_dir}",
        )
        names = None if classes is None else list(classes.names)
        targets = make_targets(cfg, rows, samples, classes)
        store = AudioStore()
        eval_set = (
            load_eval_set(cfg.data.eval_tsv, cfg.model.num_classes, classes)
            if cfg.data.eval_tsv
            else None
        )

        # Model and optimizer; identical initial weights on every rank.
        torch.manual_seed(cfg.seed)
        # Every model file the run writes carries the class names: they are part of the config.
        student = CED(dataclasses.replace(cfg.model.ced_config(), labels=names))
        if names is None and ctx.is_main:
            log.warning(
                "no class names for the %d classes (no data.labels, no %s beside %s): "
                "the checkpoints will carry none",
                cfg.model.num_classes,
                CLASS_LABELS_NAME,
                cfg.data.train_tsv,
            )
        if cfg.model.init:
            # MAE-pretrained or any CED: what fits is loaded, the rest reported.
            tensors, _ = read_tensors(Path(cfg.model.init))
            load_partial(
                student,
                tensors,
                source=f"model.init {cfg.model.init}",
                logger=log if ctx.is_main else None,
            )
        student.to(ctx.device)
        optimizer = make_optimizer(student, cfg.optim, ctx.device)

        micro_batch = cfg.optim.batch_size // (ctx.world * cfg.optim.accumulate)
        if micro_batch * ctx.world * cfg.optim.accumulate != cfg.optim.batch_size:
            raise ValueError(
                f"optim.batch_size {cfg.optim.batch_size} does not split into {ctx.world} "
                f"process(es) x optim.accumulate={cfg.optim.accumulate} equal micro-batches"
            )
        num_workers = usable_workers(cfg.num_workers, "num_workers")

        def batches(epoch: int, first: int) -> DataLoader:
            # The student's input for this epoch: the stored seeds drive every augmentation.
            clips = AugmentedClips(rows, store, targets.seeds(epoch), cfg.augment, samples)
            shard = rank_shard(epoch_order(cfg.seed, epoch, len(rows)), ctx.rank, ctx.world)
            return DataLoader(
                clips,
                batch_size=micro_batch,
                sampler=shard[first * micro_batch :].tolist(),
                num_workers=num_workers,
                generator=torch.Generator(),  # leave the global RNG untouched
            )

        def prepare(epoch: int, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
            wave = batch["wave"].to(ctx.device)
            mel = augmented_mel(student.mel, wave, batch["seed"], cfg.augment)
            return mel, targets.batch(epoch, batch).to(ctx.device)

        def score(epoch: int, losses: np.ndarray) -> float:
            del epoch, losses
            return evaluate_models([student], eval_set, cfg.eval.batch_size)["mAP"]

        batches_per_epoch = math.ceil(math.ceil(len(rows) / ctx.world) / micro_batch)
        engine, best, final = train_in_folder(
            folder,
            student,
            optimizer,
            Loop(batches, prepare, batches_per_epoch, cfg.optim.epochs, on_step=on_step),
            lambda total_steps: Schedule.for_run(cfg.optim, total_steps),
            ctx,
            score=None if eval_set is None else score,
            keep=cfg.eval.keep_best,
            every=cfg.eval.every_epochs,
            precision=cfg.precision,
            accumulate=cfg.optim.accumulate,
            clip_grad_norm=cfg.optim.clip_grad_norm,
            checkpoint_every_steps=cfg.checkpoint_every_steps,
            log_every_steps=cfg.log_every_steps,
            progress=cfg.progress,
        )
        seconds = time.perf_counter() - started

        # The final weights (the best k averaged, else the last) and their metrics.
        if ctx.is_main:
            summary = {
                "final_checkpoint": str(out / "final.safetensors"),
                "epochs": engine.epoch,
                "steps": engine.step,
                "world_size": ctx.world,
                "optimizer": optimizer_record(optimizer, cfg.optim),
                "best": best,
                "metrics": (
                    None
                    if eval_set is None
                    else evaluate_models([final], eval_set, cfg.eval.batch_size)
                ),
                "seconds": seconds,
            }
            write_json(finished, summary, sort_keys=True)
        ctx.barrier()
        return _result(out)
    finally:
        ctx.close()


def _result(out: Path) -> TrainResult:
    """The result a finished run recorded in ``out/result.json``."""
    data = read_json(out / "result.json")
    return TrainResult(
        Path(data["final_checkpoint"]), data["steps"], data["metrics"], data["seconds"]
    )
