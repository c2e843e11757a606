"""Writing the Hugging Face layout (``hear-ced convert --to hf``) and reading it back."""

import dataclasses
import json
import logging

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file

from hear_ced.checkpoints import (
    HF_CODE_FILES,
    CheckpointError,
    load_model_file,
    read_checkpoint,
    save_huggingface,
    save_model,
)
from hear_ced.cli import main
from hear_ced.labels import audioset_labels
from hear_ced.model import CED, CEDConfig, variant_config
from hear_ced.tagging import predict

from .layouts import huggingface_state, randomize_batchnorm
from .layouts import save_huggingface as save_published

# A student of no published size: head width 24 (not the published 64, so the
# head count can only come from config.json), 5 classes, a 5.12 s input window.
CUSTOM = CEDConfig(
    embed_dim=96, depth=2, num_heads=4, mlp_ratio=2.0, num_classes=5, target_length=512
)
CUSTOM_LABELS = ["dog", "door", "kettle", "rain", "speech"]
NAMED = dataclasses.replace(CUSTOM, labels=CUSTOM_LABELS)
FILES = {"config.json", "model.safetensors", "preprocessor_config.json", *HF_CODE_FILES}


@pytest.fixture(scope="module")
def wave():
    torch.manual_seed(1)
    # 12 s: longer than the custom model's 5.12 s passes, so every pass is compared too.
    return torch.randn(2, 192000) * 0.1


@pytest.fixture(scope="module")
def tiny_native(tmp_path_factory):
    """A 527-class CED-tiny in the native format, without stored class names."""
    torch.manual_seed(0)
    # torch's default layer initialisation (random, and cheaper than CED's own).
    model = CED(variant_config("tiny"), initialize=False)
    with torch.no_grad():
        model.time_pos_embed.normal_(std=0.02)
        model.freq_pos_embed.normal_(std=0.02)
    return save_model(randomize_batchnorm(model), tmp_path_factory.mktemp("t") / "tiny.safetensors")


@pytest.fixture(scope="module")
def custom_native(tmp_path_factory):
    torch.manual_seed(0)
    model = randomize_batchnorm(CED(CUSTOM))
    path = tmp_path_factory.mktemp("custom") / "student.safetensors"
    return save_model(model, path, labels=CUSTOM_LABELS)


def _config(folder):
    return json.loads((folder / "config.json").read_text())


@pytest.mark.slow
def test_tiny_round_trip_gives_identical_logits_and_audioset_names(tmp_path, tiny_native, wave):
    source = load_model_file(tiny_native)
    assert source.config.labels is None
    folder = save_huggingface(source, tmp_path / "ced-tiny-hf")
    assert {p.name for p in folder.iterdir()} == FILES  # no temporary left
    loaded = load_model_file(folder)
    assert loaded.config == dataclasses.replace(source.config, labels=audioset_labels())
    with torch.no_grad():
        assert torch.equal(loaded(wave[:1, :16000]), source(wave[:1, :16000]))
    config = _config(folder)
    assert config["name"] == "ced-tiny"
    assert (config["embed_dim"], config["depth"], config["num_heads"]) == (192, 12, 3)


def test_custom_round_trip_keeps_sizes_labels_and_logits(tmp_path, custom_native, wave):
    source = load_model_file(custom_native)
    folder = save_huggingface(source, tmp_path / "student-hf")
    assert {p.name for p in folder.iterdir()} == FILES  # no temporary left
    # Readable as any new file, not private as safetensors alone leaves it.
    modes = {(folder / name).stat().st_mode & 0o777 for name in FILES}
    assert len(modes) == 1
    loaded = load_model_file(folder)
    assert loaded.config == dataclasses.replace(CUSTOM, labels=CUSTOM_LABELS)
    for clip in wave:  # longer than one pass: every pass is compared
        assert torch.equal(predict(loaded, clip), predict(source, clip))
    state, config = read_checkpoint(folder)
    assert (config.num_heads, config.target_length) == (4, 512)
    assert config.labels == tuple(CUSTOM_LABELS)


def test_config_json_describes_the_model(tmp_path, custom_native):
    folder = save_huggingface(load_model_file(custom_native), tmp_path / "hf")
    config = _config(folder)
    assert config["model_type"] == "ced"
    assert config["architectures"] == ["CedForAudioClassification"]
    # Not one of the four published names, whose sizes the published CedConfig imposes.
    assert config["name"] == "ced-custom"
    expected = {
        "embed_dim": 96,
        "depth": 2,
        "num_heads": 4,
        "mlp_ratio": 2.0,
        "patch_size": 16,
        "patch_stride": 16,
        "n_mels": 64,
        "target_length": 512,
        "outputdim": 5,
        "qkv_bias": True,
        "pooling": "mean",
    }
    assert {key: config[key] for key in expected} == expected
    assert config["id2label"] == {str(i): name for i, name in enumerate(CUSTOM_LABELS)}
    assert config["label2id"] == {name: i for i, name in enumerate(CUSTOM_LABELS)}
    features = json.loads((folder / "preprocessor_config.json").read_text())
    assert (features["sampling_rate"], features["feature_size"], features["hop_size"]) == (
        16000,
        64,
        160,
    )


def _published_mini_keys() -> set[str]:
    """REFERENCE.md section 3's 161 original mini keys, renamed to the Hugging Face layout."""
    original = [
        "front_end.0.spectrogram.window",
        "front_end.0.mel_scale.fb",
        *(f"init_bn.1.{n}" for n in ("weight", "bias", "running_mean", "running_var")),
        "init_bn.1.num_batches_tracked",
        "time_pos_embed",
        "freq_pos_embed",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        *(
            f"blocks.{i}.{name}"
            for i in range(12)
            for name in (
                "norm1.weight",
                "norm1.bias",
                "attn.qkv.weight",
                "attn.qkv.bias",
                "attn.proj.weight",
                "attn.proj.bias",
                "norm2.weight",
                "norm2.bias",
                "mlp.fc1.weight",
                "mlp.fc1.bias",
                "mlp.fc2.weight",
                "mlp.fc2.bias",
            )
        ),
        "norm.weight",
        "norm.bias",
        "outputlayer.0.weight",
        "outputlayer.0.bias",
        "outputlayer.1.weight",
        "outputlayer.1.bias",
    ]
    assert len(original) == 161
    renamed = set()
    for key in original:
        if key.startswith("front_end."):
            continue
        key = key.replace("init_bn.1.", "init_bn.")
        renamed.add(key if key.startswith("outputlayer.") else f"encoder.{key}")
    return renamed


def test_written_keys_are_the_published_layout(tmp_path):
    torch.manual_seed(0)
    model = CED(variant_config("mini"))  # initialised: uninitialised memory may hold NaN
    folder = save_huggingface(model, tmp_path / "ced-mini-hf")
    written = load_file(folder / "model.safetensors")
    assert set(written) == _published_mini_keys()
    shapes = {
        "encoder.time_pos_embed": (1, 256, 1, 63),
        "encoder.freq_pos_embed": (1, 256, 4, 1),
        "encoder.init_bn.running_var": (64,),
        "encoder.patch_embed.proj.weight": (256, 1, 16, 16),
        "encoder.blocks.11.attn.qkv.weight": (768, 256),
        "encoder.blocks.0.mlp.fc1.weight": (1024, 256),
        "outputlayer.1.weight": (527, 256),
    }
    assert {key: tuple(written[key].shape) for key in shapes} == shapes
    published = huggingface_state(model)
    assert all(torch.equal(written[key], published[key]) for key in published)
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        assert handle.metadata() == {"format": "pt"}  # what transformers checks; nothing else
    assert _config(folder)["name"] == "ced-mini"


def test_unnamed_outputs_get_numbered_names_with_a_warning(tmp_path, caplog):
    model = CED(CEDConfig(embed_dim=64, depth=1, num_heads=1, num_classes=3))
    with caplog.at_level(logging.WARNING, logger="hear_ced.labels"):
        folder = save_huggingface(model, tmp_path / "hf")
    assert "stores no class names" in caplog.text
    assert load_model_file(folder).config.labels == ("class 0", "class 1", "class 2")


def test_bad_class_names_are_refused(tmp_path):
    labels = ("x", "y", "x")
    model = CED(CEDConfig(embed_dim=64, depth=1, num_heads=1, num_classes=3, labels=labels))
    with pytest.raises(CheckpointError, match="unique.*repeated: x"):
        save_huggingface(model, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_non_empty_folder_is_refused_unless_forced(tmp_path):
    model = CED(CEDConfig(embed_dim=64, depth=1, num_heads=1, num_classes=2, labels=("a", "b")))
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "README.md").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty.*README.md"):
        save_huggingface(model, folder)
    assert [p.name for p in folder.iterdir()] == ["README.md"]
    save_huggingface(model, folder, force=True)
    assert {p.name for p in folder.iterdir()} == FILES | {"README.md"}
    assert (folder / "README.md").read_text() == "mine"
    (tmp_path / "file").write_text("")
    with pytest.raises(FileExistsError, match="not a folder"):
        save_huggingface(model, tmp_path / "file", force=True)


def test_config_json_contradicting_the_weights_is_an_error(tmp_path):
    folder = save_huggingface(CED(NAMED), tmp_path / "hf")
    config = _config(folder)
    (folder / "config.json").write_text(json.dumps({**config, "embed_dim": 192}))
    with pytest.raises(CheckpointError, match="embed_dim 192, but the weights are for 96"):
        load_model_file(folder)
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "vit"}))
    with pytest.raises(CheckpointError, match="model_type 'vit', not a CED"):
        load_model_file(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        load_model_file(folder)


def test_id2label_that_does_not_fit_is_ignored_with_a_warning(tmp_path, caplog):
    folder = save_huggingface(CED(NAMED), tmp_path / "hf")
    config = _config(folder)
    # transformers' default for a config without names: two LABEL_i entries.
    config["id2label"] = {"0": "LABEL_0", "1": "LABEL_1"}
    (folder / "config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING, logger="hear_ced.checkpoints"):
        assert load_model_file(folder).config.labels is None
    assert "id2label does not name the model's 5 outputs" in caplog.text


def test_published_folder_names_come_from_its_config(tmp_path):
    """A mispeech/ced-* style folder: weights from the port, names from its config.json."""
    torch.manual_seed(0)
    model = CED(CEDConfig(embed_dim=128, depth=2, num_heads=2))
    folder = save_published(model, tmp_path / "ced-hf")
    names = [f"sound {i}" for i in range(527)]
    (folder / "config.json").write_text(
        json.dumps({"model_type": "ced", "id2label": dict(enumerate(names))})
    )
    assert read_checkpoint(folder)[1].labels == tuple(names)


def test_cli_convert_to_hf(tmp_path, custom_native, wave):
    target = tmp_path / "hub-upload"
    runner = CliRunner()
    result = runner.invoke(main, ["convert", str(custom_native), str(target), "--to", "hf"])
    assert result.exit_code == 0, result.output
    assert f"to {target}" in result.output
    assert load_model_file(target).config.labels == tuple(CUSTOM_LABELS)
    again = runner.invoke(main, ["convert", str(custom_native), str(target), "--to", "hf"])
    assert again.exit_code == 1
    assert "Error:" in again.output and "not empty" in again.output
    assert "Traceback" not in again.output
    forced = runner.invoke(
        main, ["convert", str(custom_native), str(target), "--to", "hf", "--force"]
    )
    assert forced.exit_code == 0, forced.output
