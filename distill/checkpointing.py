"""Atomic training checkpoints.

The resumable state (model, optimizer, counters, RNG) is one ``torch.save``
file, read back with ``weights_only`` (tensors and plain containers, no
arbitrary objects), so a resumed run continues from bit-identical state. The final weights of
``train`` and ``finetune`` are the average of their best k validation
checkpoints (:class:`BestCheckpoints`, :func:`average_checkpoints`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from hear_ced.checkpoints import load_model_file, save_model
from hear_ced.common.files import atomic_path, read_json, write_json
from hear_ced.model import CED


def save_state(path: Path, state: Mapping[str, Any]) -> Path:
    """Store a nested structure of tensors and plain values, atomically."""
    with atomic_path(path) as tmp:
        torch.save(dict(state), tmp)
    return Path(path)


def load_state(path: Path) -> dict[str, Any]:
    """Inverse of ``save_state``: ``weights_only`` admits tensors and plain containers only."""
    return torch.load(path, map_location="cpu", weights_only=True)


def average_checkpoints(paths: Sequence[str | Path], out: str | Path) -> CED:
    """Average the weights of models of one architecture into ``out``.

    The models are one run's kept checkpoints, so they share the architecture.
    Floating-point tensors are averaged; integer buffers (BatchNorm's batch
    counter) are taken from the first checkpoint.
    """
    models = [load_model_file(p) for p in paths]
    first = models[0]
    states = [m.state_dict() for m in models]
    averaged = {
        key: (
            torch.stack([s[key].double() for s in states]).mean(0).to(value.dtype)
            if value.is_floating_point()
            else value
        )
        for key, value in states[0].items()
    }
    first.load_state_dict(averaged)
    save_model(first, out)
    return first


class BestCheckpoints:
    """The k best validation checkpoints by ``metric``, on disk and indexed in ``folder/index.json``.

    Ties go to the earlier epoch and an undefined (NaN) score ranks last. The
    index is on disk, so a resumed run keeps what the stopped one had kept.
    """

    def __init__(self, folder: Path, keep: int, metric: str = "mAP") -> None:
        self.folder = folder
        self.keep = keep
        self.metric = metric
        index = folder / "index.json"
        self.entries: list[dict] = read_json(index) if index.exists() else []

    def offer(self, model: CED, epoch: int, score: float) -> bool:
        """Keep ``model`` if it is among the best k; returns whether it was kept."""
        self.entries = [e for e in self.entries if e["epoch"] != epoch]  # a re-run epoch
        ranked = sorted(self.entries + [{"epoch": epoch, self.metric: score}], key=self._rank)
        kept = ranked[: self.keep]
        if not any(e["epoch"] == epoch for e in kept):
            return False
        path = self.folder / f"epoch{epoch:04d}.safetensors"
        save_model(model, path)
        kept = [dict(e, path=str(path)) if e["epoch"] == epoch else e for e in kept]
        for dropped in self.entries:
            if dropped not in kept:
                Path(dropped["path"]).unlink(missing_ok=True)
        self.entries = kept
        write_json(self.folder / "index.json", self.entries, sort_keys=True)
        return True

    def _rank(self, entry: dict) -> tuple[float, int]:
        score = entry[self.metric]
        return (-score if not math.isnan(score) else math.inf, entry["epoch"])

    def final(self, model: CED, path: Path) -> CED:
        """The kept checkpoints averaged into ``path`` (``model`` itself when none was kept)."""
        if not self.entries:
            save_model(model, path)
            return model
        return average_checkpoints([e["path"] for e in self.entries], path)
