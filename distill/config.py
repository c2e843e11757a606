"""Training and fine-tuning configuration: dataclasses, loaded and checked by ``hear_ced.common.config``.

Types are checked by the loader; each section's ``validate()`` holds its
value rules and ``TrainConfig.validate`` the rules that span sections (the
style described in ``hear_ced.common.config``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from hear_ced.common.config import (
    ConfigError,
    apply_override,
    checked,
    from_dict,
    in_range,
    non_negative,
    positive,
    read_yaml,
)
from hear_ced.common.config import load_config as load_typed_config
from hear_ced.distill.augment import AugmentConfig, check_time_mask
from hear_ced.model import VARIANTS, CEDConfig, variant_config

# How a run computes: auto is bf16 autocast on CUDA and float32 on CPU; bf16 also on CPU.
Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


def check_micro_batches(section: object, batch: str, accumulate: str) -> None:
    """A batch must split into ``accumulate`` equal micro-batches."""
    size, parts = getattr(section, batch), getattr(section, accumulate)
    if size % parts:
        raise ConfigError(
            f"{batch} {size} does not split into {parts} equal micro-batches", key=accumulate
        )


@dataclass
class ModelConfig:
    """Student architecture: a named variant, optionally with custom sizes."""

    variant: str = "mini"
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    mlp_ratio: float | None = None
    num_classes: int = 527
    drop_path_rate: float = 0.0
    # Initial weights (MAE-pretrained or any CED checkpoint); keys whose
    # shapes differ (e.g. the head for another class count) are skipped.
    init: str | None = None

    def ced_config(self) -> CEDConfig:
        if self.variant not in VARIANTS:
            raise ConfigError(
                f"unknown variant {self.variant!r}; choose one of {', '.join(VARIANTS)}",
                key="variant",
            )
        sizes = {
            name: getattr(self, name)
            for name in ("embed_dim", "depth", "num_heads", "mlp_ratio")
            if getattr(self, name) is not None
        }
        try:
            return variant_config(
                self.variant,
                num_classes=self.num_classes,
                drop_path_rate=self.drop_path_rate,
                **sizes,
            )
        except ValueError as err:
            raise ConfigError(str(err)) from err

    def validate(self) -> None:
        self.ced_config()


@dataclass
class DataConfig:
    """Prepared TSVs (with an ``hdf5path`` column) and the clip length."""

    train_tsv: str = ""
    eval_tsv: str | None = None
    clip_seconds: float = 10.0
    # Long files are cut into clip_seconds rows; a shorter tail row must last this long.
    min_chunk_seconds: float = 1.0
    # The class names (a label CSV/TSV: index, mid, display_name), stored in
    # every checkpoint. Unset: class_labels_indices.csv beside train_tsv, else
    # AudioSet's list for 527 classes, else the logit store's names.
    labels: str | None = None

    def validate(self) -> None:
        if not self.train_tsv:
            raise ConfigError("required", key="train_tsv")
        positive(self, "clip_seconds")
        non_negative(self, "min_chunk_seconds")


@dataclass
class TargetsConfig:
    """What the student learns from: stored teacher logits or hard labels."""

    kind: Literal["logits", "labels"] = "logits"
    logits_dir: str | None = None

    def validate(self) -> None:
        if self.kind == "logits" and not self.logits_dir:
            raise ConfigError("required when targets.kind is 'logits'", key="logits_dir")


@dataclass
class OptimConfig:
    """Adam as in the original (bitsandbytes 8-bit, no weight decay); warmup then cosine.

    ``optimizer`` "adamw" decouples the weight decay; with ``adam_8bit`` the
    bitsandbytes 8-bit kernel is required unless ``allow_fallback`` lets the
    run use torch's 32-bit optimizer of the same family instead.
    """

    lr: float = 1e-3
    warmup_steps: int = 5000
    min_lr_ratio: float = 0.1
    optimizer: Literal["adam", "adamw"] = "adam"
    weight_decay: float = 0.0
    batch_size: int = 32
    epochs: int = 300
    adam_8bit: bool = True
    allow_fallback: bool = False
    # Largest total gradient norm; 0: no clipping.
    clip_grad_norm: float = 0.0
    # Micro-batches per optimizer step: batch_size is split into this many, so the
    # schedule and the step's batch stay as set while memory use shrinks.
    accumulate: int = 1

    def validate(self) -> None:
        positive(self, "lr", "batch_size", "epochs", "accumulate")
        non_negative(self, "warmup_steps", "weight_decay", "clip_grad_norm")
        in_range(self, "min_lr_ratio", 0, 1)
        check_micro_batches(self, "batch_size", "accumulate")


@dataclass
class EvalConfig:
    """Validation mAP every few epochs; the best k are averaged at the end."""

    every_epochs: int = 1
    keep_best: int = 4
    batch_size: int = 32

    def validate(self) -> None:
        positive(self, "every_epochs", "keep_best", "batch_size")


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    targets: TargetsConfig = field(default_factory=TargetsConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # auto: bf16 autocast on CUDA, float32 on CPU; fp32 or bf16 (also on CPU) when asked.
    precision: Precision = "auto"
    seed: int = 0
    out_dir: str = "runs/student"
    num_workers: int = 0
    # Besides every epoch, write the resumable state every N batches (0: off).
    checkpoint_every_steps: int = 0
    # A throughput record (clips/s, data-wait share, loss) every N steps besides every epoch.
    log_every_steps: int = 50
    device: str = "auto"
    progress: bool = True

    def validate(self) -> None:
        """The rules that span sections; each section checks its own fields."""
        non_negative(self, "num_workers", "checkpoint_every_steps", "log_every_steps")
        check_time_mask(
            self.augment, self.data.clip_seconds, "augment.time_mask_width", "data.clip_seconds"
        )


@dataclass(frozen=True)
class FinetuneConfig:
    """``ced-distill finetune``'s settings: its flags, ``--config`` YAML and ``--set`` set these."""

    data: str  # a folder per class, or a CSV
    out_dir: str
    init: str = "mini"
    # Fit only a new linear head on the unchanged model's embeddings (a probe: seconds);
    # False trains the whole model. Defaults chosen on small real-sound sets: docs/finetune.md.
    frozen: bool = True
    epochs: int = 40
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.01
    # Seeded waveform shift and time/frequency masks (hear_ced.distill.augment), and mixup.
    augment: bool = False
    mixup: bool = False
    # Draw files of rarer classes more often, so every class is drawn equally often.
    balance: bool = True
    valid_fraction: float = 0.2
    clip_seconds: float = 10.0
    seed: int = 0
    device: str = "auto"
    precision: Precision = "auto"
    # Largest total gradient norm; 0: no clipping.
    clip_grad_norm: float = 0.0
    # Micro-batches per optimizer step (batch_size is split into them).
    accumulate: int = 1

    def __post_init__(self) -> None:
        checked(self)

    def validate(self) -> None:
        positive(self, "epochs", "batch_size", "lr", "clip_seconds", "accumulate")
        non_negative(self, "clip_grad_norm", "weight_decay")
        check_micro_batches(self, "batch_size", "accumulate")
        changed = [
            f.name
            for f in dataclasses.fields(self)
            if f.name in FULL_ONLY and getattr(self, f.name) != f.default
        ]
        if self.frozen and changed:
            raise ConfigError(
                f"{', '.join(map(finetune_option, changed))}: settings of --full training, which "
                "a frozen run (a linear head fitted on the unchanged model) would ignore; "
                "add --full, or leave them out"
            )


# Settings that only a --full fine-tune uses.
FULL_ONLY = ("epochs", "batch_size", "lr", "weight_decay", "augment", "mixup", "balance")


# finetune's command-line spelling of a setting where it is not --field-name.
_FINETUNE_SPELLING = {"data": "DATA", "out_dir": "--out", "clip_seconds": "--seconds"}


def finetune_option(name: str) -> str:
    """The flag (or argument) of a FinetuneConfig field, for the CLI and its messages."""
    return _FINETUNE_SPELLING.get(name, "--" + name.replace("_", "-"))


def load_finetune_config(
    path: str | Path | None, given: dict, overrides: Sequence[str] = ()
) -> FinetuneConfig:
    """A YAML file (or the defaults), then the settings given as flags, then ``--set``."""
    tree = read_yaml(path) if path is not None else {}
    tree.update(given)
    for assignment in overrides:
        apply_override(tree, assignment)
    missing = [finetune_option(key) for key in ("data", "out_dir") if tree.get(key) is None]
    if missing:
        raise ConfigError(
            f"{' and '.join(missing)} not given (on the command line, or in --config)"
        )
    return from_dict(FinetuneConfig, tree)


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML file (or start from defaults), apply overrides, validate."""
    return load_typed_config(TrainConfig, path, overrides)
