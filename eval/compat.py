"""Make hear-eval-kit 2021 (heareval, hearbaseline) run on Python 3.11 / torch 2.x.

hear-eval-kit was written for numpy 1.19, librosa 0.8, pytorch-lightning 1.5 and
torch 1.9. Each shim below repairs one concrete failure on the pinned modern
stack, and only touches the module that fails:

``librosa_mel_positional`` (on import of ``hearbaseline``)
    hearbaseline's naive model calls ``librosa.filters.mel(sample_rate, ...)``;
    librosa >= 0.10 made every argument keyword-only -> ``TypeError: mel() takes
    0 positional arguments``. The shim accepts the old positional order.

``lightning_checkpoint_allowlist`` (on import of ``heareval.predictions.task_predictions``)
    heareval re-reads the Lightning checkpoints it has just written
    (its ``torch.load`` of ``best_model_path`` and ``trainer.test(ckpt_path=...)``). They
    pickle the grid-search hyper-parameters (torch.nn.BatchNorm1d, an init
    function, torch.optim.Adam) by reference, which torch >= 2.6's
    default ``weights_only=True`` refuses -> ``UnpicklingError: Weights only load
    failed``. Instead of switching ``weights_only`` off, the shim allow-lists
    exactly those globals, so every other ``torch.load`` keeps full protection.

``fit_loop_current_epoch`` (same trigger)
    For event tasks heareval sets ``trainer.fit_loop.current_epoch`` to the best
    validation epoch before testing, so the test step looks up the
    post-processing chosen at that epoch. pytorch-lightning 1.9 has no such
    attribute on the fit loop: the assignment silently creates an unused one and
    the test step fails with ``KeyError`` in
    ``epoch_best_postprocessing_or_default``. The shim adds a property that reads
    and writes ``epoch_progress.current.completed``, what ``trainer.current_epoch``
    reports.

How they are applied: :func:`install` registers an import hook that runs a
shim right after its trigger module is imported (or at once if it already is).
``make install`` writes ``hear_ced_eval_compat.pth`` into the virtualenv's
site-packages (:func:`write_pth_file`), so plain ``python -m
heareval.embeddings.runner ...`` runs patched too. Importing this module costs
nothing: no heavy package is imported until its trigger module is. Set
``CED_EVAL_NO_COMPAT=1`` to switch every shim off (to see the original errors).
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import os
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

DISABLE_ENV = "CED_EVAL_NO_COMPAT"
PTH_NAME = "hear_ced_eval_compat.pth"
PTH_LINE = "import eval.compat as _ced_eval_compat; _ced_eval_compat.install()\n"

_applied: set[str] = set()


def librosa_mel_positional() -> None:
    """Let ``librosa.filters.mel`` take (sr, n_fft, n_mels, fmin, fmax) positionally again."""
    import librosa.filters

    original = librosa.filters.mel
    if getattr(original, "_ced_positional", False):
        return
    names = ("sr", "n_fft", "n_mels", "fmin", "fmax")

    @functools.wraps(original)
    def mel(*args, **kwargs):
        if len(args) > len(names):
            raise TypeError(f"mel() takes at most {len(names)} positional arguments")
        kwargs.update(zip(names, args, strict=False))
        return original(**kwargs)

    mel._ced_positional = True  # type: ignore[attr-defined]
    librosa.filters.mel = mel


def lightning_checkpoint_allowlist() -> None:
    """Allow-list the globals heareval's Lightning checkpoints pickle, for weights_only loads."""
    import torch

    torch.serialization.add_safe_globals(
        [
            torch.nn.BatchNorm1d,
            torch.nn.LayerNorm,
            torch.nn.Identity,
            torch.nn.init.xavier_uniform_,
            torch.nn.init.xavier_normal_,
            torch.optim.Adam,
            torch.optim.SGD,
        ]
    )


def fit_loop_current_epoch() -> None:
    """Give pytorch-lightning 1.9's FitLoop a writable ``current_epoch``."""
    from pytorch_lightning.loops.fit_loop import FitLoop

    if isinstance(FitLoop.__dict__.get("current_epoch"), property):
        return

    def get_epoch(loop: FitLoop) -> int:
        return loop.epoch_progress.current.completed

    def set_epoch(loop: FitLoop, epoch: int) -> None:
        loop.epoch_progress.current.completed = int(epoch)

    FitLoop.current_epoch = property(get_epoch, set_epoch, doc="Epoch the trainer reports.")


# trigger module -> shims to apply once it is imported
SHIMS: dict[str, tuple[Callable[[], None], ...]] = {
    "hearbaseline": (librosa_mel_positional,),
    "heareval.predictions.task_predictions": (
        lightning_checkpoint_allowlist,
        fit_loop_current_epoch,
    ),
}


def _apply(trigger: str) -> None:
    for shim in SHIMS[trigger]:
        if shim.__name__ not in _applied:
            shim()
            _applied.add(shim.__name__)


class _ApplyAfterExec(importlib.abc.Loader):
    """Wraps a module's real loader and applies its shims once the module has run."""

    def __init__(self, loader: importlib.abc.Loader, trigger: str) -> None:
        self._loader = loader
        self._trigger = trigger

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        _apply(self._trigger)

    def __getattr__(self, name: str):
        # get_data, get_resource_reader, ...: everything else is the real loader's
        return getattr(self._loader, name)


class _ShimFinder(importlib.abc.MetaPathFinder):
    """Finds trigger modules through the other finders and wraps their loaders."""

    def find_spec(self, fullname, path, target=None):  # noqa: ANN001 (importlib signature)
        if fullname not in SHIMS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _ApplyAfterExec(spec.loader, fullname)
                return spec
        return None


def enabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip().lower() not in ("1", "true", "yes")


def install() -> None:
    """Apply shims now for trigger modules already imported, on import for the rest."""
    if not enabled():
        return
    for trigger in SHIMS:
        if trigger in sys.modules:
            _apply(trigger)
    if not any(isinstance(finder, _ShimFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _ShimFinder())


def write_pth_file(site_packages: str | os.PathLike | None = None) -> Path:
    """Install the start-up hook into site-packages (what ``make install`` runs)."""
    folder = Path(site_packages or sysconfig.get_paths()["purelib"])
    target = folder / PTH_NAME
    temporary = folder / f".{PTH_NAME}.tmp"
    temporary.write_text(PTH_LINE)
    os.replace(temporary, target)
    return target


if __name__ == "__main__":
    print(f"wrote {write_pth_file()}")
