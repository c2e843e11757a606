"""Make hear-eval-kit 2021 (heareval, hearbaseline) run on Python 3.11 / torch 2.x and CUDA.

hear-eval-kit was written for numpy 1.19, librosa 0.8, pytorch-lightning 1.5
and torch 1.9. Each shim below repairs one concrete failure on the pinned
modern stack (its docstring names the failure) and is applied once, right after
the module that fails is imported (:data:`SHIMS`), by an import hook that
:func:`install` registers. Only the project's own processes install it:
``ced-eval hear`` starts every heareval step as ``python -m hear_ced.eval.compat MODULE
ARGS...`` (:func:`run_module`), and ``ced-eval heareval-embeddings`` /
``heareval-predictions`` do the same for a user's own heareval runs; nothing
runs at interpreter start, and no heavy package is imported before its trigger
module is.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import importlib.util
import runpy
import sys
from collections.abc import Callable
from types import ModuleType

_applied: set[str] = set()


def librosa_mel_positional() -> None:
    """Let ``librosa.filters.mel`` take (sr, n_fft, n_mels, fmin, fmax) positionally again.

    hearbaseline's naive model calls ``mel(sample_rate, ...)``; librosa >= 0.10
    made every argument keyword-only (``TypeError``).
    """
    import librosa.filters

    original = librosa.filters.mel
    names = ("sr", "n_fft", "n_mels", "fmin", "fmax")

    @functools.wraps(original)
    def mel(*args, **kwargs):
        if len(args) > len(names):
            raise TypeError(f"mel() takes at most {len(names)} positional arguments")
        kwargs.update(zip(names, args, strict=False))
        return original(**kwargs)

    librosa.filters.mel = mel


def lightning_checkpoint_allowlist() -> None:
    """Allow-list the globals heareval's Lightning checkpoints pickle, for weights_only loads.

    heareval re-reads the checkpoints it has just written; they pickle its
    grid's hyper-parameters (layers, an init function, optimisers) by reference,
    which torch >= 2.6's ``weights_only=True`` refuses. Allow-listing exactly
    those keeps every other ``torch.load`` fully protected.
    """
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
    """Give pytorch-lightning 1.9's FitLoop a writable ``current_epoch``.

    For event tasks heareval sets it to the best validation epoch so that the
    test step finds that epoch's post-processing; without the attribute the
    assignment is lost and the test step fails with ``KeyError``. The property
    reads and writes what ``trainer.current_epoch`` reports.
    """
    from pytorch_lightning.loops.fit_loop import FitLoop

    def get_epoch(loop: FitLoop) -> int:
        return loop.epoch_progress.current.completed

    def set_epoch(loop: FitLoop, epoch: int) -> None:
        loop.epoch_progress.current.completed = int(epoch)

    FitLoop.current_epoch = property(get_epoch, set_epoch, doc="Epoch the trainer reports.")


def nvml_device_name_str() -> None:
    """Let heareval's ``gpu_max_mem.device_name`` take the ``str`` current pynvml returns.

    heareval calls ``.decode`` on it (``AttributeError`` after a task's work,
    before its done-marker).
    """
    gpu_max_mem = sys.modules["heareval.gpu_max_mem"]
    get_name = getattr(gpu_max_mem, "nvmlDeviceGetName", None)
    if get_name is None:  # no CUDA: heareval's own device_name() returns "cpu"
        return

    def device_name(device_index: int = 0) -> str:
        name = get_name(gpu_max_mem.nvmlDeviceGetHandleByIndex(device_index))
        return name.decode("utf-8") if isinstance(name, bytes) else name

    gpu_max_mem.device_name = device_name


def tensorflow_cpu_gpu_check() -> None:
    """Let a CPU-only TensorFlow build pass heareval's "TensorFlow sees the GPU" check.

    TensorFlow computes nothing for a torch module; a CUDA build of TensorFlow
    that misses the GPU is still refused. heareval asks only where torch sees a GPU.
    """
    import torch

    if not torch.cuda.is_available():
        return
    import tensorflow as tf

    original = tf.test.is_gpu_available

    @functools.wraps(original)
    def is_gpu_available(*args, **kwargs) -> bool:
        return not tf.test.is_built_with_cuda() or original(*args, **kwargs)

    tf.test.is_gpu_available = is_gpu_available


# trigger module -> shims to apply once it is imported
SHIMS: dict[str, tuple[Callable[[], None], ...]] = {
    "hearbaseline": (librosa_mel_positional,),
    "heareval.predictions.task_predictions": (
        lightning_checkpoint_allowlist,
        fit_loop_current_epoch,
    ),
    "heareval.gpu_max_mem": (nvml_device_name_str,),
    "heareval.embeddings.task_embeddings": (tensorflow_cpu_gpu_check,),
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


class _TensorFlowOnUse(ModuleType):
    """Stands in for ``tensorflow`` until an attribute is read, then hands over to the real one."""

    def __getattr__(self, name: str):
        if name.startswith("__"):  # what scans of sys.modules (inspect) ask every module
            raise AttributeError(name)
        if sys.modules.get("tensorflow") is self:
            del sys.modules["tensorflow"]
            importlib.import_module("tensorflow")
        return getattr(sys.modules["tensorflow"], name)


def lazy_tensorflow() -> None:
    """Load TensorFlow when it is first used, not when heareval or hearvalidator import it.

    They import it for TensorFlow models; with a torch module it is never used,
    and loading it costs every heareval step seconds.
    """
    spec = None if "tensorflow" in sys.modules else importlib.util.find_spec("tensorflow")
    if spec is not None:
        stand_in = _TensorFlowOnUse("tensorflow")
        stand_in.__spec__ = spec  # what find_spec returns for an imported module
        sys.modules["tensorflow"] = stand_in


def install() -> None:
    """Apply shims now for trigger modules already imported, on import for the rest."""
    lazy_tensorflow()
    for trigger in SHIMS:
        if trigger in sys.modules:
            _apply(trigger)
    if not any(isinstance(finder, _ShimFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _ShimFinder())


def run_module(module: str, arguments: list[str]) -> None:
    """``python -m module arguments...`` in this process, with the shims installed."""
    install()
    sys.argv = [module, *arguments]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    # python -m hear_ced.eval.compat MODULE ARGS...: what ced-eval starts for each heareval step
    from hear_ced.eval import compat  # the importable copy, not this __main__ one

    if len(sys.argv) < 2:
        sys.exit("usage: python -m hear_ced.eval.compat MODULE [ARGS...]")
    compat.run_module(sys.argv[1], sys.argv[2:])
