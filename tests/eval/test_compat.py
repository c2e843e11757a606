"""Each hear-eval-kit shim: the failure it prevents, and that it is gone with the shim."""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from eval import compat


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


def _plain_hearbaseline(extra_env: dict) -> subprocess.CompletedProcess:
    """A fresh interpreter of this environment loading hearbaseline's naive model, no eval import."""
    code = "import hearbaseline; hearbaseline.load_model(); print('loaded')"
    env = dict(os.environ, **extra_env)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_startup_hook_patches_plain_hear_eval_kit_use_and_can_be_switched_off():
    assert _plain_hearbaseline({}).stdout.strip() == "loaded"
    unpatched = _plain_hearbaseline({compat.DISABLE_ENV: "1"})
    assert unpatched.returncode != 0 and "mel() takes 0 positional arguments" in unpatched.stderr


def test_write_pth_file_is_atomic_and_imports_compat(tmp_path):
    target = compat.write_pth_file(tmp_path)
    assert target.read_text() == compat.PTH_LINE
    assert target.read_text().startswith("import eval.compat")
    assert [p.name for p in tmp_path.iterdir()] == [compat.PTH_NAME]
