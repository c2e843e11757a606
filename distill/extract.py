"""save-logits and verify-logits: teacher top-K probabilities under seeded augmentation.

Per epoch and row: seed from ``epoch_seeds``, wave-level augmentation
(consistent mixup, shift), log-mel, masks, ensemble mean sigmoid, top-K.
Under torchrun each rank takes rows rank, rank + W, ... and writes its own
epoch files; an interrupted run picks up at the first unwritten block.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hear_ced.common.config import checked, from_dict, non_negative, positive, to_plain
from hear_ced.common.files import file_sha256, remove_tree
from hear_ced.common.logs import Progress, progress_bar
from hear_ced.distill.augment import AugmentConfig, check_time_mask, epoch_seeds
from hear_ced.distill.data import AudioStore, class_labels_for, dataset_fingerprint, usable_workers
from hear_ced.distill.distributed import init_distributed
from hear_ced.distill.logits import EpochWriter, LogitHeader, LogitStore, open_for_writing
from hear_ced.distill.teachers import TeacherEnsemble
from hear_ced.distill.views import AugmentedClips, augmented_mel, clip_samples, load_rows

log = logging.getLogger(__name__)

# Rows recomputed per batch by verify-logits (on the CPU, within the stored values' tolerance).
VERIFY_BATCH = 16


@dataclass
class SaveLogitsConfig:
    """Settings of a save-logits run; the data-affecting ones go into the logits header."""

    teachers: list[str]
    train_tsv: str
    out_dir: str
    k: int = 20
    epochs: int = 10
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    batch_size: int = 32
    run_seed: int = 0
    clip_seconds: float = 10.0
    min_chunk_seconds: float = 1.0
    num_workers: int = 0
    block_rows: int = 1024
    device: str = "cpu"
    # Class names for the header (a label CSV/TSV); unset: the corpus's label
    # file beside train_tsv, AudioSet's for 527 classes, else the teachers' own.
    labels: str | None = None

    def __post_init__(self) -> None:
        checked(self)

    def validate(self) -> None:
        positive(self, "k", "epochs", "batch_size", "block_rows", "clip_seconds")
        non_negative(self, "num_workers", "min_chunk_seconds")
        check_time_mask(
            self.augment,
            self.clip_seconds,
            "augment.time_mask_width (--time-mask-width)",
            "clip_seconds, --seconds",
        )


@dataclass(frozen=True)
class SaveLogitsResult:
    """How many rows the store holds, how many this run computed, and their size on disk."""

    n_rows: int
    epochs: int
    computed_rows: int
    epoch_bytes: int
    total_bytes: int

    @property
    def bytes_per_sample_epoch(self) -> float:
        """Epoch files only (the header is stored once)."""
        return self.epoch_bytes / (self.n_rows * self.epochs)


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of ``verify_logits``: ``ok`` is False on any mismatch."""

    ok: bool
    checked: int
    mismatches: list[str]
    max_value_error: float

    def summary(self) -> str:
        status = "OK" if self.ok else f"FAILED ({len(self.mismatches)} mismatches)"
        return f"verified {self.checked} stored rows: {status}; max |value error| {self.max_value_error:.2e}"


@torch.no_grad()
def teacher_probs(
    teachers: TeacherEnsemble, wave: torch.Tensor, seeds: torch.Tensor, augment: AugmentConfig
) -> torch.Tensor:
    """Ensemble probabilities of wave-augmented clips after the seeded masks."""
    return teachers.probs(augmented_mel(teachers.mel, wave, seeds, augment))


def _run_blocks(
    writer: EpochWriter,
    dataset: AugmentedClips,
    teachers: TeacherEnsemble,
    cfg: SaveLogitsConfig,
    bar: Progress,
) -> int:
    """Compute and store every missing block of one epoch file; returns rows computed."""
    missing = writer.missing_blocks()
    if not missing:
        return 0
    order = np.concatenate([writer.block_rows(b) for b in missing])
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=order.tolist(),
        num_workers=cfg.num_workers,
    )
    buffered: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    pending = list(missing)
    for batch in loader:
        probs = teacher_probs(teachers, batch["wave"], batch["seed"], cfg.augment)
        values, indexes = probs.topk(cfg.k, dim=-1)
        buffered.append((values.cpu().numpy(), indexes.cpu().numpy(), batch["seed"].numpy()))
        bar.update(len(batch["seed"]))
        while pending and sum(len(b[2]) for b in buffered) >= len(writer.block_rows(pending[0])):
            joined = [np.concatenate(parts) for parts in zip(*buffered, strict=True)]
            size = len(writer.block_rows(pending[0]))
            writer.write_block(pending.pop(0), *(array[:size] for array in joined))
            rest = tuple(array[size:] for array in joined)
            buffered = [rest] if len(rest[2]) else []
    return len(order)


def save_logits(
    cfg: SaveLogitsConfig, progress: bool = True, restart: bool = False
) -> SaveLogitsResult:
    """Store the teachers' top-K probabilities for every row and epoch (resumable).

    Launched by torchrun, every rank computes its interleaved share on its
    own device (``cuda:LOCAL_RANK`` when ``cfg.device`` is ``cuda``). Raises
    LogitStoreMismatch when ``out_dir`` holds logits made with other settings;
    ``restart`` deletes ``out_dir`` first. More epochs than ``out_dir`` holds
    add the missing epochs and keep the stored ones.
    """
    cfg = dataclasses.replace(cfg, num_workers=usable_workers(cfg.num_workers, "--num-workers"))
    ctx = init_distributed(cfg.device)
    try:
        if restart:
            if ctx.is_main:
                remove_tree(cfg.out_dir)
            ctx.barrier()  # no rank reads the folder before it is gone
        rows = load_rows(cfg.train_tsv, cfg.clip_seconds, cfg.min_chunk_seconds)
        if not rows:
            raise ValueError(f"{cfg.train_tsv} yields no rows")
        teachers = TeacherEnsemble.from_paths(cfg.teachers, ctx.device)
        # The class names stored with the logits: the label file's, else the teachers' own.
        named = {m.config.labels for m in teachers.models if m.config.labels}
        own = named.pop() if len(named) == 1 else None
        classes = class_labels_for(cfg.labels, cfg.train_tsv, teachers.num_classes, "--labels", own)
        samples = clip_samples(cfg.clip_seconds)
        header = LogitHeader(
            k=cfg.k,
            num_classes=teachers.num_classes,
            epochs=cfg.epochs,
            augment=to_plain(cfg.augment),
            teachers=teachers.identities,
            dataset_fingerprint=dataset_fingerprint(rows),
            run_seed=cfg.run_seed,
            n_rows=len(rows),
            world_size=ctx.world,
            clip_samples=samples,
            block_rows=cfg.block_rows,
            train_tsv=str(Path(cfg.train_tsv).resolve()),
            extra={"clip_seconds": cfg.clip_seconds, "min_chunk_seconds": cfg.min_chunk_seconds},
            labels=None if classes is None else classes.names,
        )
        if ctx.is_main:
            open_for_writing(cfg.out_dir, header)
        ctx.barrier()
        if not ctx.is_main:
            open_for_writing(cfg.out_dir, header)
        store = AudioStore()
        writers = [EpochWriter(cfg.out_dir, header, epoch, ctx.rank) for epoch in range(cfg.epochs)]
        todo = sum(len(w.block_rows(b)) for w in writers for b in w.missing_blocks())
        computed = 0
        with progress_bar(
            total=todo,
            desc="save-logits",
            unit="row",
            logger=log,
            disable=not (progress and ctx.is_main),
        ) as bar:
            for epoch, writer in enumerate(writers):
                seeds = epoch_seeds(cfg.run_seed, epoch, len(rows))
                dataset = AugmentedClips(rows, store, seeds, cfg.augment, samples)
                computed += _run_blocks(writer, dataset, teachers, cfg, bar)
                writer.finish()
        store.close()
        ctx.barrier()
        sizes = LogitStore(cfg.out_dir).bytes_on_disk()
        return SaveLogitsResult(
            n_rows=len(rows),
            epochs=cfg.epochs,
            computed_rows=computed,
            epoch_bytes=sizes["epoch_files"],
            total_bytes=sizes["total"],
        )
    finally:
        ctx.close()


def _compare_row(
    probs: np.ndarray, values: np.ndarray, indexes: np.ndarray
) -> tuple[str | None, float]:
    """Whether stored (values, indexes) are the top-K of ``probs`` up to float16 rounding."""
    k = len(indexes)
    idx = indexes.astype(np.int64)
    if len(set(idx.tolist())) != k or idx.min() < 0 or idx.max() >= len(probs):
        return "stored class indices are invalid or repeated", float("inf")
    expected = probs[idx]
    error = np.abs(values.astype(np.float64) - expected)
    tolerance = 1e-4 + 1e-3 * np.abs(expected)
    if (error > tolerance).any():
        j = int(np.argmax(error - tolerance))
        return (
            f"class {idx[j]}: stored {float(values[j]):.6f}, recomputed {expected[j]:.6f}",
            float(error.max()),
        )
    others = np.delete(probs, idx)
    if len(others) and others.max() > expected.min() + 1e-4 + 1e-3 * abs(expected.min()):
        return (
            f"not the top-{k}: an unstored class has {others.max():.6f} > stored minimum "
            f"{expected.min():.6f}",
            float(error.max()),
        )
    return None, float(error.max())


def verify_logits(
    logits_dir: str | os.PathLike,
    n_rows: int = 64,
    seed: int = 0,
    teachers: Sequence[str] | None = None,
    train_tsv: str | os.PathLike | None = None,
) -> VerifyReport:
    """Recompute a random sample of stored rows from their seeds and compare.

    Teachers and the train TSV default to the ones recorded in the header;
    teacher files must still have the recorded sha256 and the rows the
    recorded fingerprint. Every stored seed must equal its derivation from
    (run seed, epoch, row).
    """
    logits_dir = Path(logits_dir)
    store = LogitStore(logits_dir)
    header = store.header
    problems: list[str] = []
    paths = list(teachers) if teachers else [t.get("path", "") for t in header.teachers]
    for path, identity in zip(paths, header.teachers, strict=False):
        if not path or not Path(path).is_file():
            raise FileNotFoundError(
                f"teacher checkpoint {path!r} not found; pass the teacher files"
            )
        if file_sha256(path) != identity["sha256"]:
            problems.append(f"teacher {path} is not the file the logits were made with")
    if len(paths) != len(header.teachers):
        problems.append(f"{len(paths)} teachers given, the logits came from {len(header.teachers)}")
    rows = load_rows(
        train_tsv or header.train_tsv,
        header.extra["clip_seconds"],
        header.extra["min_chunk_seconds"],
    )
    problems += [f"{logits_dir}: {p}" for p in store.mismatches(dataset_fingerprint(rows))]
    if problems:
        return VerifyReport(False, 0, problems, float("nan"))
    epochs = store.complete_epochs()
    if not epochs:
        return VerifyReport(False, 0, ["no complete epoch stored"], float("nan"))
    rng = np.random.default_rng(seed)
    picks = rng.choice(
        len(epochs) * header.n_rows, size=min(n_rows, len(epochs) * header.n_rows), replace=False
    )
    ensemble = TeacherEnsemble.from_paths(paths, "cpu")
    augment = from_dict(AugmentConfig, header.augment, "augment")
    audio = AudioStore()
    worst = 0.0
    for epoch_pos in sorted({int(p) // header.n_rows for p in picks}):
        epoch = epochs[epoch_pos]
        chosen = np.sort(
            [int(p) % header.n_rows for p in picks if int(p) // header.n_rows == epoch_pos]
        )
        values, indexes, stored_seeds = store.read(epoch, chosen)
        derived = epoch_seeds(header.run_seed, epoch, header.n_rows)[chosen]
        for row in chosen[stored_seeds != derived]:
            problems.append(f"epoch {epoch} row {row}: stored seed differs from its derivation")
        dataset = AugmentedClips(rows, audio, store.seeds(epoch), augment, header.clip_samples)
        loader = torch.utils.data.DataLoader(dataset, VERIFY_BATCH, sampler=chosen.tolist())
        for lo, batch in zip(range(0, len(chosen), VERIFY_BATCH), loader, strict=True):
            probs = teacher_probs(ensemble, batch["wave"], batch["seed"], augment)
            probs = probs.cpu().double().numpy()
            for j, p in enumerate(probs):
                reason, error = _compare_row(p, values[lo + j], indexes[lo + j])
                worst = max(worst, error)
                if reason:
                    problems.append(f"epoch {epoch} row {chosen[lo + j]}: {reason}")
    audio.close()
    return VerifyReport(not problems, len(picks), problems, worst)
