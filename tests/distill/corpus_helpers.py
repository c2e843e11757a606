"""Small prepared synthetic corpora and tiny-model settings for the training tests."""

from __future__ import annotations

from pathlib import Path

import torch

from hear_ced.checkpoints import save_model
from hear_ced.distill.augment import AugmentConfig
from hear_ced.distill.data import prepare
from hear_ced.distill.extract import SaveLogitsConfig, save_logits
from hear_ced.distill.synth import SYNTH_CLASSES, synthesize
from hear_ced.model import CED, CEDConfig

NUM_CLASSES = len(SYNTH_CLASSES)


def prepared_corpus(root: Path, n_train: int, n_eval: int, seconds: float) -> tuple[Path, Path]:
    """Synthesize and prepare a corpus; returns the train and eval label TSVs."""
    corpus = synthesize(root / "corpus", n_train, n_eval, clip_seconds=seconds, seed=0)
    train = prepare(corpus / "train.tsv", root / "prepared", progress=False).labels_tsv
    evaluation = prepare(corpus / "eval.tsv", root / "prepared", progress=False).labels_tsv
    return train, evaluation


def tiny_overrides(train_tsv: Path, eval_tsv: Path | None, seconds: float, out: Path) -> list[str]:
    """--set style overrides for a 2-block, 32-wide student trained for a few steps."""
    return [
        f"data.train_tsv={train_tsv}",
        f"data.eval_tsv={eval_tsv if eval_tsv else 'null'}",
        f"data.clip_seconds={seconds}",
        "model.embed_dim=32",
        "model.depth=2",
        "model.num_heads=2",
        f"model.num_classes={NUM_CLASSES}",
        "optim.warmup_steps=4",
        "optim.batch_size=8",
        "augment.time_mask_width=20",
        "augment.freq_mask_width=8",
        f"out_dir={out}",
        "progress=false",
    ]


def tiny_augment() -> AugmentConfig:
    """The augmentation ``tiny_overrides`` gives the student."""
    return AugmentConfig(time_mask_width=20, freq_mask_width=8)


def random_teacher(path: Path, seed: int = 0) -> Path:
    """An untrained 24-class teacher: enough to exercise logit storage."""
    torch.manual_seed(seed)
    return save_model(
        CED(CEDConfig(embed_dim=32, depth=1, num_heads=2, num_classes=NUM_CLASSES)), path
    )


def stored_logits(root: Path, train_tsv: Path, seconds: float, k: int = 5, epochs: int = 2) -> Path:
    """Logits of a random teacher for the tiny student's augmentation."""
    teacher = random_teacher(root / "teacher.safetensors")
    cfg = SaveLogitsConfig(
        teachers=[str(teacher)],
        train_tsv=str(train_tsv),
        out_dir=str(root / "logits"),
        k=k,
        epochs=epochs,
        augment=tiny_augment(),
        batch_size=8,
        clip_seconds=seconds,
    )
    save_logits(cfg, progress=False)
    return Path(cfg.out_dir)
