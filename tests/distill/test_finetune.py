"""`ced-distill finetune` on synthetic classes, and its data handling."""

import dataclasses
import json
from pathlib import Path

import click
import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

import hear_ced.distill.engine
import hear_ced.distill.finetune
from hear_ced.audio import read_clip
from hear_ced.checkpoints import load_model_file, save_model
from hear_ced.cli import main as hear_main
from hear_ced.common.config import ConfigError
from hear_ced.distill.cli import main as distill_main
from hear_ced.distill.finetune import (
    Example,
    FinetuneConfig,
    finetune,
    read_dataset,
    split_examples,
    still_improving,
)
from hear_ced.model import CED, CEDConfig
from hear_ced.tagging import ModelTagger

# Tones whose mel bins sit at different places in different frequency patches,
# so a small randomly initialised model can learn them in a few epochs.
PITCHES = {"low": 460.0, "mid": 1150.0, "high": 2150.0}


def write_tone(path: Path, pitch: float, rng: np.random.Generator, rate: int = 8000) -> Path:
    """A stereo tone of 0.8-1.5 s at ``rate`` with random level, phase and noise."""
    t = np.arange(int(rate * rng.uniform(0.8, 1.5))) / rate
    tone = rng.uniform(0.1, 0.5) * np.sin(
        2 * np.pi * pitch * rng.uniform(0.95, 1.05) * t + rng.uniform(0, 2 * np.pi)
    )
    tone += 0.02 * rng.standard_normal(t.size)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.stack([tone, rng.uniform(0.3, 1.0) * tone], axis=1), rate)
    return path


def class_folders(root: Path, per_class: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for name, pitch in PITCHES.items():
        for i in range(per_class):
            write_tone(root / name / f"{i}.wav", pitch, rng)
    return root


@pytest.fixture(scope="module")
def init_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = CED(CEDConfig(embed_dim=64, depth=1, num_heads=1))
    return str(save_model(model, tmp_path_factory.mktemp("init") / "init.safetensors"))


def invoke(main, args):
    result = CliRunner().invoke(main, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result


@pytest.mark.slow
def test_finetuned_model_tags_held_out_clips_with_the_new_labels(init_ckpt, tmp_path):
    data = class_folders(tmp_path / "data", per_class=8, seed=0)
    held_out = class_folders(tmp_path / "held_out", per_class=4, seed=1)
    out = tmp_path / "run"
    args = ["finetune", str(data), "--init", init_ckpt, "--out", str(out)]
    args += ["--full", "--epochs", "6", "--batch-size", "4", "--lr", "3e-3"]
    result = invoke(distill_main, args)
    assert result.exit_code == 0, result.output

    model = load_model_file(out / "final.safetensors")
    assert model.config.labels == ("high", "low", "mid") and model.config.num_classes == 3
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 6
    report = (out / "report.md").read_text()
    for name in PITCHES:
        assert f"| {name} | 2 |" in report  # 2 of 8 files per class held out for validation
    assert (out / "confusion.png").read_bytes()[:4] == b"\x89PNG"

    files = sorted(held_out.rglob("*.wav"))
    tagged = invoke(
        hear_main, ["tag", *map(str, files), "--model", str(out / "final.safetensors"), "--json"]
    )
    assert tagged.exit_code == 0, tagged.output
    records = [json.loads(line) for line in tagged.stdout.splitlines()]
    assert all(len(r["tags"]) == 3 for r in records)  # only the user's classes
    correct = sum(Path(r["file"]).parent.name == r["tags"][0]["label"] for r in records)
    # Chance is 4 of 12; guessing 9 or more right happens with probability < 0.4 %.
    assert correct >= 9, f"{correct} of {len(records)} held-out clips right"


def multi_label_csv(root: Path) -> Path:
    """Six 22.05 kHz flac clips, two of them with both labels, and a split column."""
    rng = np.random.default_rng(2)
    rows = ["filename,labels,split"]
    for i, labels in enumerate(["low", "mid", "low;mid", "mid;low", "low", "mid"]):
        path = root / "clips" / f"{i}.flac"
        write_tone(path, PITCHES[labels.split(";")[0]], rng, rate=22050)
        rows.append(f"clips/{i}.flac,{labels},{'valid' if i >= 4 else 'train'}")
    (root / "list.csv").write_text("\n".join(rows) + "\n")
    return root / "list.csv"


def test_multi_label_csv_with_split_column(init_ckpt, tmp_path):
    out = tmp_path / "run"
    args = ["finetune", str(multi_label_csv(tmp_path)), "--init", init_ckpt, "--out", str(out)]
    result = invoke(distill_main, [*args, "--full", "--epochs", "1", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    assert "validation mAP" in result.output
    assert load_model_file(out / "final.safetensors").config.labels == ("low", "mid")
    report = (out / "report.md").read_text()
    assert "multi-label, 2 classes, 4 training and 2 validation files" in report
    assert "| low | 1 |" in report and not (out / "confusion.png").exists()


def test_stopped_run_resumes_to_the_same_weights(init_ckpt, tmp_path, monkeypatch):
    data = str(multi_label_csv(tmp_path))
    settings = {"data": data, "init": init_ckpt, "epochs": 3, "batch_size": 2, "lr": 1e-3}
    settings |= {"frozen": False}
    whole = finetune(FinetuneConfig(out_dir=str(tmp_path / "whole"), **settings))

    save_state = hear_ced.distill.engine.save_state

    def save_then_stop(path, state):
        # Stopped right after the state of the first epoch is written.
        save_state(path, state)
        raise KeyboardInterrupt

    cut = FinetuneConfig(out_dir=str(tmp_path / "cut"), **settings)
    with monkeypatch.context() as patch:
        patch.setattr(hear_ced.distill.engine, "save_state", save_then_stop)
        with pytest.raises(KeyboardInterrupt):
            finetune(cut)
    resumed = finetune(cut)
    assert resumed.history == whole.history and resumed.best_epoch == whole.best_epoch
    final = [load_model_file(r.final_checkpoint).state_dict() for r in (whole, resumed)]
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0])

    changed = dataclasses.replace(cut, lr=2e-3)
    with pytest.raises(ValueError, match="other settings \\(--lr: 0.001 stored, 0.002 wanted\\)"):
        finetune(changed)
    # The device may change; the folder's claim goes through claim_folder and records it.
    claims = []
    claim = hear_ced.distill.engine.claim_folder
    monkeypatch.setattr(
        hear_ced.distill.engine,
        "claim_folder",
        lambda *a, **k: claims.append(a[2]) or claim(*a, **k),
    )
    assert finetune(dataclasses.replace(cut, device="cpu")).history == whole.history
    assert claims == ["config.json"]
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["device"] == "cpu"


def test_stratified_split_is_seeded_and_covers_every_class():
    examples = [Example(Path(f"{c}{i}.wav"), (c,)) for c in "abc" for i in range(10)]
    train, valid, short = split_examples(examples, 0.2, seed=0)
    assert sorted(train + valid) == list(range(30)) and len(valid) == 6 and not short
    assert sorted(examples[i].labels[0] for i in valid) == ["a", "a", "b", "b", "c", "c"]
    assert split_examples(examples, 0.2, seed=0)[:2] == (train, valid)
    assert split_examples(examples, 0.2, seed=1)[:2] != (train, valid)


def test_a_class_too_small_to_split_is_named_with_its_files():
    examples = [Example(Path(f"{c}{i}.wav"), (c,)) for c in "ab" for i in range(4)]
    examples += [Example(Path("c0.wav"), ("c",)), Example(Path("d0.wav"), ("d",))]
    short = split_examples(examples, 0.2, seed=0)[2]
    assert short == [
        "class c (1 training, 0 validation: c0.wav)",
        "class d (1 training, 0 validation: d0.wav)",
    ]
    given = [dataclasses.replace(e, split="train") for e in examples[:-1]]
    given += [Example(Path("a9.wav"), ("a",), "valid"), Example(Path("b9.wav"), ("b",), "valid")]
    assert split_examples(given, 0.2, seed=0)[2] == ["class c (1 training, 0 validation: c0.wav)"]


def test_settings_are_checked_when_made():
    with pytest.raises(ConfigError, match="epochs: must be positive, got 0"):
        FinetuneConfig(data="d", out_dir="o", epochs=0)
    with pytest.raises(ConfigError, match="lr: must be positive"):
        FinetuneConfig(data="d", out_dir="o", lr=-1e-4, frozen=False)
    # Training settings given to a frozen run are refused, not ignored.
    with pytest.raises(ConfigError, match="^--epochs, --augment: settings of --full training"):
        FinetuneConfig(data="d", out_dir="o", epochs=5, augment=True)
    assert FinetuneConfig(data="d", out_dir="o", epochs=5, frozen=False).epochs == 5


def test_dataset_errors(tmp_path):
    (tmp_path / "only" / "one").mkdir(parents=True)
    write_tone(tmp_path / "only" / "one" / "a.wav", 440, np.random.default_rng(0))
    with pytest.raises(ValueError, match="at least 2"):
        read_dataset(tmp_path / "only")
    (tmp_path / "bad.csv").write_text("file,label\nx.wav,a\n")
    with pytest.raises(ValueError, match="lacks column"):
        read_dataset(tmp_path / "bad.csv")
    (tmp_path / "tabs.csv").write_text("filename\tlabels\nx.wav\ta\n")
    with pytest.raises(ValueError, match="separated by tabs .*expected commas"):
        read_dataset(tmp_path / "tabs.csv")
    (tmp_path / "split.csv").write_text("filename,labels,split\nx.wav,a,train\ny.wav,b,test\n")
    with pytest.raises(ValueError, match="split must be train or valid"):
        read_dataset(tmp_path / "split.csv")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--init", "nowhere.safetensors"], "neither a model size"),
        (["--init", "small"], "no weights for CED-small"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, monkeypatch, args, message):
    monkeypatch.delenv("HEAR_CED_WEIGHTS", raising=False)
    monkeypatch.setenv("HEAR_CED_CACHE", str(tmp_path / "cache"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    data = class_folders(tmp_path / "data", per_class=2, seed=0)
    result = invoke(distill_main, ["finetune", str(data), "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 1
    assert message in result.output


def test_cli_unreadable_audio(init_ckpt, tmp_path):
    data = class_folders(tmp_path / "data", per_class=2, seed=0)
    (data / "low" / "broken.wav").write_bytes(b"RIFF....")
    args = ["finetune", str(data), "--init", init_ckpt, "--out", str(tmp_path / "o")]
    result = invoke(distill_main, args)
    assert result.exit_code == 1
    assert "cannot read audio file" in result.output and "broken.wav" in result.output


def test_empty_and_broken_files_are_named_in_one_error(init_ckpt, tmp_path):
    data = class_folders(tmp_path / "data", per_class=2, seed=0)
    (data / "low" / "broken.wav").write_bytes(b"RIFF....")
    sf.write(data / "mid" / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    args = ["finetune", str(data), "--init", init_ckpt, "--out", str(tmp_path / "o")]
    result = invoke(distill_main, args)
    assert result.exit_code == 1
    assert "2 problem(s) in the data" in result.output
    assert "broken.wav" in result.output and "empty.wav holds no audio samples" in result.output
    assert not (tmp_path / "o" / "last.pt").exists()


def test_a_one_file_class_and_a_broken_file_are_named_in_the_same_error(init_ckpt, tmp_path):
    data = class_folders(tmp_path / "data", per_class=2, seed=0)
    write_tone(data / "solo" / "only.wav", 700.0, np.random.default_rng(5))
    (data / "low" / "broken.wav").write_bytes(b"RIFF....")
    args = ["finetune", str(data), "--init", init_ckpt, "--out", str(tmp_path / "o")]
    result = invoke(distill_main, args)
    assert result.exit_code == 1
    assert "2 problem(s) in the data" in result.output
    assert "class solo (1 training, 0 validation: " in result.output
    assert str(data / "solo" / "only.wav") in result.output and "broken.wav" in result.output


def test_draws_balance_classes_and_leave_balanced_sets_alone():
    from hear_ced.distill.finetune import draw_weights

    onehot = np.eye(2, dtype=np.float32)
    assert draw_weights(onehot[[0, 0, 1, 1]]) is None
    weights = draw_weights(onehot[[0, 0, 0, 1]])
    assert weights[:3].sum() == pytest.approx(0.5) and weights[3] == pytest.approx(0.5)


def test_frozen_mode_fits_a_head_that_tags_as_it_scored(init_ckpt, tmp_path, caplog):
    """The probe's head is folded into the model: `tag` reproduces the validation score."""
    from hear_ced.distill.finetune import head_inputs

    data = class_folders(tmp_path / "data", per_class=5, seed=0)
    out = tmp_path / "frozen"
    caplog.set_level("INFO")
    result = finetune(FinetuneConfig(data=str(data), out_dir=str(out), init=init_ckpt))
    assert "as asked" not in caplog.text and "for a new head of the 3 classes" in caplog.text
    model = load_model_file(result.final_checkpoint)
    init = load_model_file(init_ckpt)
    body = {k: v for k, v in init.state_dict().items() if not k.startswith("outputlayer.1")}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in body.items())
    assert [h["C"] for h in result.history] == sorted(h["C"] for h in result.history)
    # The kept head's validation score is what the saved model gives under `tag`'s rule.
    dataset = read_dataset(data)
    _, valid, _ = split_examples(dataset.examples, 0.2, seed=0)
    waves = [read_clip(str(dataset.examples[i].path)) for i in valid]
    guess = ModelTagger(model).probabilities(waves).argmax(axis=1)
    truth = [dataset.classes.index(dataset.examples[i].labels[0]) for i in valid]
    assert result.best_metric == pytest.approx(np.mean(guess == truth))
    assert head_inputs(model, waves[:1]).shape == (1, 64)


def test_a_finished_run_says_so_and_a_still_improving_one_warns(init_ckpt, tmp_path, caplog):
    data = str(multi_label_csv(tmp_path))
    cfg = FinetuneConfig(data=data, out_dir=str(tmp_path / "o"), init=init_ckpt, epochs=2,
                         batch_size=2, lr=1e-3, augment=False, frozen=False)  # fmt: skip
    caplog.set_level("INFO")
    first = finetune(cfg)
    improving = first.history[-1]["mAP"] > first.history[0]["mAP"]
    assert ("still improved at the last epoch (2)" in caplog.text) == improving
    assert ("still improved" in (tmp_path / "o" / "report.md").read_text()) == improving
    assert still_improving([{"m": 0.1}, {"m": 0.2}], "m")
    assert not still_improving([{"m": 0.2}, {"m": 0.2}], "m")
    caplog.clear()
    assert finetune(cfg).history == first.history
    assert "finished all 2 epochs: nothing to train" in caplog.text
    assert "resuming" not in caplog.text


def test_more_epochs_are_another_run_and_restart_starts_over(init_ckpt, tmp_path):
    data = class_folders(tmp_path / "data", per_class=2, seed=0)
    out = tmp_path / "o"
    args = ["finetune", str(data), "--init", init_ckpt, "--out", str(out), "--batch-size", "4"]
    args += ["--full"]
    assert invoke(distill_main, [*args, "--epochs", "1"]).exit_code == 0
    longer = invoke(distill_main, [*args, "--epochs", "2"])
    assert longer.exit_code == 1
    assert (
        "(--epochs: 1 stored, 2 wanted)" in longer.output
        and "another run: start it with --init" in longer.output
    )
    assert "--restart" in longer.output
    restarted = invoke(distill_main, [*args, "--epochs", "2", "--restart"])
    assert restarted.exit_code == 0, restarted.output
    assert len(json.loads((out / "history.json").read_text())) == 2


def test_settings_from_config_file_then_flags_then_set(init_ckpt, tmp_path):
    out = tmp_path / "run"
    config = tmp_path / "finetune.yaml"
    config.write_text(
        f"data: {multi_label_csv(tmp_path)}\ninit: {init_ckpt}\nout_dir: {out}\n"
        "epochs: 5\nbatch_size: 4\nlr: 3.0e-4\nfrozen: false\n"
    )
    args = ["finetune", "--config", str(config), "--batch-size", "2", "--set", "epochs=1"]
    result = invoke(distill_main, args)
    assert result.exit_code == 0, result.output
    stored = json.loads((out / "config.json").read_text())
    assert (stored["epochs"], stored["batch_size"], stored["lr"]) == (1, 2, 3e-4)
    assert stored["seed"] == FinetuneConfig.__dataclass_fields__["seed"].default
    assert len(json.loads((out / "history.json").read_text())) == 1
    # Unknown keys and missing folders are one-line errors naming them.
    unknown = invoke(distill_main, [*args, "--set", "lrr=1"])
    assert unknown.exit_code == 1 and "unknown config key(s): lrr (known: data," in unknown.output
    bare = invoke(distill_main, ["finetune", "--epochs", "1"])
    assert bare.exit_code == 1
    assert "DATA and --out not given (on the command line, or in --config)" in bare.output


def test_finetune_flags_are_the_config_fields_with_their_defaults():
    from hear_ced.distill.config import finetune_option

    command = distill_main.commands["finetune"]
    params = {p.name: p for p in command.params}
    fields = {f.name: f for f in dataclasses.fields(FinetuneConfig)}
    assert fields.keys() <= params.keys()
    for name, field in fields.items():
        param = params[name]
        spelled = param.opts[0] if isinstance(param, click.Option) else param.human_readable_name
        assert spelled == finetune_option(name), name
        if field.default is not dataclasses.MISSING:
            assert param.default == field.default, name
    others = params.keys() - fields.keys()
    assert others == {"config_path", "overrides", "restart", "quiet", "verbose"}


def test_accumulated_micro_batches_step_like_whole_batches(init_ckpt, tmp_path):
    """The input BatchNorm is frozen, so two micro-batches of 1 make the step of one batch of 2."""
    data = str(multi_label_csv(tmp_path))
    settings = {"data": data, "init": init_ckpt, "epochs": 2, "batch_size": 2, "lr": 1e-3}
    settings |= {"frozen": False}
    runs = [
        finetune(FinetuneConfig(out_dir=str(tmp_path / f"acc{n}"), accumulate=n, **settings))
        for n in (1, 2)
    ]
    losses = [[h["train_loss"] for h in run.history] for run in runs]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    final = [load_model_file(run.final_checkpoint).state_dict() for run in runs]
    for key, value in final[0].items():
        torch.testing.assert_close(final[1][key], value, rtol=1e-4, atol=1e-6)
    with pytest.raises(ConfigError, match="accumulate: batch_size 2 does not split into 3"):
        FinetuneConfig(out_dir=str(tmp_path / "x"), accumulate=3, **settings)


def test_augmented_training_is_seeded_and_changes_what_the_model_sees(init_ckpt, tmp_path):
    data = str(multi_label_csv(tmp_path))
    settings = {"data": data, "init": init_ckpt, "epochs": 1, "batch_size": 2, "frozen": False}
    plain = finetune(FinetuneConfig(out_dir=str(tmp_path / "plain"), **settings))
    augmented = [
        finetune(
            FinetuneConfig(out_dir=str(tmp_path / f"aug{i}"), augment=True, mixup=True, **settings)
        )  # fmt: skip
        for i in range(2)
    ]
    assert augmented[0].history == augmented[1].history
    assert augmented[0].history[0]["train_loss"] != plain.history[0]["train_loss"]
    config = json.loads((tmp_path / "aug0" / "config.json").read_text())
    assert config["augment"] is True and config["mixup"] is True


def test_a_frozen_folder_is_not_taken_over_by_a_full_run(init_ckpt, tmp_path):
    data = class_folders(tmp_path / "data", per_class=2, seed=0)
    args = ["finetune", str(data), "--init", init_ckpt, "--out", str(tmp_path / "o")]
    assert invoke(distill_main, args).exit_code == 0
    full = invoke(distill_main, [*args, "--full", "--epochs", "1"])
    assert full.exit_code == 1 and "--frozen: true stored, false wanted)" in full.output
