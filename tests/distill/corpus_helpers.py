"""Small prepared synthetic corpora and tiny-model settings for the training tests."""

from __future__ import annotations

from pathlib import Path

from distill.data import prepare
from distill.synth import SYNTH_CLASSES, synthesize

NUM_CLASSES = len(SYNTH_CLASSES)


def prepared_corpus(root: Path, n_train: int, n_eval: int, seconds: float) -> tuple[Path, Path]:
    """Synthesize and prepare a corpus; returns the train and eval label TSVs."""
    corpus = synthesize(root / "corpus", n_train, n_eval, clip_seconds=seconds, seed=0)
    train = prepare(corpus.train_tsv, root / "prepared", progress=False).labels_tsv
    evaluation = prepare(corpus.eval_tsv, root / "prepared", progress=False).labels_tsv
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
