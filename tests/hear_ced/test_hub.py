"""Weights from the Hugging Face Hub: a local cache in the Hub's layout, no network."""

import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import huggingface_hub.constants
import numpy as np
import pytest
import soundfile as sf
import torch

import hear_ced.weights as weights
from hear_ced.checkpoints import load_model_file
from hear_ced.model import build_model
from hear_ced.tagging import load_tagger, predict

from .layouts import save_huggingface

REVISION = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(root: Path, model, variant: str, safetensors: bool = True) -> Path:
    """``models--mispeech--ced-VARIANT`` with one snapshot and refs/main, as huggingface_hub keeps it."""
    repo = root / f"models--mispeech--ced-{variant}"
    snapshot = save_huggingface(model, repo / "snapshots" / REVISION, safetensors=safetensors)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "ced"}))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)
    return snapshot


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(3)
    return build_model("tiny").eval()


@pytest.fixture
def hub_env(monkeypatch, tmp_path):
    """Nothing but the Hugging Face cache holds weights."""
    monkeypatch.delenv(weights.ENV_WEIGHTS, raising=False)
    monkeypatch.setenv(weights.ENV_CACHE, str(tmp_path / "empty"))
    monkeypatch.setenv(weights.ENV_OFFLINE, "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_offline_hub_cache_gives_the_same_model_as_the_file(hub_env, tiny_model, tmp_path):
    snapshot = hub_cache(hub_env, tiny_model, "tiny")
    path = weights.resolve_weights("tiny")
    assert path == snapshot / "model.safetensors"
    from_hub = load_tagger("tiny")
    reference = tmp_path / "ref"
    save_huggingface(tiny_model, reference)
    from_file = load_model_file(reference / "model.safetensors", variant="tiny")
    wave = torch.randn(16000) * 0.1
    assert torch.equal(predict(from_hub, wave), predict(from_file, wave))


def test_safetensors_preferred_pickle_as_fallback(hub_env, tiny_model):
    snapshot = hub_cache(hub_env, tiny_model, "tiny", safetensors=False)
    assert weights.resolve_weights("tiny") == snapshot / "pytorch_model.bin"
    save_huggingface(tiny_model, snapshot)  # now both files
    assert weights.resolve_weights("tiny") == snapshot / "model.safetensors"


def test_env_weights_still_come_first(hub_env, tiny_model, monkeypatch, tmp_path):
    hub_cache(hub_env, tiny_model, "tiny")
    own = save_huggingface(tiny_model, tmp_path / "own") / "model.safetensors"
    monkeypatch.setenv(weights.ENV_WEIGHTS, str(own))
    assert weights.resolve_weights("tiny") == own


def test_online_fetches_from_the_hub(hub_env, tiny_model, monkeypatch, tmp_path):
    served = save_huggingface(tiny_model, tmp_path / "served") / "model.safetensors"
    calls = []

    def fake_download(repo_id, filename, **options):
        calls.append((repo_id, filename))
        return str(served)

    monkeypatch.delenv(weights.ENV_OFFLINE)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(weights, "hub_unreachable", lambda repo, filename: None)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert weights.resolve_weights("tiny") == served
    assert calls == [("mispeech/ced-tiny", "model.safetensors")]


def test_hf_hub_offline_is_honoured(hub_env, monkeypatch):
    monkeypatch.delenv(weights.ENV_OFFLINE)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(
        huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("downloaded while offline")
    )
    with pytest.raises(weights.WeightsNotFoundError, match="downloads are off") as info:
        weights.resolve_weights("tiny")
    assert "mispeech/ced-tiny" in str(info.value)


def test_cli_tags_from_the_hub_cache_with_hf_hub_offline(tiny_model, tmp_path):
    """`hear-ced tag -m tiny` in a fresh process: HF_HOME's cache, HF_HUB_OFFLINE=1."""
    hub_cache(tmp_path / "hf_home" / "hub", tiny_model, "tiny")
    t = np.arange(16000) / 16000
    wav = tmp_path / "tone.wav"
    sf.write(wav, 0.3 * np.sin(2 * np.pi * 660 * t), 16000)
    env = {k: v for k, v in os.environ.items() if k not in (weights.ENV_WEIGHTS, "HF_HUB_CACHE")}
    env.update(
        HF_HOME=str(tmp_path / "hf_home"),
        HF_HUB_OFFLINE="1",
        HEAR_CED_CACHE=str(tmp_path / "empty"),
        PYTHONPATH=os.pathsep.join(sys.path),
    )
    env.pop(weights.ENV_OFFLINE, None)
    command = [
        str(Path(sys.executable).parent / "hear-ced"),
        "tag",
        str(wav),
        "-m",
        "tiny",
        "--exact",
        "--json",
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    tags = json.loads(result.stdout)["tags"]
    from hear_ced.audio import read_clip
    from hear_ced.labels import audioset_labels

    expected = predict(tiny_model, read_clip(wav))
    top = int(expected.argmax())
    assert tags[0]["label"] == audioset_labels()[top]
    assert tags[0]["probability"] == pytest.approx(float(expected[top]), abs=1e-6)
