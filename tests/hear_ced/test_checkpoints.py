"""Loading every layout, safely, with errors that name the problem."""

import dataclasses
import logging
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from hear_ced.checkpoints import (
    CheckpointError,
    load_model_file,
    load_partial,
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
    assert torch.equal(load_model_file(folder)(wave), source(wave))


def test_native_round_trip_keeps_config_and_labels(tmp_path, source, wave):
    labels = [f"class {i}" for i in range(527)]
    path = save_model(source, tmp_path / "m.safetensors", labels=labels)
    loaded = load_model_file(path)
    assert loaded.config == dataclasses.replace(source.config, labels=labels)
    assert torch.equal(loaded(wave), source(wave))
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary left
    # A loaded model carries its labels into the next save; a built one has none.
    again = load_model_file(save_model(loaded, tmp_path / "again.safetensors"))
    assert again.config.labels == tuple(labels)
    assert source.config.labels is None
    assert load_model_file(save_model(source, tmp_path / "none.safetensors")).config.labels is None


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
    with pytest.raises(
        CheckpointError, match=r"missing, left at their initial values: blocks\.1\.mlp\.fc2\.bias"
    ):
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


# --------------------------------------------------------------------------
# load_partial: every start from a checkpoint (model.init, finetune's --init, inference).

TINY = CEDConfig(embed_dim=32, depth=2, num_heads=2)


def test_load_partial_reports_what_was_left_out_and_why(caplog):
    torch.manual_seed(1)
    source = CED(CEDConfig(embed_dim=32, depth=2, num_heads=2, num_classes=527))
    state = dict(source.state_dict())
    state["decoder.pred.weight"] = torch.zeros(3, 3)  # e.g. an MAE decoder
    del state["norm.bias"]
    torch.manual_seed(2)
    model = CED(CEDConfig(embed_dim=32, depth=2, num_heads=2, num_classes=24))
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    # One warning per kind left out, each naming the source and the keys.
    with caplog.at_level(logging.INFO, logger="hear_ced.checkpoints"):
        load_partial(model, state, source="mae.pt", drop=("outputlayer.0.",))
    loaded = model.state_dict()
    assert torch.equal(loaded["blocks.1.attn.qkv.weight"], state["blocks.1.attn.qkv.weight"])
    for key in ("outputlayer.1.weight", "norm.bias", "outputlayer.0.weight"):
        assert torch.equal(loaded[key], initial[key]), key  # left at the initial value
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3 and all(w.startswith("mae.pt: ") for w in warnings)
    assert "2 tensor(s) of another shape" in warnings[0]
    assert "outputlayer.1.weight (checkpoint (527, 32), model (24, 32))" in warnings[0]
    assert warnings[1].endswith(
        "1 of the model's tensor(s) missing, left at their initial values: norm.bias"
    )
    assert warnings[2].endswith("1 tensor(s) not in this model, ignored: decoder.pred.weight")
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert infos == ["mae.pt: dropped as asked: outputlayer.0.bias, outputlayer.0.weight"]


def test_load_partial_strict_refuses_anything_left_out_but_the_dropped():
    torch.manual_seed(0)
    state = dict(CED(TINY).state_dict())
    model = CED(dataclasses.replace(TINY, num_classes=5))
    with pytest.raises(
        CheckpointError, match=r"x\.pt does not fit the model; 2 tensor\(s\) of another shape"
    ):
        load_partial(model, state, source="x.pt", strict=True)
    load_partial(model, state, strict=True, drop=("outputlayer.1.",))
    assert torch.equal(model.blocks[1].attn.qkv.weight, state["blocks.1.attn.qkv.weight"])


@pytest.mark.parametrize("source_length", [512, 2048])  # interpolated, truncated
def test_load_partial_fits_a_time_position_embedding_of_another_length(source_length, caplog):
    torch.manual_seed(1)
    source = CED(dataclasses.replace(TINY, target_length=source_length))
    model = CED(TINY)
    with caplog.at_level(logging.INFO, logger="hear_ced.checkpoints"):
        load_partial(model, source.state_dict(), source="s.pt")
    positions = model.config.time_positions
    fitted = f"s.pt: time position embedding fitted from {source_length // 16} to {positions}"
    assert [r.getMessage() for r in caplog.records] == [f"{fitted} positions"]
    stored = source.state_dict()["time_pos_embed"]
    if stored.shape[-1] > positions:
        expected = stored[..., :positions]
    else:
        expected = torch.nn.functional.interpolate(
            stored, size=(1, positions), mode="bilinear", align_corners=False
        )
    assert torch.equal(model.state_dict()["time_pos_embed"], expected)
    assert torch.equal(model.blocks[0].mlp.fc1.weight, source.blocks[0].mlp.fc1.weight)


def test_load_partial_refuses_when_no_transformer_weight_fits():
    wide = CED(CEDConfig(embed_dim=64, depth=2, num_heads=2))
    model = CED(TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(
        CheckpointError, match=r"^w\.pt loads no transformer weight.*embed 64.*embed 32"
    ):
        load_partial(model, wide.state_dict(), source="w.pt")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"features.0.weight": torch.zeros(8, 1, 3, 3)}, "unrecognised checkpoint layout"),
        (  # a plain ViT/AST: one position embedding for the whole token grid
            {
                "patch_embed.proj.weight": torch.zeros(32, 1, 16, 16),
                "pos_embed": torch.zeros(1, 100, 32),
                "blocks.0.norm1.weight": torch.ones(32),
            },
            "lacks time_pos_embed, freq_pos_embed",
        ),
    ],
)
def test_load_partial_refuses_another_model_family(state, message):
    with pytest.raises(
        CheckpointError, match=f"^vit.pt is not a CED-family checkpoint: .*{message}"
    ):
        load_partial(CED(TINY), state, source="vit.pt")
