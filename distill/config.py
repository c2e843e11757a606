"""Training configuration: nested dataclasses, loaded from YAML, validated.

Every key is checked against the dataclass fields and their types, so a
typo (``optim.lrr``) or a wrong type (``optim.epochs: ten``) fails at load
time with the dotted key in the message instead of hours into a run.
Command-line overrides use the same dotted keys: ``--set optim.lr=3e-4``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from distill.augment import AugmentConfig
from hear_ced.model import VARIANTS, CEDConfig, variant_config


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


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
                f"model.variant: unknown variant {self.variant!r}; choose one of "
                f"{', '.join(VARIANTS)}"
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
            raise ConfigError(f"model: {err}") from err


@dataclass
class DataConfig:
    """Prepared TSVs (with an ``hdf5path`` column) and the clip length."""

    train_tsv: str = ""
    eval_tsv: str | None = None
    clip_seconds: float = 10.0
    # Long files are cut into clip_seconds rows; a shorter tail row must last this long.
    min_chunk_seconds: float = 1.0


@dataclass
class TargetsConfig:
    """What the student learns from: stored teacher logits or hard labels."""

    kind: Literal["logits", "labels"] = "logits"
    logits_dir: str | None = None
    # The student must see exactly the augmentation the teacher saw. Only
    # the augmentation ablation turns this off on purpose.
    require_consistent_augment: bool = True
    # When set, the logit store must have been made with exactly this
    # augmentation (an ablation row's teacher side) ...
    teacher_augment: AugmentConfig | None = None
    # ... and with this save-logits run seed (a paired seed of an ablation).
    run_seed: int | None = None


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


@dataclass
class EvalConfig:
    """Validation mAP every few epochs; the best k are averaged at the end."""

    every_epochs: int = 1
    keep_best: int = 4
    batch_size: int = 32


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    targets: TargetsConfig = field(default_factory=TargetsConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # bf16 autocast; only used on CUDA.
    amp: bool = True
    seed: int = 0
    out_dir: str = "runs/student"
    num_workers: int = 0
    # Besides every epoch, write the resumable state every N batches (0: off).
    checkpoint_every_steps: int = 0
    device: str = "auto"
    progress: bool = True

    def to_dict(self) -> dict:
        return to_plain(self)

    def validate(self) -> TrainConfig:
        """Cross-field checks that the types alone cannot express."""
        self.model.ced_config()
        positive = {
            "optim.lr": self.optim.lr,
            "optim.batch_size": self.optim.batch_size,
            "optim.epochs": self.optim.epochs,
            "eval.every_epochs": self.eval.every_epochs,
            "eval.keep_best": self.eval.keep_best,
            "eval.batch_size": self.eval.batch_size,
            "data.clip_seconds": self.data.clip_seconds,
        }
        for key, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{key} must be positive, got {value}")
        non_negative = {
            "optim.warmup_steps": self.optim.warmup_steps,
            "optim.weight_decay": self.optim.weight_decay,
            "num_workers": self.num_workers,
            "checkpoint_every_steps": self.checkpoint_every_steps,
        }
        for key, value in non_negative.items():
            if value < 0:
                raise ConfigError(f"{key} must not be negative, got {value}")
        if not 0.0 <= self.optim.min_lr_ratio <= 1.0:
            raise ConfigError(
                f"optim.min_lr_ratio must be in [0, 1], got {self.optim.min_lr_ratio}"
            )
        if not self.data.train_tsv:
            raise ConfigError("data.train_tsv is required")
        if self.targets.kind == "logits" and not self.targets.logits_dir:
            raise ConfigError("targets.logits_dir is required when targets.kind is 'logits'")
        teacher = self.targets.teacher_augment
        if self.targets.require_consistent_augment and teacher not in (None, self.augment):
            raise ConfigError(
                "targets.teacher_augment differs from augment, but "
                "targets.require_consistent_augment is true (consistent teaching)"
            )
        return self


def to_plain(value: Any) -> Any:
    """Dataclasses -> nested dicts of plain values (JSON/YAML ready)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [to_plain(v) for v in value]
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return the typed value."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} fits none of {tp}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(
                _coerce(v, a, f"{key}[{i}]")
                for i, (v, a) in enumerate(zip(args, value, strict=True))
            )
        item = args[0] if args else Any
        return origin(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        # YAML 1.1 reads "3e-4" (no dot) as a string; accept it as the number it is.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise ConfigError(f"{key}: unsupported field type {tp}")
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def from_dict(cls: type, values: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, naming any bad key in full."""
    where = prefix or "config"
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__} {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        names = ", ".join(f"{prefix}.{k}" if prefix else str(k) for k in unknown)
        raise ConfigError(f"unknown config key(s): {names} (known: {', '.join(fields)})")
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{where}: {err}") from err


def apply_override(tree: dict, assignment: str) -> None:
    """Apply one ``dotted.key=value`` to a nested dict; the value is YAML."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like key.sub=value")
    dotted, raw = assignment.split("=", 1)
    parts = dotted.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {assignment!r}: empty key part")
    node = tree
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[: depth + 1])} is a value, not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None


def load_config(
    path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()
) -> TrainConfig:
    """Read a YAML file (or start from defaults), apply overrides, validate."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        loaded = yaml.safe_load(path.read_text())
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        tree = loaded or {}
    for assignment in overrides:
        apply_override(tree, assignment)
    return from_dict(TrainConfig, tree).validate()


def config_from_dict(values: dict) -> TrainConfig:
    """A validated TrainConfig from a nested dict (e.g. one stored with a run)."""
    return from_dict(TrainConfig, values).validate()
