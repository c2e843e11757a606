"""Each hear-eval-kit shim: the failure it prevents, and that it is gone with the shim.

CUDA failures are reproduced on CPU with torch.cuda.is_available patched and a fake pynvml.
"""

import importlib
import os
import pickle
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from hear_ced.eval import compat


def test_librosa_mel_takes_positional_sample_rate_again(monkeypatch):
    import librosa.filters

    original = getattr(librosa.filters.mel, "__wrapped__", librosa.filters.mel)
    monkeypatch.setattr(librosa.filters, "mel", original)
    with pytest.raises(TypeError):
        librosa.filters.mel(16000, n_fft=512, n_mels=8)  # what hearbaseline.naive does
    compat.librosa_mel_positional()
    positional = librosa.filters.mel(16000, n_fft=512, n_mels=8)
    np.testing.assert_array_equal(positional, original(sr=16000, n_fft=512, n_mels=8))


def _heareval_like_checkpoint(path):
    hparams = {  # as pytorch-lightning 1.9 stores heareval's grid point
        "hidden_norm": torch.nn.BatchNorm1d,
        "embedding_norm": torch.nn.Identity,
        "initialization": torch.nn.init.xavier_uniform_,
        "optim": torch.optim.Adam,
        "lr": 1e-3,
    }
    torch.save({"epoch": 3, "state_dict": {"w": torch.ones(2)}, "hyper_parameters": hparams}, path)


def test_lightning_checkpoints_load_with_weights_only_kept_on(tmp_path):
    # weights_only=True is torch's default, which heareval's own call gets.
    path = tmp_path / "best.ckpt"
    _heareval_like_checkpoint(path)
    torch.serialization.clear_safe_globals()
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        torch.load(path, weights_only=True)
    compat.lightning_checkpoint_allowlist()
    loaded = torch.load(path, weights_only=True)
    assert loaded["epoch"] == 3 and loaded["hyper_parameters"]["optim"] is torch.optim.Adam


def test_allowlist_still_refuses_other_globals(tmp_path):
    compat.lightning_checkpoint_allowlist()
    path = tmp_path / "evil.pt"
    torch.save({"call": os.system}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)


def test_fit_loop_current_epoch_reaches_the_trainer(monkeypatch):
    import pytorch_lightning as pl
    from pytorch_lightning.loops.fit_loop import FitLoop

    monkeypatch.delattr(FitLoop, "current_epoch", raising=False)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False)
    trainer.fit_loop.current_epoch = 3  # what heareval does before testing an event model
    assert trainer.current_epoch == 0  # silently lost: heareval then fails with KeyError
    compat.fit_loop_current_epoch()
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False)
    trainer.fit_loop.current_epoch = 3
    assert trainer.current_epoch == 3


def _fake_pynvml(monkeypatch) -> None:
    """A CUDA machine's pynvml as current nvidia-ml-py has it: names come back as str."""
    fake = types.ModuleType("pynvml")
    fake.NVMLError = RuntimeError
    fake.nvmlInit = lambda: None
    fake.nvmlDeviceGetHandleByIndex = lambda index: f"handle{index}"
    fake.nvmlDeviceGetName = lambda handle: "NVIDIA Test GPU"
    fake.nvmlDeviceGetMemoryInfo = lambda handle: types.SimpleNamespace(used=0)
    monkeypatch.setitem(sys.modules, "pynvml", fake)


def test_gpu_device_name_accepts_the_str_pynvml_returns(monkeypatch):
    _fake_pynvml(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    original = sys.modules.pop("heareval.gpu_max_mem", None)
    try:
        gpu_max_mem = importlib.import_module("heareval.gpu_max_mem")  # its CUDA branch
        with pytest.raises(AttributeError, match="'str' object has no attribute 'decode'"):
            gpu_max_mem.device_name()  # heareval calls it after the work, before the done-marker
        compat.nvml_device_name_str()
        assert gpu_max_mem.device_name() == "NVIDIA Test GPU"
    finally:
        sys.modules.pop("heareval.gpu_max_mem", None)
        if original is not None:
            sys.modules["heareval.gpu_max_mem"] = original


IMPORT_RUNNER_ON_CUDA = """
import sys, types, torch
torch.cuda.is_available = lambda: True
fake = types.ModuleType("pynvml")
fake.NVMLError = RuntimeError
fake.nvmlInit = lambda: None
fake.nvmlDeviceGetHandleByIndex = lambda index: index
fake.nvmlDeviceGetName = lambda handle: "NVIDIA Test GPU"
fake.nvmlDeviceGetMemoryInfo = lambda handle: types.SimpleNamespace(used=0)
sys.modules["pynvml"] = fake
import hear_ced.eval.compat
hear_ced.eval.compat.install()
import heareval.embeddings.runner
import heareval.gpu_max_mem
import tensorflow as tf
print("imported on", heareval.gpu_max_mem.device_name(), "built with CUDA:",
      tf.test.is_built_with_cuda())
"""


@pytest.mark.slow
def test_heareval_embeddings_runner_starts_on_cuda_with_tensorflow_cpu():
    """Unpatched, heareval refuses: "GPUs not available in tensorflow, but found by pytorch"."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    patched = subprocess.run([sys.executable, "-c", IMPORT_RUNNER_ON_CUDA], env=env,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert patched.returncode == 0, patched.stderr[-2000:]
    assert "imported on NVIDIA Test GPU built with CUDA: False" in patched.stdout


def _run(command: list[str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_shims_apply_only_through_the_explicit_entry_point(tmp_path):
    (tmp_path / "load_naive.py").write_text(
        "import hearbaseline\nhearbaseline.load_model()\nprint('loaded')\n"
    )
    through_entry = _run([sys.executable, "-m", "hear_ced.eval.compat", "load_naive"], tmp_path)
    assert through_entry.stdout.strip() == "loaded", through_entry.stderr[-2000:]
    plain = _run([sys.executable, "load_naive.py"], tmp_path)  # nothing runs at start-up
    assert plain.returncode != 0 and "mel() takes 0 positional arguments" in plain.stderr


def test_a_users_own_eval_package_imports(tmp_path):
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "__init__.py").write_text("MARKER = 'the user package'\n")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", "import eval; print(eval.MARKER)"],
                          cwd=tmp_path, env=env, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "the user package", done.stderr


@pytest.mark.slow
def test_tensorflow_loads_when_first_used_not_when_heareval_imports_it(tmp_path):
    """Importing heareval and hearvalidator leaves TensorFlow unloaded yet findable; the
    hand-over on first use is what the CUDA start-up test above goes through."""
    code = (
        "import sys, importlib.util\nfrom hear_ced.eval import compat\ncompat.install()\n"
        "import heareval.embeddings.runner, hearvalidator.validate\n"
        "print(importlib.util.find_spec('tensorflow') is None, 'tensorflow.python' in sys.modules)\n"
    )
    done = _run([sys.executable, "-c", code], tmp_path)
    assert done.stdout.split() == ["False", "False"], done.stderr[-2000:]
