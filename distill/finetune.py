"""Fine-tuning CED on one's own classes: ``ced-distill finetune DATA --init mini --out DIR``.

DATA is either a folder with one sub-folder of audio files per class
(single-label), or a CSV with the columns ``filename`` (relative to the
CSV's folder) and ``labels`` (class names, ';'-separated: several per row
make the task multi-label), and optionally ``split`` (``train`` or
``valid``). Files may have any sample rate and channel count; they are read
as 16 kHz mono (soundfile + soxr).

The model is the --init checkpoint (a published size through the usual
weight resolution, or a file) with a new head for the user's classes,
trained with binary cross-entropy on sigmoid outputs, as CED is, so
``hear-ced tag`` reads its probabilities the same way. The input BatchNorm
keeps its pretrained statistics (small batches of a few classes would drag
them away). After every epoch the validation clips are tagged exactly as
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
from hear_ced.checkpoints import load_partial, read_checkpoint
from hear_ced.common.config import to_plain
from hear_ced.common.files import atomic_path, remove_tree, write_json, write_text
from hear_ced.common.tables import check_columns, markdown_table
from hear_ced.device import torch_device
from hear_ced.distill.config import FinetuneConfig, finetune_option
from hear_ced.distill.distributed import Context
from hear_ced.distill.engine import Loop, RunFolder, Schedule, train_in_folder
from hear_ced.distill.metrics import average_precision, mean_average_precision
from hear_ced.frontend import SAMPLE_RATE
from hear_ced.labels import multi_hot
from hear_ced.model import CED, PUBLISHED_SIZES
from hear_ced.tagging import ModelTagger
from hear_ced.weights import resolve_weights

log = logging.getLogger(__name__)

VALID_SPLITS = {"valid", "validation", "val"}
# The new head learns from scratch; it gets this multiple of the learning rate.
HEAD_LR_FACTOR = 10.0
_HEAD = "outputlayer.1."  # the head's linear layer, replaced for the user's classes


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


def read_dataset(data: str | Path) -> Dataset:
    """Examples and sorted class names of a class-folder tree or a CSV."""
    data = Path(data)
    if data.is_dir():
        examples = _read_folders(data)
    elif data.suffix.lower() == ".csv":
        examples = _read_csv(data)
    else:
        raise ValueError(f"{data}: expected a folder with one sub-folder per class, or a .csv file")
    classes = sorted({label for e in examples for label in e.labels})
    if len(classes) < 2:
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
) -> tuple[list[int], list[int]]:
    """Train and validation indices: the CSV's split column, else a seeded stratified split.

    Stratified by label set: each set gives round(fraction * n) of its
    examples (at least one, where it has two or more) to validation.
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
    if not train or not valid:
        raise ValueError(
            f"the split leaves {len(train)} training and {len(valid)} validation files; "
            "both need at least one"
        )
    _check_classes_split(examples, train, valid)
    return sorted(train), sorted(valid)


def _check_classes_split(examples: list[Example], train: list[int], valid: list[int]) -> None:
    """Every class needs a training and a validation file, else its score means nothing."""
    short = []
    for name in sorted({label for e in examples for label in e.labels}):
        n_train = sum(name in examples[i].labels for i in train)
        n_valid = sum(name in examples[i].labels for i in valid)
        if not n_train or not n_valid:
            short.append(f"{name} ({n_train} training, {n_valid} validation)")
    if short:
        raise ValueError(
            f"{len(short)} class(es) lack a training or a validation file: {'; '.join(short)}; "
            "give each class at least 2 files (or a split column that puts one in each)"
        )


def load_waves(examples: list[Example], max_samples: int) -> list[np.ndarray]:
    """The clips, cut to ``max_samples``; every unusable file is named in one error."""
    loaded = list(read_outcomes(str(example.path) for example in examples))
    bad = [outcome.error for outcome in loaded if outcome.result is None]
    if bad:
        shown = "; ".join(bad[:20]) + (f"; and {len(bad) - 20} more" if len(bad) > 20 else "")
        raise ValueError(f"{len(bad)} file(s) cannot be used: {shown}; fix or remove them")
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
    load_partial(model, state, source=f"--init {path}", drop=(_HEAD,), logger=log)
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


def finetune(cfg: FinetuneConfig, restart: bool = False) -> FinetuneResult:
    """Fine-tune, keep the best epoch as final.safetensors, write the report.

    The state after every epoch goes to DIR/last.pt, so a run that
    was stopped continues from its last finished epoch when started again
    with the same settings; ``restart`` deletes DIR first.
    """
    out = Path(cfg.out_dir)
    if restart:
        remove_tree(out)
    dataset = read_dataset(cfg.data)
    train_idx, valid_idx = split_examples(dataset.examples, cfg.valid_fraction, cfg.seed)
    max_samples = round(cfg.clip_seconds * SAMPLE_RATE)
    waves = load_waves(dataset.examples, max_samples)
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
    head = list(model.outputlayer.parameters())
    head_ids = {id(p) for p in head}
    body = [p for p in model.parameters() if id(p) not in head_ids]
    optimizer = torch.optim.AdamW(
        [{"params": body, "lr_scale": 1.0}, {"params": head, "lr_scale": HEAD_LR_FACTOR}],
        lr=cfg.lr,
        weight_decay=0.01,
    )
    micro_batch = cfg.batch_size // cfg.accumulate
    length = min(max_samples, max(waves[i].size for i in train_idx))
    rng = np.random.default_rng(cfg.seed)
    valid_waves = [waves[i] for i in valid_idx]
    valid_targets = targets[valid_idx]
    history: list[dict] = []

    def batches(epoch: int, first: int):
        # States are written at epoch ends only, so an epoch always starts at its first batch.
        del epoch, first
        order = rng.permutation(train_idx)
        for start in range(0, len(order), micro_batch):
            batch = order[start : start + micro_batch]
            wave = torch.from_numpy(np.stack([_fixed_length(waves[i], length, rng) for i in batch]))
            yield wave, torch.from_numpy(targets[batch])

    def prepare(epoch: int, batch: tuple[torch.Tensor, torch.Tensor]):
        del epoch
        wave, target = batch
        return model.mel(wave.to(device)), target.to(device)

    def score(epoch: int, losses: np.ndarray) -> float:
        # mAP for multi-label data, else accuracy (one label per file).
        scores = ModelTagger(model.eval()).probabilities(valid_waves)
        if dataset.multi_label:
            value = mean_average_precision(valid_targets, scores)
        else:
            value = float(np.mean(scores.argmax(axis=1) == valid_targets.argmax(axis=1)))
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
        out,
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
    scores = ModelTagger(final_model).probabilities(valid_waves)
    report = write_report(out, dataset, cfg, len(train_idx), valid_targets, scores, kept["epoch"])
    write_json(out / "history.json", history, sort_keys=True)
    return FinetuneResult(
        out / "final.safetensors",
        report,
        kept["epoch"],
        dataset.metric,
        kept[dataset.metric],
        history,
    )


# --------------------------------------------------------------------------
# Report.


def _per_class_table(dataset: Dataset, targets: np.ndarray, scores: np.ndarray) -> str:
    if dataset.multi_label:
        return markdown_table(
            ["class", "validation files", "AP"],
            [
                (
                    name,
                    int(targets[:, c].sum()),
                    f"{average_precision(targets[:, c], scores[:, c]):.3f}",
                )
                for c, name in enumerate(dataset.classes)
            ],
        )
    from sklearn.metrics import precision_recall_fscore_support

    truth, guess = targets.argmax(axis=1), scores.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, guess, labels=range(len(dataset.classes)), zero_division=0
    )
    return markdown_table(
        ["class", "validation files", "precision", "recall", "F1"],
        [
            (name, support[c], f"{precision[c]:.3f}", f"{recall[c]:.3f}", f"{f1[c]:.3f}")
            for c, name in enumerate(dataset.classes)
        ],
    )


def plot_confusion(classes: list[str], targets: np.ndarray, scores: np.ndarray, path: Path) -> None:
    """Confusion matrix of the validation clips (rows: true class, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(
        targets.argmax(axis=1), scores.argmax(axis=1), labels=range(len(classes))
    )
    size = 2 + 0.6 * len(classes)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(matrix, cmap="Blues")
    for (row, col), count in np.ndenumerate(matrix):
        ax.text(col, row, str(count), ha="center", va="center")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def write_report(
    out: Path,
    dataset: Dataset,
    cfg: FinetuneConfig,
    n_train: int,
    targets: np.ndarray,
    scores: np.ndarray,
    best_epoch: int,
) -> Path:
    """DIR/report.md: data, settings, per-class scores of the kept epoch (per epoch: history.json)."""
    metric = dataset.metric
    kind = "multi-label" if dataset.multi_label else "single-label"
    lines = [
        "# Fine-tuning report",
        "",
        f"- data: `{cfg.data}` ({kind}, {len(dataset.classes)} classes, "
        f"{n_train} training and {len(targets)} validation files)",
        f"- initial weights: `{cfg.init}`; {cfg.epochs} epochs, batch {cfg.batch_size}, "
        f"learning rate {cfg.lr:g} (head x{HEAD_LR_FACTOR:g}), seed {cfg.seed}",
        f"- kept: epoch {best_epoch} (best validation {metric}) as `final.safetensors`",
        "",
        f"## Per class (validation, epoch {best_epoch})",
        "",
        _per_class_table(dataset, targets, scores),
        "",
    ]
    if not dataset.multi_label:
        plot_confusion(dataset.classes, targets, scores, out / "confusion.png")
        lines += ["![confusion matrix](confusion.png)", ""]
    return write_text(out / "report.md", "\n".join(lines))
