"""Loading every layout, safely, with errors that name the problem."""

import logging
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from hear_ced.checkpoints import (
    CheckpointError,
    detect_layout,
    load_model_file,
    read_checkpoint,
    save_model,
)
from hear_ced.model import CED, CEDConfig, build_model

from .layouts import original_state, randomize_batchnorm, save_huggingface, save_original

# Head width 64, as in every published size: files without a config get
# their head count from that convention.
SMALL = CEDConfig(embed_dim=128, depth=2, num_heads=2)


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(0)
    return randomize_batchnorm(CED(SMALL))


@pytest.fixture(scope="module")
def wave():
    return torch.randn(2, 24000) * 0.1


@pytest.mark.parametrize("wrapped", [True, False])
def test_original_layout(tmp_path, source, wave, wrapped):
    path = save_original(source, tmp_path / "ced.pt", wrapped=wrapped)
    loaded = load_model_file(path)
    assert loaded.config == source.config
    assert torch.equal(loaded(wave), source(wave))


@pytest.mark.parametrize("use_safetensors", [True, False])
def test_huggingface_layout(tmp_path, source, wave, use_safetensors):
    folder = save_huggingface(source, tmp_path / "ced-hf", safetensors=use_safetensors)
    assert detect_layout(read_checkpoint(folder)[0]) == "huggingface"
    assert torch.equal(load_model_file(folder)(wave), source(wave))


def test_native_round_trip_keeps_config_and_labels(tmp_path, source, wave):
    labels = [f"class {i}" for i in range(527)]
    path = save_model(source, tmp_path / "m.safetensors", labels=labels)
    loaded = load_model_file(path)
    assert loaded.config == source.config
    assert loaded.labels == labels
    assert torch.equal(loaded(wave), source(wave))
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary left
    # A loaded model carries its labels into the next save; a built one has none.
    again = load_model_file(save_model(loaded, tmp_path / "again.safetensors"))
    assert again.labels == labels
    assert source.labels is None
    assert load_model_file(save_model(source, tmp_path / "none.safetensors")).labels is None


def test_published_sizes_detected(tmp_path):
    path = save_original(build_model("mini"), tmp_path / "mini.pt")
    assert load_model_file(path, variant="mini").config.num_heads == 4
    with pytest.raises(CheckpointError, match="CED-mini.*not the requested CED-tiny"):
        load_model_file(path, variant="tiny")


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned_by_checkpoint",))


def test_code_executing_pickle_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"model": _Exploit()}, fh, protocol=2)
    with pytest.raises(CheckpointError, match="refusing"):
        load_model_file(path)
    assert not (tmp_path / "pwned_by_checkpoint").exists()


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere"):
        load_model_file(tmp_path / "nothere.pt")


@pytest.mark.parametrize("name", ["ced.pt", "ced.safetensors"])
def test_truncated_file(tmp_path, source, name):
    path = tmp_path / name
    if name.endswith(".pt"):
        save_original(source, path)
    else:
        save_model(source, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable"):
        load_model_file(path)


def test_missing_key_is_named(tmp_path, source):
    state = original_state(source)
    del state["blocks.1.mlp.fc2.bias"]
    torch.save(state, tmp_path / "ced.pt")
    with pytest.raises(CheckpointError, match=r"missing keys: blocks\.1\.mlp\.fc2\.bias"):
        load_model_file(tmp_path / "ced.pt")


def test_shape_mismatch_is_named(tmp_path, source):
    state = original_state(source)
    state["blocks.0.attn.proj.bias"] = torch.zeros(7)
    torch.save(state, tmp_path / "ced.pt")
    with pytest.raises(CheckpointError, match=r"blocks\.0\.attn\.proj\.bias.*\(7,\)"):
        load_model_file(tmp_path / "ced.pt")


def test_not_a_ced_checkpoint(tmp_path):
    save_file({"weight": torch.zeros(3)}, tmp_path / "x.safetensors")
    with pytest.raises(CheckpointError, match="unrecognised checkpoint layout"):
        load_model_file(tmp_path / "x.safetensors")


@pytest.mark.parametrize("positions", [40, 101])
def test_time_positions_interpolated_or_truncated(tmp_path, source, positions):
    state = original_state(source)
    pos = torch.randn(1, 128, 1, positions)
    state["time_pos_embed"] = pos
    torch.save(state, tmp_path / "ced.pt")
    loaded = load_model_file(tmp_path / "ced.pt")
    got = loaded.time_pos_embed.detach()
    assert got.shape == (1, 128, 1, 63)
    if positions > 63:
        assert torch.equal(got, pos[..., :63])
    else:
        # Interpolation keeps the ends' neighbourhood and the overall range.
        assert torch.allclose(got[..., 0], pos[..., 0], atol=0.5 * pos.std())
        assert got.abs().max() <= pos.abs().max() + 1e-6


def test_filterbank_mismatch_warns(tmp_path, source, caplog):
    state = original_state(source)
    torch.save(state, tmp_path / "same.pt")
    state["front_end.0.mel_scale.fb"] = state["front_end.0.mel_scale.fb"] * 2
    torch.save(state, tmp_path / "ced.pt")
    with caplog.at_level(logging.WARNING, logger="hear_ced.checkpoints"):
        load_model_file(tmp_path / "same.pt")
        assert not caplog.records
        load_model_file(tmp_path / "ced.pt")
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "filterbank differs" in caplog.records[0].getMessage()
