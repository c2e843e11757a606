"""Fine-tuning CED on one's own classes: ``ced-distill finetune DATA --init mini --out DIR``.

DATA is either a folder with one sub-folder of audio files per class
(single-label), or a CSV with the columns ``filename`` (relative to the
CSV's folder) and ``labels`` (class names, ';'-separated: several per row
make the task multi-label), and optionally ``split`` (``train`` or
``valid``). Files may have any sample rate and channel count; they are read
as 16 kHz mono (soundfile + soxr).

The model is the --init checkpoint (a published size through the usual
weight resolution, or a file) with a new head for the user's classes, with
sigmoid outputs, as CED is, so ``hear-ced tag`` reads its probabilities the
same way. Frozen (the default, chosen on small real-sound sets), only that
head is fitted: a linear probe on what the head sees of each clip (seconds).
``--full`` trains the whole model with binary cross-entropy, optionally with
the seeded augmentation of distillation, weight decay and class-balanced
draws; the input BatchNorm keeps its pretrained statistics (small batches of
a few classes would drag them away). After every epoch the validation clips are tagged exactly as
``hear-ced tag`` tags files; the best epoch (accuracy for single-label data,
mAP for multi-label) is kept in DIR/best/ as ``train`` keeps its best k and
becomes DIR/final.safetensors, with the class names inside, next to
DIR/report.md and, for single-label data, DIR/confusion.png.
DIR/last.pt holds the state after the last finished epoch, from
which a stopped run resumes; DIR/config.json the settings, which a resume
must share (but the device).

Bad data is refused before training, all of it in one error: files that
cannot be decoded, hold no samples or non-finite ones (unlike ``prepare``,
which skips and lists them: a fine-tuning set is small and hand-made, and a
dropped file silently changes its class balance), and classes with too few
files to appear in both the training and the validation split.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hear_ced.audio import audio_extensions, audio_files, read_outcomes
from hear_ced.checkpoints import load_partial, read_checkpoint, save_model
from hear_ced.common.config import to_plain
from hear_ced.common.files import claim_folder, remove_tree, write_json, write_text
from hear_ced.common.tables import check_columns
from hear_ced.device import torch_device
from hear_ced.distill.augment import AugmentConfig, epoch_seeds, mixup_partner, shift_wave
from hear_ced.distill.config import FinetuneConfig, finetune_option
from hear_ced.distill.distributed import Context
from hear_ced.distill.engine import Loop, RunFolder, Schedule, train_in_folder
from hear_ced.distill.metrics import (
    class_table,
    classification_scores,
    mean_average_precision,
    plot_confusion,
)
from hear_ced.distill.views import augmented_mel
from hear_ced.frontend import HOP_LENGTH, SAMPLE_RATE
from hear_ced.labels import multi_hot
from hear_ced.model import CED, PUBLISHED_SIZES
from hear_ced.tagging import ModelTagger
from hear_ced.weights import resolve_weights

log = logging.getLogger(__name__)

VALID_SPLITS = {"valid", "validation", "val"}
# The new head learns from scratch; it gets this multiple of the learning rate.
HEAD_LR_FACTOR = 10.0
_HEAD = "outputlayer.1."  # the head's linear layer, replaced for the user's classes
# Frames of the 10 s clips the recipe's time mask width is for.
RECIPE_FRAMES = 1001
# A frozen head's logit for a label constant in training (sigmoid: 1 - 2e-9).
CONSTANT_LOGIT = 20.0


@dataclass(frozen=True)
class Example:
    path: Path
    labels: tuple[str, ...]
    split: str | None = None


@dataclass(frozen=True)
class Dataset:
    examples: list[Example]
    classes: list[str]
    multi_label: bool

    @property
    def metric(self) -> str:
        """The validation score that picks the best epoch."""
        return "mAP" if self.multi_label else "accuracy"


@dataclass(frozen=True)
class FinetuneResult:
    final_checkpoint: Path
    report: Path
    best_epoch: int
    metric_name: str
    best_metric: float
    history: list[dict]


# --------------------------------------------------------------------------
# Data: a folder per class or a CSV, then a validation split.


def read_dataset(data: str | Path, min_classes: int = 2) -> Dataset:
    """Examples and sorted class names of a class-folder tree or a CSV (``min_classes`` of them)."""
    data = Path(data)
    if data.is_dir():
        examples = _read_folders(data)
    elif data.suffix.lower() == ".csv":
        examples = _read_csv(data)
    else:
        raise ValueError(f"{data}: expected a folder with one sub-folder per class, or a .csv file")
    classes = sorted({label for e in examples for label in e.labels})
    if len(classes) < min_classes:
        raise ValueError(f"{data}: found {len(classes)} class(es); fine-tuning needs at least 2")
    return Dataset(examples, classes, any(len(e.labels) > 1 for e in examples))


def _read_folders(root: Path) -> list[Example]:
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    examples = [
        Example(Path(path), (folder.name,)) for folder in folders for path in audio_files([folder])
    ]
    if not examples:
        raise ValueError(
            f"{root} holds no audio files in sub-folders (one sub-folder per class, "
            f"files ending in {', '.join(sorted(audio_extensions()))})"
        )
    return examples


def _read_csv(path: Path) -> list[Example]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        check_columns(path, list(reader.fieldnames or []), ("filename", "labels"), ",")
        rows = list(reader)
    examples = []
    for line, row in enumerate(rows, start=2):
        labels = tuple(sorted({x.strip() for x in (row["labels"] or "").split(";") if x.strip()}))
        if not labels:
            raise ValueError(f"{path} line {line}: no labels")
        split = (row.get("split") or "").strip().lower() or None
        if split is not None and split != "train" and split not in VALID_SPLITS:
            raise ValueError(f"{path} line {line}: split must be train or valid, got {split!r}")
        examples.append(Example(path.parent / row["filename"], labels, split))
    if not examples:
        raise ValueError(f"{path} lists no files")
    given = {e.split is not None for e in examples}
    if given == {True, False}:
        raise ValueError(f"{path}: the split column is empty on some rows; fill it in everywhere")
    return examples


def split_examples(
    examples: list[Example], valid_fraction: float, seed: int
) -> tuple[list[int], list[int], list[str]]:
    """Train and validation indices, and the classes either leaves empty (named with their files).

    The CSV's split column, else a seeded stratified split by label set: each
    set gives round(fraction * n) of its examples (at least one, where it has
    two or more) to validation.
    """
    if examples[0].split is not None:
        valid = [i for i, e in enumerate(examples) if e.split in VALID_SPLITS]
        train = [i for i, e in enumerate(examples) if e.split == "train"]
    else:
        if not 0.0 < valid_fraction < 1.0:
            raise ValueError(f"the validation fraction must be in (0, 1), got {valid_fraction}")
        rng = np.random.default_rng(seed)
        strata: dict[tuple[str, ...], list[int]] = {}
        for i, e in enumerate(examples):
            strata.setdefault(e.labels, []).append(i)
        train, valid = [], []
        for key in sorted(strata):
            members = rng.permutation(strata[key]).tolist()
            n_valid = min(len(members) - 1, max(1, round(valid_fraction * len(members))))
            valid += members[:n_valid]
            train += members[n_valid:]
    return sorted(train), sorted(valid), _classes_split_short(examples, train, valid)


def _classes_split_short(examples: list[Example], train: list[int], valid: list[int]) -> list[str]:
    """Classes without a training or a validation file (their score would mean nothing)."""
    short = []
    for name in sorted({label for e in examples for label in e.labels}):
        n_train = sum(name in examples[i].labels for i in train)
        n_valid = sum(name in examples[i].labels for i in valid)
        if not n_train or not n_valid:
            files = ", ".join(str(e.path) for e in examples if name in e.labels)
            short.append(f"class {name} ({n_train} training, {n_valid} validation: {files})")
    return short


def load_waves(
    examples: list[Example], max_samples: int, problems: list[str] = ()
) -> list[np.ndarray]:
    """The clips, cut to ``max_samples``; every unusable file and earlier problem in one error."""
    loaded = list(read_outcomes(str(example.path) for example in examples))
    bad = [f"file {outcome.error}" for outcome in loaded if outcome.result is None]
    problems = [*problems, *bad]
    if problems:
        shown = "; ".join(problems[:20])
        more = f"; and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ValueError(
            f"{len(problems)} problem(s) in the data: {shown}{more}; fix or remove the files "
            "(every class needs at least 2 usable files, or a split column that puts one "
            "in training and one in validation)"
        )
    return [outcome.result[:max_samples] for outcome in loaded]


# --------------------------------------------------------------------------
# Model: the --init weights with a new head.


def init_path(init: str) -> Path:
    """A published size through the usual weight resolution, or a checkpoint path."""
    if init in PUBLISHED_SIZES:
        return resolve_weights(init, option="--init")
    path = Path(init)
    if not path.exists():
        raise FileNotFoundError(
            f"--init {init}: neither a model size ({', '.join(PUBLISHED_SIZES)}) "
            "nor an existing checkpoint"
        )
    return path


def initial_model(init: str, classes: list[str]) -> CED:
    """The --init model with a freshly initialised head for ``classes``, named in its config."""
    path = init_path(init)
    state, config = read_checkpoint(path)
    model = CED(dataclasses.replace(config, num_classes=len(classes), labels=tuple(classes)))
    # The head is for the checkpoint's classes: dropped even where the count agrees.
    load_partial(
        model,
        state,
        source=f"--init {path}",
        drop=(_HEAD,),
        logger=log,
        dropped_because=f"for a new head of the {len(classes)} classes of the data",
    )
    return model


# --------------------------------------------------------------------------
# Training.


def _fixed_length(wave: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``length``-sample crop of a longer clip, or a shorter clip repeated.

    Repeating rather than zero-padding keeps silence that is not in the
    recording out of the mean over tokens.
    """
    if wave.size > length:
        start = int(rng.integers(0, wave.size - length + 1))
        return wave[start : start + length]
    return np.resize(wave, length)


def augmentation(cfg: FinetuneConfig, samples: int) -> AugmentConfig:
    """The recipe's seeded augmentation, its time mask scaled to clips of ``samples``."""
    recipe = AugmentConfig()
    frames = samples // HOP_LENGTH + 1
    width = recipe.time_mask_width * frames // RECIPE_FRAMES
    return dataclasses.replace(
        recipe, wave=cfg.augment, spec=cfg.augment, mixup=cfg.mixup, time_mask_width=width
    )


def draw_weights(targets: np.ndarray) -> np.ndarray | None:
    """Per-file draw probabilities that draw every class equally often; None where they already are.

    A file's weight is the mean of 1 / (files of the class) over its classes.
    """
    counts = targets.sum(axis=0)
    weights = (targets / np.maximum(counts, 1)).sum(axis=1) / targets.sum(axis=1)
    if np.allclose(weights, weights[0]):
        return None
    return weights / weights.sum()


def finetune(cfg: FinetuneConfig, restart: bool = False) -> FinetuneResult:
    """Fine-tune (or, frozen, fit a head), keep the best as final.safetensors, write the report.

    The state after every epoch goes to DIR/last.pt, so a run that
    was stopped continues from its last finished epoch when started again
    with the same settings; ``restart`` deletes DIR first.
    """
    out = Path(cfg.out_dir)
    if restart:
        remove_tree(out)
    dataset = read_dataset(cfg.data)
    train_idx, valid_idx, short = split_examples(dataset.examples, cfg.valid_fraction, cfg.seed)
    max_samples = round(cfg.clip_seconds * SAMPLE_RATE)
    waves = load_waves(dataset.examples, max_samples, short)
    device = torch_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = initial_model(cfg.init, dataset.classes).to(device)
    log.info(
        "%d classes, %d training and %d validation files",
        len(dataset.classes),
        len(train_idx),
        len(valid_idx),
    )
    targets = np.stack(
        [
            multi_hot(map(dataset.classes.index, e.labels), len(dataset.classes))
            for e in dataset.examples
        ]
    )
    run = frozen_run if cfg.frozen else train_model
    history, best_epoch, final_model = run(
        cfg, dataset, waves, targets, train_idx, valid_idx, model
    )
    valid_targets = targets[valid_idx]
    scores = ModelTagger(final_model).probabilities([waves[i] for i in valid_idx])
    note = None
    if not cfg.frozen and still_improving(history, dataset.metric):
        note = (
            f"validation {dataset.metric} still improved at the last epoch ({cfg.epochs}): "
            "a longer run (--epochs) may score higher"
        )
        log.warning("%s", note)
    report = write_report(
        out, dataset, cfg, len(train_idx), valid_targets, scores, best_epoch, note
    )
    write_json(out / "history.json", history, sort_keys=True)
    best = max(h[dataset.metric] for h in history)
    return FinetuneResult(
        out / "final.safetensors", report, best_epoch, dataset.metric, best, history
    )


def still_improving(history: list[dict], metric: str) -> bool:
    """Whether the last epoch scored better than every earlier one."""
    values = [h[metric] for h in history]
    return len(values) > 1 and values[-1] > max(values[:-1])


def _score(dataset: Dataset, targets: np.ndarray, scores: np.ndarray) -> float:
    """mAP for multi-label data, else accuracy (one label per file)."""
    if dataset.multi_label:
        return mean_average_precision(targets, scores)
    return float(np.mean(scores.argmax(axis=1) == targets.argmax(axis=1)))


def train_model(cfg, dataset, waves, targets, train_idx, valid_idx, model):
    """Train the whole model, with seeded augmentation if asked; (history, kept epoch, model)."""
    device = next(model.parameters()).device
    head = list(model.outputlayer.parameters())
    head_ids = {id(p) for p in head}
    body = [p for p in model.parameters() if id(p) not in head_ids]
    optimizer = torch.optim.AdamW(
        [{"params": body, "lr_scale": 1.0}, {"params": head, "lr_scale": HEAD_LR_FACTOR}],
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
    )
    micro_batch = cfg.batch_size // cfg.accumulate
    length = min(round(cfg.clip_seconds * SAMPLE_RATE), max(waves[i].size for i in train_idx))
    augment = augmentation(cfg, length)
    draws = draw_weights(targets[train_idx]) if cfg.balance else None
    rng = np.random.default_rng(cfg.seed)
    valid_waves = [waves[i] for i in valid_idx]
    history: list[dict] = []

    def view(row: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Training file ``row``'s crop, mixed with its seeded partner, shifted; its target."""
        own = train_idx[row]
        wave, target = _fixed_length(waves[own], length, rng), targets[own]
        partner, lam = mixup_partner(seed, len(train_idx), augment)
        if partner >= 0:
            other = train_idx[partner]
            wave = lam * wave + (1.0 - lam) * _fixed_length(waves[other], length, rng)
            target = lam * target + (1.0 - lam) * targets[other]
        return shift_wave(wave, seed, augment).astype(np.float32), target.astype(np.float32)

    def batches(epoch: int, first: int):
        # States are written at epoch ends only, so an epoch always starts at its first batch.
        del first
        seeds = epoch_seeds(cfg.seed, epoch, len(train_idx))
        n = len(train_idx)
        order = rng.choice(n, size=n, p=draws) if draws is not None else rng.permutation(n)
        for start in range(0, n, micro_batch):
            rows = order[start : start + micro_batch]
            wave, target = zip(*(view(row, int(seeds[row])) for row in rows), strict=True)
            yield torch.from_numpy(np.stack(wave)), torch.from_numpy(np.stack(target)), seeds[rows]

    def prepare(epoch: int, batch):
        del epoch
        wave, target, seeds = batch
        mel = augmented_mel(model.mel, wave.to(device), torch.from_numpy(seeds), augment)
        return mel, target.to(device)

    def score(epoch: int, losses: np.ndarray) -> float:
        value = _score(
            dataset, targets[valid_idx], ModelTagger(model.eval()).probabilities(valid_waves)
        )
        history.append(
            {"epoch": epoch, "train_loss": float(np.mean(losses)), dataset.metric: value}
        )
        return value

    def restore(caller: dict) -> None:
        rng.bit_generator.state = caller["rng"]
        history[:] = caller["history"]

    loop = Loop(
        batches,
        prepare,
        math.ceil(len(train_idx) / micro_batch),
        cfg.epochs,
        # Keep the pretrained input statistics.
        on_epoch_start=lambda epoch: model.init_bn.eval(),
        state=lambda: {"rng": rng.bit_generator.state, "history": history},
        restore=restore,
    )
    folder = RunFolder(
        Path(cfg.out_dir),
        to_plain(cfg),
        {"device"},
        schedule_key="epochs",
        init_key="init",
        spell=finetune_option,
    )
    _, [kept], final_model = train_in_folder(
        folder,
        model,
        optimizer,
        loop,
        lambda total_steps: Schedule(cfg.lr, total_steps, max(1, total_steps // 10)),
        Context(0, 1, device),
        score=score,
        metric=dataset.metric,
        precision=cfg.precision,
        accumulate=cfg.accumulate,
        clip_grad_norm=cfg.clip_grad_norm,
        desc="finetune",
    )
    return history, kept["epoch"], final_model


@torch.no_grad()
def head_inputs(model: CED, waves: list[np.ndarray]) -> np.ndarray:
    """(clips, dim): what the head's linear layer sees of each clip when ``hear-ced tag`` tags it.

    The tagging rule itself runs (``ModelTagger``), a clip at a time, with a
    hook on the linear layer; a clip longer than one pass gives the mean of
    its passes' inputs.
    """
    seen: list[torch.Tensor] = []
    hook = model.outputlayer[1].register_forward_hook(lambda _, args, __: seen.append(args[0]))
    tagger = ModelTagger(model.eval())
    rows = []
    try:
        for wave in waves:
            seen.clear()
            tagger.probabilities([wave])
            rows.append(torch.cat(seen).float().mean(dim=0).cpu().numpy())
    finally:
        hook.remove()
    return np.stack(rows)


def frozen_run(cfg, dataset, waves, targets, train_idx, valid_idx, model):
    """--frozen: the probe's head on the unchanged model as DIR/final.safetensors."""
    out = Path(cfg.out_dir)
    claim_folder(
        out,
        to_plain(cfg),
        "config.json",
        compared=lambda stored: {k: v for k, v in stored.items() if k != "device"},
        spell=finetune_option,
        advice="use another --out, or --restart to delete it and start over",
    )
    history = fit_head(dataset, waves, targets, train_idx, valid_idx, model)
    save_model(model, out / "final.safetensors")
    return history, 0, model


def fit_head(dataset, waves, targets, train_idx, valid_idx, model) -> list[dict]:
    """Set the model's head to a linear probe on its head inputs; per-C validation scores.

    ``hear_ced.probe.fit_path``'s one-vs-rest logistic regression (the
    sigmoid outputs CED is trained with), its regularisation C picked on the
    validation files; the standardisation is folded into the head's weights.
    """
    from hear_ced.probe import SplitData, fit_path

    features = head_inputs(model, waves)
    train = SplitData(features[train_idx], targets[train_idx])
    history, fits = [], []
    for c, fitted in fit_path(train, multilabel=True):
        probabilities = fitted.probabilities(features[valid_idx])
        history.append({"C": c, dataset.metric: _score(dataset, targets[valid_idx], probabilities)})
        fits.append(fitted)
    best = int(np.argmax([h[dataset.metric] for h in history]))
    fitted = fits[best]
    weight = np.zeros((len(dataset.classes), features.shape[1]), dtype=np.float32)
    # Labels constant in training keep their constant probability (a saturated bias).
    bias = np.where(fitted.constant > 0, CONSTANT_LOGIT, -CONSTANT_LOGIT).astype(np.float32)
    scaled = fitted.weights / fitted.scale[:, None]
    weight[fitted.columns] = scaled.T
    bias[fitted.columns] = fitted.bias - fitted.mean @ scaled
    linear = model.outputlayer[1]
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(weight))
        linear.bias.copy_(torch.from_numpy(bias))
    log.info("linear head: kept C=%g (validation %s %.4f)", history[best]["C"],
             dataset.metric, history[best][dataset.metric])  # fmt: skip
    return history


# --------------------------------------------------------------------------
# Report.


def write_report(
    out: Path,
    dataset: Dataset,
    cfg: FinetuneConfig,
    n_train: int,
    targets: np.ndarray,
    scores: np.ndarray,
    best_epoch: int,
    note: str | None = None,
) -> Path:
    """DIR/report.md: data, settings, per-class scores of the kept model (per epoch: history.json)."""
    metric = dataset.metric
    kind = "multi-label" if dataset.multi_label else "single-label"
    if cfg.frozen:
        how = "frozen model, a new linear head fitted on its embeddings (C picked on validation)"
        kept = "the fitted head"
    else:
        how = (
            f"{cfg.epochs} epochs, batch {cfg.batch_size}, learning rate {cfg.lr:g} "
            f"(head x{HEAD_LR_FACTOR:g}), weight decay {cfg.weight_decay:g}, augmentation "
            f"{'on' if cfg.augment else 'off'}, mixup {'on' if cfg.mixup else 'off'}, "
            f"class balancing {'on' if cfg.balance else 'off'}"
        )
        kept = f"epoch {best_epoch} (best validation {metric})"
    lines = [
        "# Fine-tuning report",
        "",
        f"- data: `{cfg.data}` ({kind}, {len(dataset.classes)} classes, "
        f"{n_train} training and {len(targets)} validation files)",
        f"- initial weights: `{cfg.init}`; {how}; seed {cfg.seed}",
        f"- kept: {kept} as `final.safetensors`",
        *([f"- note: {note}"] if note else []),
        "",
        "## Per class (validation)",
        "",
        class_table(dataset.classes, targets, scores, dataset.multi_label),
        "",
    ]
    if not dataset.multi_label:
        matrix = np.asarray(classification_scores(targets, scores)["confusion"])
        plot_confusion(dataset.classes, matrix, out / "confusion.png")
        lines += ["![confusion matrix](confusion.png)", ""]
    return write_text(out / "report.md", "\n".join(lines))
