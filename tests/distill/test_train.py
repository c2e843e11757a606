"""The training loop: schedule, label-free learning, exact resume, best-k averaging."""

from __future__ import annotations

import json
import logging
import math
import sys

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from hear_ced.checkpoints import load_model_file, save_model
from hear_ced.distill.checkpointing import average_checkpoints, load_state
from hear_ced.distill.cli import main as cli_main
from hear_ced.distill.config import ConfigError, OptimConfig, load_config
from hear_ced.distill.data import read_table, usable_workers
from hear_ced.distill.engine import Schedule, engine_identity
from hear_ced.distill.evaluate import evaluate_models, load_eval_set
from hear_ced.distill.logits import LogitStore, LogitStoreMismatch
from hear_ced.distill.synth import SYNTH_CLASSES
from hear_ced.distill.train import (
    LogitTargets,
    epoch_order,
    make_optimizer,
    make_targets,
    optimizer_record,
    rank_shard,
    train,
)
from hear_ced.distill.views import clip_samples, load_rows
from hear_ced.model import CED, CEDConfig
from tests.distill.corpus_helpers import (
    NUM_CLASSES,
    prepared_corpus,
    stored_logits,
    tiny_overrides,
)

SECONDS = 1.0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return prepared_corpus(tmp_path_factory.mktemp("corpus"), 24, 12, SECONDS)


def test_learning_rate_warmup_then_cosine_to_ten_percent():
    schedule = Schedule.for_run(OptimConfig(lr=1e-3, warmup_steps=10, min_lr_ratio=0.1), 111)
    total = 111
    assert schedule.lr(0) == pytest.approx(1e-4)
    assert schedule.lr(4) == pytest.approx(5e-4)
    assert schedule.lr(9) == pytest.approx(1e-3)
    assert schedule.lr(10) == pytest.approx(1e-3)
    assert schedule.lr(60) == pytest.approx(1e-4 + 0.9e-3 * 0.5)
    assert schedule.lr(110) == pytest.approx(1e-4)
    assert schedule.lr(500) == pytest.approx(1e-4)
    values = [schedule.lr(s) for s in range(10, total)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_data_order_is_a_function_of_seed_and_epoch():
    assert (epoch_order(0, 3, 50) == epoch_order(0, 3, 50)).all()
    assert not (epoch_order(0, 3, 50) == epoch_order(0, 4, 50)).all()
    assert sorted(epoch_order(1, 0, 50)) == list(range(50))
    shards = [rank_shard(epoch_order(0, 0, 11), r, 3) for r in range(3)]
    assert {len(s) for s in shards} == {4}
    assert set().union(*map(set, shards)) == set(range(11))


def test_supervised_training_learns_and_writes_final(corpus, tmp_path):
    train_tsv, eval_tsv = corpus
    overrides = tiny_overrides(train_tsv, eval_tsv, SECONDS, tmp_path / "run")
    cfg = load_config(None, overrides + ["targets.kind=labels", "optim.epochs=10"])
    losses = []
    result = train(cfg, on_step=lambda step, loss: losses.append(loss))
    assert result.steps == 10 * math.ceil(24 / 8) == len(losses)
    assert result.final_checkpoint.exists()
    final = load_model_file(result.final_checkpoint)
    # The class names of the corpus's label file travel with every model file.
    assert final.config.labels == tuple(SYNTH_CLASSES)
    kept = list((tmp_path / "run" / "best").glob("epoch*.safetensors"))
    assert kept and all(load_model_file(p).config.labels == tuple(SYNTH_CLASSES) for p in kept)
    # The recorded metrics are the final weights' on the validation split.
    assert result.metrics == evaluate_models([final], load_eval_set(eval_tsv, NUM_CLASSES))
    # Learning: on its training clips the student ranks their true labels far better
    # than its untrained self (same architecture and initial weights: train() seeds
    # torch with cfg.seed just before building the student). The margin separates the
    # two: control runs of this setting (shuffled labels, or a learning rate of 1e-9)
    # stay below it, real training clears it on every seed tried. Validation mAP is no
    # test of learning at this size: the controls gain as much there (fitted BatchNorm
    # statistics, and the best checkpoints are chosen on those same 12 clips).
    seen = load_eval_set(train_tsv, NUM_CLASSES)
    torch.manual_seed(cfg.seed)
    untrained = evaluate_models([CED(cfg.model.ced_config())], seen)["mAP"]
    trained = evaluate_models([final], seen)["mAP"]
    assert trained - untrained > 0.1, (trained, untrained)
    # A finished run is reported, not retrained.
    again = train(cfg)
    assert again.steps == result.steps and again.metrics == result.metrics


def test_killed_run_resumes_to_bit_identical_weights(corpus, tmp_path):
    train_tsv, eval_tsv = corpus
    settings = ["targets.kind=labels", "optim.epochs=3", "checkpoint_every_steps=2"]
    settings += ["augment.mixup=true", "model.drop_path_rate=0.1"]  # exercise the RNG paths

    def config(name):
        return load_config(
            None, tiny_overrides(train_tsv, eval_tsv, SECONDS, tmp_path / name) + settings
        )

    reference = train(config("whole"))

    class Killed(Exception):
        pass

    def kill_at_step_5(step, loss):
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        train(config("killed"), on_step=kill_at_step_5)
    # The last state was written at step 4, mid-epoch 1.
    assert load_state(tmp_path / "killed" / "last.pt")["progress"] == {
        "epoch": 1,
        "step": 4,
    }
    resumed = train(config("killed"))
    assert resumed.steps == reference.steps
    whole, killed = (load_state(tmp_path / run / "last.pt") for run in ("whole", "killed"))
    assert killed["progress"] == whole["progress"]
    for part in ("model", "optimizer", "rng"):  # bit for bit (nested values compared too)
        torch.testing.assert_close(killed[part], whole[part], rtol=0, atol=0)
    finals = (load_file(tmp_path / run / "final.safetensors") for run in ("whole", "killed"))
    torch.testing.assert_close(*finals, rtol=0, atol=0)


def test_accumulated_run_resumes_exactly_and_refuses_another_world_size(
    corpus, tmp_path, monkeypatch
):
    """Micro-batches of 4 (two a step) resumed mid-epoch; another process count is refused."""
    train_tsv, _ = corpus
    settings = ["targets.kind=labels", "optim.epochs=2", "optim.accumulate=2"]
    settings += ["checkpoint_every_steps=2"]
    args = {
        name: tiny_overrides(train_tsv, None, SECONDS, tmp_path / name) + settings
        for name in ("whole", "killed")
    }
    reference = train(load_config(None, args["whole"]))
    assert reference.steps == 2 * math.ceil(24 / 8)  # the schedule's steps do not change

    def kill_at_step_3(step, loss):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(load_config(None, args["killed"]), on_step=kill_at_step_3)
    (tmp_path / "empty.yaml").write_text("")
    command = ["train", str(tmp_path / "empty.yaml")] + [
        x for setting in args["killed"] for x in ("--set", setting)
    ]
    with monkeypatch.context() as patch:
        patch.setattr(
            "hear_ced.distill.engine.engine_identity",
            lambda precision, device, world: engine_identity(precision, device, world + 1),
        )
        refused = CliRunner().invoke(cli_main, command)
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    assert "(engine.world_size: 1 stored, 2 wanted)" in refused.output
    assert (tmp_path / "killed" / "last.pt").exists()  # nothing deleted
    resumed = CliRunner().invoke(cli_main, command)
    assert resumed.exit_code == 0, resumed.output
    a = load_file(tmp_path / "whole" / "final.safetensors")
    b = load_file(tmp_path / "killed" / "final.safetensors")
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_resume_refuses_changed_settings_and_accepts_runtime_ones(corpus, tmp_path, monkeypatch):
    import hear_ced.distill.engine

    claims = []
    claim = hear_ced.distill.engine.claim_folder
    monkeypatch.setattr(
        hear_ced.distill.engine,
        "claim_folder",
        lambda *a, **k: claims.append(a[2]) or claim(*a, **k),
    )
    train_tsv, eval_tsv = corpus
    out = tmp_path / "run"
    base = tiny_overrides(train_tsv, None, SECONDS, out) + ["targets.kind=labels", "optim.epochs=1"]
    train(load_config(None, base))
    assert claims == ["config.json"]
    with pytest.raises(
        ValueError, match=r"other settings \(optim\.lr: 0\.001 stored, 0\.5 wanted\); use another"
    ):
        train(load_config(None, base + ["optim.lr=0.5"]))
    # The runtime settings may change: the finished run is reported, its record updated.
    again = train(load_config(None, base + ["num_workers=1", "device=cpu"]))
    assert again.steps == 3 and claims == ["config.json"] * 3
    stored = json.loads((out / "config.json").read_text())
    assert (stored["num_workers"], stored["device"], stored["optim"]["lr"]) == (1, "cpu", 1e-3)


def test_a_longer_schedule_is_another_run_and_restart_starts_over(corpus, tmp_path):
    train_tsv, _ = corpus
    out = tmp_path / "run"
    (tmp_path / "empty.yaml").write_text("")
    args = ["train", str(tmp_path / "empty.yaml")]
    for setting in tiny_overrides(train_tsv, None, SECONDS, out) + ["targets.kind=labels"]:
        args += ["--set", setting]
    runner = CliRunner()
    assert runner.invoke(cli_main, [*args, "--set", "optim.epochs=1"]).exit_code == 0
    longer = runner.invoke(cli_main, [*args, "--set", "optim.epochs=2"])
    assert longer.exit_code == 1
    assert "(optim.epochs: 1 stored, 2 wanted)" in longer.output and "another run" in longer.output
    assert f"model.init={out / 'final.safetensors'}" in longer.output
    assert "--restart" in longer.output
    restarted = runner.invoke(cli_main, [*args, "--set", "optim.epochs=2", "--restart"])
    assert restarted.exit_code == 0, restarted.output
    assert json.loads((out / "result.json").read_text())["epochs"] == 2


def test_a_warmup_longer_than_the_run_is_cut_with_a_warning(caplog):
    recipe = OptimConfig(warmup_steps=5000)
    with caplog.at_level(logging.WARNING, logger="hear_ced.distill.engine"):
        schedule = Schedule.for_run(recipe, total_steps=90)
    assert schedule.warmup_steps == 9 and recipe.warmup_steps == 5000
    assert "optim.warmup_steps=5000" in caplog.text and "using 9" in caplog.text
    # At 1/10 of the run the rate reaches its peak; the recipe's warmup never would.
    assert schedule.lr(8) == pytest.approx(recipe.lr)
    assert Schedule(recipe.lr, 90, recipe.warmup_steps).lr(89) < recipe.lr * 0.02
    assert Schedule.for_run(OptimConfig(warmup_steps=10), total_steps=90).warmup_steps == 10


def test_more_workers_than_cores_are_lowered_with_a_warning(monkeypatch, caplog):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    with caplog.at_level(logging.WARNING, logger="hear_ced.distill.data"):
        assert usable_workers(4, "num_workers") == 2
    assert "num_workers=4 exceeds the 2 usable CPU core(s); using 2" in caplog.text
    assert usable_workers(2, "num_workers") == 2 and usable_workers(0, "num_workers") == 0


def test_names_from_a_labels_setting_and_display_name_labels(corpus, tmp_path):
    """A label file given as data.labels names the classes; the labels column may use its names."""
    train_tsv, _ = corpus
    names = [f"sound {i}" for i in range(NUM_CLASSES)]
    labels_tsv = tmp_path / "names.tsv"
    labels_tsv.write_text(
        "index\tmid\tdisplay_name\n"
        + "".join(f"{i}\t/x/{i}\t{name}\n" for i, name in enumerate(names))
    )
    table = read_table(train_tsv)
    table["labels"] = [
        ";".join(names[int(i)] for i in labels.split(";")) for labels in table["labels"]
    ]
    named_tsv = train_tsv.with_name("named_train.tsv")
    table.to_csv(named_tsv, sep="\t", index=False)
    overrides = tiny_overrides(named_tsv, None, SECONDS, tmp_path / "run")
    settings = ["targets.kind=labels", "optim.epochs=1", f"data.labels={labels_tsv}"]
    result = train(load_config(None, overrides + settings))
    assert load_model_file(result.final_checkpoint).config.labels == tuple(names)
    # Without the setting, the corpus's own file is used, which does not know these names.
    with pytest.raises(ValueError, match=r"named_train.tsv: .*label 'sound \d+' is not"):
        train(
            load_config(
                None, tiny_overrides(named_tsv, None, SECONDS, tmp_path / "b") + settings[:2]
            )
        )


def test_best_k_average_is_the_mean_of_the_weights(tmp_path):
    config = CEDConfig(embed_dim=32, depth=1, num_heads=2, num_classes=5)
    paths = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = CED(config)
        model.init_bn.running_mean.uniform_()
        paths.append(save_model(model, tmp_path / f"m{seed}.safetensors"))
    averaged = average_checkpoints(paths, tmp_path / "avg.safetensors")
    loaded = load_model_file(tmp_path / "avg.safetensors")
    states = [load_model_file(p).state_dict() for p in paths]
    for key, value in loaded.state_dict().items():
        if value.is_floating_point():
            expected = torch.stack([s[key] for s in states]).mean(0)
            torch.testing.assert_close(value, expected, rtol=0, atol=1e-6)
    assert torch.equal(averaged.init_bn.running_mean, loaded.init_bn.running_mean)


def test_best_checkpoints_keep_the_top_k(tmp_path):
    from hear_ced.distill.checkpointing import BestCheckpoints

    model = CED(CEDConfig(embed_dim=32, depth=1, num_heads=2, num_classes=5))
    best = BestCheckpoints(tmp_path / "best", keep=2)
    kept = [
        best.offer(model, epoch, score) for epoch, score in [(1, 0.3), (2, 0.5), (3, 0.1), (4, 0.4)]
    ]
    assert kept == [True, True, False, True]
    assert [e["epoch"] for e in best.entries] == [2, 4]
    assert sorted(p.name for p in (tmp_path / "best").glob("*.safetensors")) == [
        "epoch0002.safetensors",
        "epoch0004.safetensors",
    ]
    # The index survives a restart.
    assert BestCheckpoints(tmp_path / "best", keep=2).entries == best.entries


@pytest.fixture(scope="module")
def logits_dir(corpus, tmp_path_factory):
    return stored_logits(tmp_path_factory.mktemp("logits"), corpus[0], SECONDS, k=5, epochs=2)


def test_label_free_training_reduces_the_loss(corpus, logits_dir, tmp_path):
    train_tsv, _ = corpus
    overrides = tiny_overrides(train_tsv, None, SECONDS, tmp_path / "run")
    cfg = load_config(
        None,
        overrides
        + [
            "targets.kind=logits",
            f"targets.logits_dir={logits_dir}",
            "optim.epochs=6",
            "optim.lr=3e-3",
            "optim.adam_8bit=false",
        ],
    )
    losses = []
    result = train(cfg, on_step=lambda step, loss: losses.append(loss))
    assert result.metrics is None and result.final_checkpoint.exists()
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first * 0.9, (first, last)


def test_every_stored_epoch_is_used_cyclically(logits_dir):
    store = LogitStore(logits_dir)
    targets = LogitTargets(store)
    used = []
    for epoch in range(2 * store.num_epochs):
        seeds = targets.seeds(epoch)
        matches = [e for e in range(store.num_epochs) if (store.seeds(e) == seeds).all()]
        assert matches == [epoch % store.num_epochs]
        used.append(matches[0])
    assert set(used) == set(range(store.num_epochs))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("data.min_chunk_seconds=0.5", "rows differ"),
        ("augment.freq_mask_width=9", "freq_mask_width"),
        ("model.num_classes=30", "classes"),
    ],
)
def test_mismatched_logit_store_is_refused(corpus, logits_dir, tmp_path, change, message):
    train_tsv, _ = corpus
    overrides = tiny_overrides(train_tsv, None, SECONDS, tmp_path / "run")
    settings = ["targets.kind=logits", f"targets.logits_dir={logits_dir}", change]
    if change.startswith("data."):
        settings.append("data.clip_seconds=0.5")  # cut the 1 s clips into other rows
    with pytest.raises(ValueError, match=message):
        train(load_config(None, overrides + settings))


def test_every_mismatch_against_a_logit_store_is_listed_at_once(corpus, logits_dir, tmp_path):
    train_tsv, _ = corpus
    overrides = tiny_overrides(train_tsv, None, SECONDS, tmp_path / "run")
    settings = ["targets.kind=logits", f"targets.logits_dir={logits_dir}"]
    settings += ["augment.freq_mask_width=9", "data.clip_seconds=0.5"]
    with pytest.raises(LogitStoreMismatch) as caught:
        train(load_config(None, overrides + settings))
    message = str(caught.value)
    assert message.startswith("targets.logits_dir ")
    for part in ("rows differ", "freq_mask_width", "data.clip_seconds gives"):
        assert part in message, part


def test_students_of_a_logit_store_carry_its_names(corpus, logits_dir, tmp_path):
    """Without a label file, the names stored by save-logits go into the student."""
    train_tsv, _ = corpus
    assert LogitStore(logits_dir).header.labels == SYNTH_CLASSES  # the corpus's file
    moved = tmp_path / "elsewhere" / "train.tsv"  # no label file beside it
    moved.parent.mkdir()
    table = read_table(train_tsv)
    table.to_csv(moved, sep="\t", index=False)
    overrides = tiny_overrides(moved, None, SECONDS, tmp_path / "run")
    cfg = load_config(
        None,
        overrides + ["targets.kind=logits", f"targets.logits_dir={logits_dir}", "optim.epochs=1"],
    )
    assert load_model_file(train(cfg).final_checkpoint).config.labels == tuple(SYNTH_CLASSES)


# --------------------------------------------------------------------------
# The optimizer: the original's 8-bit Adam, or a clear error.


def _linear() -> torch.nn.Module:
    return torch.nn.Linear(4096, 4)


def test_recipe_optimizer_is_bitsandbytes_adam8bit_without_weight_decay():
    pytest.importorskip("bitsandbytes")
    optimizer = make_optimizer(_linear(), OptimConfig(), torch.device("cpu"))
    assert type(optimizer).__name__ == "Adam8bit"
    assert optimizer.param_groups[0]["weight_decay"] == 0.0
    record = optimizer_record(optimizer, OptimConfig())
    assert record["class"] == "bitsandbytes.optim.adam.Adam8bit"
    assert record["eight_bit"] and not record["fallback"]


def test_missing_bitsandbytes_fails_unless_fallback_is_allowed(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import now raises ImportError
    with pytest.raises(ConfigError, match="Adam8bit.*optim.allow_fallback=true"):
        make_optimizer(_linear(), OptimConfig(), torch.device("cpu"))
    allowed = OptimConfig(allow_fallback=True)
    optimizer = make_optimizer(_linear(), allowed, torch.device("cpu"))
    assert type(optimizer) is torch.optim.Adam
    assert optimizer_record(optimizer, allowed)["fallback"]
    adamw = make_optimizer(
        _linear(), OptimConfig(optimizer="adamw", adam_8bit=False), torch.device("cpu")
    )
    assert type(adamw) is torch.optim.AdamW


def test_result_json_records_the_optimizer_that_ran(corpus, tmp_path, monkeypatch):
    train_tsv, _ = corpus
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    base = tiny_overrides(train_tsv, None, SECONDS, tmp_path / "run")
    base += ["targets.kind=labels", "optim.epochs=1"]
    with pytest.raises(ConfigError, match="bitsandbytes"):
        train(load_config(None, base))
    assert not (tmp_path / "run" / "config.json").exists()  # refused before any work
    train(load_config(None, base + ["optim.allow_fallback=true"]))
    record = json.loads((tmp_path / "run" / "result.json").read_text())["optimizer"]
    assert record == {
        "class": "torch.optim.adam.Adam",
        "eight_bit": False,
        "fallback": True,
        "lr": 1e-3,
        "weight_decay": 0.0,
    }


# --------------------------------------------------------------------------
# A logit store of another ablation row or seed.


def _targets_cfg(train_tsv, logits_dir, tmp_path, *settings):
    overrides = tiny_overrides(train_tsv, None, SECONDS, tmp_path / "run")
    return load_config(
        None, overrides + ["targets.kind=logits", f"targets.logits_dir={logits_dir}", *settings]
    )


def test_logit_store_of_another_augmentation_is_refused(corpus, logits_dir, tmp_path):
    # the store was made without mixup: a student with mixup would not see the teachers' input
    cfg = _targets_cfg(corpus[0], logits_dir, tmp_path, "augment.mixup=true")
    rows = load_rows(corpus[0], SECONDS, 1.0)
    with pytest.raises(LogitStoreMismatch, match=r"mixup \(stored False, wanted True\)"):
        make_targets(cfg, rows, clip_samples(SECONDS))


# --------------------------------------------------------------------------
# model.init of another family: a one-line error (load_partial's rules: test_checkpoints).


def test_init_from_another_model_family_is_a_clear_cli_error(corpus, tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"features.0.weight": torch.zeros(8, 1, 3, 3)}, path)
    config = tmp_path / "train.yaml"
    config.write_text("targets:\n  kind: labels\n")
    overrides = tiny_overrides(corpus[0], None, SECONDS, tmp_path / "run")
    args = ["train", str(config)]
    for item in overrides + ["optim.epochs=1", f"model.init={path}"]:
        args += ["--set", item]
    result = CliRunner().invoke(cli_main, args)
    assert result.exit_code != 0
    assert "is not a CED-family checkpoint" in result.output
    assert "unrecognised checkpoint layout" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_init_of_which_nothing_fits_is_a_one_line_cli_error(corpus, tmp_path):
    wide = save_model(
        CED(CEDConfig(embed_dim=64, depth=2, num_heads=2)), tmp_path / "w.safetensors"
    )
    config = tmp_path / "train.yaml"
    config.write_text("targets:\n  kind: labels\n")
    args = ["train", str(config)]
    for item in tiny_overrides(corpus[0], None, SECONDS, tmp_path / "run") + [
        "optim.epochs=1",
        f"model.init={wide}",
    ]:
        args += ["--set", item]
    result = CliRunner().invoke(cli_main, args)
    assert result.exit_code == 1 and "Traceback" not in result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"Error: model.init {wide} loads no transformer weight")
    assert "embed 64" in line and "the model a custom CED (embed 32" in line
