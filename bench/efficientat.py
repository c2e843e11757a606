"""EfficientAT's MN10 from a checkout the user cloned, with its own 32 kHz frontend.

``python -m bench.run --mn10-src PATH`` times CED against it (without a
checkout CED's paths are timed alone). The checkout is imported, never copied: its
top-level ``models`` and ``helpers`` packages are imported with the checkout
first on ``sys.path`` and the stand-ins of ``bench.efficientat_shims`` in
``sys.modules``, and all of these names are taken out of ``sys.modules``
again afterwards (the loaded modules keep their own references).
``helpers/utils.py`` reads ``metadata/class_labels_indices.csv`` relative to
the working directory when imported, so the import runs in the checkout.

Random weights: ``get_model`` gets ``pretrained_name=None`` and the model
module's ``load_state_dict_from_url`` is replaced by a refusal, so nothing is
ever downloaded.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bench.efficientat_shims import shim_modules

SAMPLE_RATE = 32_000
N_MELS = 128
NUM_CLASSES = 527
URL = "https://github.com/fschmid56/EfficientAT"
# What ``load`` imports and reads; a folder without these is not an EfficientAT checkout.
REQUIRED = (
    "models/mn/model.py",
    "models/preprocess.py",
    "helpers/utils.py",
    "metadata/class_labels_indices.csv",
)
# Top-level names the import puts into sys.modules (the checkout's and the shims').
_TOP_LEVEL = ("models", "helpers", "torchvision", "torchaudio")


@dataclass(frozen=True)
class Checkout:
    """A folder holding EfficientAT's code, and its git commit (None outside git)."""

    path: Path
    commit: str | None

    @property
    def label(self) -> str:
        """The peer's name in the report: ``EfficientAT MN10 (commit a425fdc)``."""
        return f"EfficientAT MN10 (commit {self.commit[:7] if self.commit else 'unknown'})"


def find_checkout(path: str | os.PathLike) -> Checkout:
    """``path`` as an EfficientAT checkout; ValueError naming the missing file otherwise."""
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise ValueError(f"{path} is not an EfficientAT checkout: no such folder (clone {URL})")
    missing = [name for name in REQUIRED if not (root / name).is_file()]
    if missing:
        raise ValueError(f"{path} is not an EfficientAT checkout: no {missing[0]} (clone {URL})")
    return Checkout(root, _git_commit(root))


def _git_commit(root: Path) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _owned(name: str) -> bool:
    return name.split(".")[0] in _TOP_LEVEL


@contextlib.contextmanager
def _importing_from(root: Path) -> Iterator[None]:
    """The checkout importable (and the working directory) for the block, the shims installed."""
    saved = {name: module for name, module in sys.modules.items() if _owned(name)}
    for name in saved:
        del sys.modules[name]
    sys.modules.update(shim_modules())
    sys.path.insert(0, str(root))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        yield
    finally:
        os.chdir(cwd)
        sys.path.remove(str(root))
        for name in [name for name in sys.modules if _owned(name)]:
            del sys.modules[name]
        sys.modules.update(saved)


def _no_download(url: str, *args, **kwargs):
    raise RuntimeError(f"the benchmark uses random weights; refusing to download {url}")


def load(checkout: Checkout, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """EfficientAT's frontend (``AugmentMelSTFT``, 32 kHz, 128 mels) and MN10, random weights, eval.

    The frontend maps (B, samples) to (B, 128, frames); the model takes that
    with a channel axis and returns (logits, features), as in EfficientAT's
    ``inference.py``. Imports print the model list, ``get_model`` the model and
    ``AugmentMelSTFT`` its default fmax: EfficientAT's chatter is silenced.
    """
    with _importing_from(checkout.path), contextlib.redirect_stdout(io.StringIO()):
        model_module = importlib.import_module("models.mn.model")
        preprocess = importlib.import_module("models.preprocess")
        model_module.load_state_dict_from_url = _no_download
        torch.manual_seed(seed)
        model = model_module.get_model(
            num_classes=NUM_CLASSES, pretrained_name=None, width_mult=1.0
        )
        frontend = preprocess.AugmentMelSTFT(n_mels=N_MELS, sr=SAMPLE_RATE)
    return frontend.eval(), model.eval()
