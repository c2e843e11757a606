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
import copy
import importlib
import io
import os
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import torch
import torch.nn.functional as F

from bench.common import count_macs, param_count
from bench.efficientat_shims import shim_modules
from hear_ced.fast import native_bf16
from hear_ced.frontend import SAMPLE_RATE as CED_SAMPLE_RATE

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


def find_checkout(path: str | os.PathLike) -> Path:
    """``path`` as an EfficientAT checkout, checked before anything is measured: otherwise
    a one-line error naming the missing file."""
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise click.ClickException(
            f"{path} is not an EfficientAT checkout: no such folder (clone {URL})"
        )
    missing = [name for name in REQUIRED if not (root / name).is_file()]
    if missing:
        raise click.ClickException(
            f"{path} is not an EfficientAT checkout: no {missing[0]} (clone {URL})"
        )
    return root


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


class MN10:
    """EfficientAT's frontend (``AugmentMelSTFT``, 32 kHz, 128 mels) and MN10, random
    weights, eval, run from audio as CED is (its frontend included).

    ``variants``: layout/precision name -> (network, input dtype, memory format):
    float32 in both memory layouts, and bf16 channels-last where the CPU has
    native bf16. Each network takes the frontend's (B, 128, frames) with a
    channel axis and returns (logits, features), as in EfficientAT's
    ``inference.py``.
    """

    def __init__(self, checkout: Path, seed: int = 0) -> None:
        # Imports print the model list, get_model the model and AugmentMelSTFT its fmax.
        with _importing_from(checkout), contextlib.redirect_stdout(io.StringIO()):
            model_module = importlib.import_module("models.mn.model")
            preprocess = importlib.import_module("models.preprocess")
            model_module.load_state_dict_from_url = _no_download
            torch.manual_seed(seed)
            model = model_module.get_model(
                num_classes=NUM_CLASSES, pretrained_name=None, width_mult=1.0
            ).eval()
            self.frontend = preprocess.AugmentMelSTFT(n_mels=N_MELS, sr=SAMPLE_RATE).eval()
        self.checkout, self.commit = checkout, _git_commit(checkout)
        self.variants = {"fp32": (model, torch.float32, torch.contiguous_format)}
        self.variants["fp32-channels-last"] = (
            copy.deepcopy(model).to(memory_format=torch.channels_last),
            torch.float32,
            torch.channels_last,
        )
        if native_bf16():
            self.variants["bf16-channels-last"] = (
                copy.deepcopy(model).to(dtype=torch.bfloat16, memory_format=torch.channels_last),
                torch.bfloat16,
                torch.channels_last,
            )

    def features(self, audio32: torch.Tensor) -> torch.Tensor:
        """The network's float32 (B, 1, mels, frames) input of a 32 kHz waveform (B, samples)."""
        return self.frontend(audio32)[:, None]

    def info(self) -> dict:
        """What results.json records: which MN10, its size and MACs (network only)."""
        net = self.variants["fp32"][0]
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EfficientAT's deprecated torch calls
            feats = self.features(torch.zeros(1, 10 * SAMPLE_RATE))
        return {
            "name": f"EfficientAT MN10 (commit {(self.commit or 'unknown')[:7]})",
            "source": str(self.checkout),
            "commit": self.commit,
            "params": param_count(net),
            "macs": count_macs(net, feats),
        }

    def fns(self, audio: torch.Tensor) -> dict[str, Callable[[], object]]:
        """One callable per variant on ``audio`` (16 kHz, resampled to 32 kHz once, untimed)."""
        audio32 = F.interpolate(
            audio[:, None], scale_factor=SAMPLE_RATE / CED_SAMPLE_RATE, mode="linear"
        )[:, 0]
        fns = {}
        for name, (net, dtype, layout) in self.variants.items():

            def run(net=net, dtype=dtype, layout=layout) -> object:
                return net(self.features(audio32).to(dtype=dtype, memory_format=layout))

            fns[f"mn10:{name}"] = run
        return fns
