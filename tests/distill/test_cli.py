"""ced-distill: help texts, config errors, verify-logits exit code, torchrun training."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys

import pytest
import torch
import yaml
from click.testing import CliRunner

from hear_ced.checkpoints import load_model_file
from hear_ced.distill.cli import main
from hear_ced.distill.evaluate import evaluate_models, load_eval_set
from hear_ced.model import CED
from tests.distill.corpus_helpers import (
    NUM_CLASSES,
    prepared_corpus,
    random_teacher,
    stored_logits,
    tiny_overrides,
)

SECONDS = 1.0
COMMANDS = [
    "synth",
    "prepare",
    "save-logits",
    "verify-logits",
    "train",
    "evaluate",
    "demo",
    "ablation",
    "k-sweep",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return prepared_corpus(tmp_path_factory.mktemp("corpus"), 16, 8, SECONDS)


def test_every_command_has_help():
    runner = CliRunner()
    top = runner.invoke(main, ["--help"])
    assert top.exit_code == 0
    for command in COMMANDS:
        assert command in top.output
        result = runner.invoke(main, [command, "--help"])
        assert result.exit_code == 0, (command, result.output)
        assert "Usage:" in result.output and len(result.output.splitlines()) > 4


def config_file(tmp_path, overrides):
    """A YAML file holding the given dotted overrides as a nested mapping."""
    tree: dict = {}
    for assignment in overrides:
        key, value = assignment.split("=", 1)
        node = tree
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(value)
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_train_command_reads_yaml_and_overrides(corpus, tmp_path):
    train_tsv, eval_tsv = corpus
    path = config_file(tmp_path, tiny_overrides(train_tsv, eval_tsv, SECONDS, tmp_path / "run"))
    runner = CliRunner()
    bad = runner.invoke(main, ["-q", "train", str(path), "--set", "optim.warmup=3"])
    assert bad.exit_code == 1
    assert "Error: unknown config key(s): optim.warmup" in bad.output
    assert "Traceback" not in bad.output
    assert not logging.getLogger("hear_ced.distill.train").isEnabledFor(
        logging.INFO
    )  # -q: warnings only
    ok = runner.invoke(
        main, ["train", str(path), "--set", "targets.kind=labels", "--set", "optim.epochs=1"]
    )
    assert ok.exit_code == 0, ok.output
    assert "final checkpoint" in ok.output
    assert "epoch 1: validation mAP" in ok.output  # progress is logged without -q
    assert json.loads((tmp_path / "run" / "result.json").read_text())["epochs"] == 1


def test_verify_logits_exits_non_zero_on_mismatch(corpus, tmp_path):
    logits = stored_logits(tmp_path, corpus[0], SECONDS, k=3, epochs=1)
    runner = CliRunner()
    good = runner.invoke(main, ["verify-logits", str(logits), "--rows", "8"])
    assert good.exit_code == 0, good.output
    other = random_teacher(tmp_path / "other.safetensors", seed=1)
    bad = runner.invoke(main, ["verify-logits", str(logits), "--teacher", str(other)])
    assert bad.exit_code == 1
    assert "FAILED" in bad.output


@pytest.mark.slow
def test_two_process_torchrun_training(corpus, tmp_path):
    train_tsv, eval_tsv = corpus
    out = tmp_path / "run"
    overrides = tiny_overrides(train_tsv, eval_tsv, SECONDS, out)
    path = config_file(tmp_path, overrides + ["targets.kind=labels", "optim.epochs=2"])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "hear_ced.distill.cli",
        "train",
        str(path),
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["world_size"] == 2
    # 16 rows over 2 processes of 4 (global batch 8): 2 steps per epoch.
    assert result["steps"] == 2 * math.ceil(math.ceil(16 / 2) / 4)
    # The processes took real steps: Adam moves a weight by about the learning rate at
    # most per step (a quarter of 1e-3 in the first of the 4 warm-up steps), so this
    # distance from the seeded initial weights (cfg.seed 0) needs more than one step.
    final = load_model_file(out / "final.safetensors")
    torch.manual_seed(0)
    initial = CED(final.config).state_dict()
    moved = (final.patch_embed.proj.weight - initial["patch_embed.proj.weight"]).abs().max()
    assert moved > 5e-4, float(moved)
    # The recorded metrics are those of the final weights the run wrote, recomputed here.
    assert result["metrics"] == evaluate_models([final], load_eval_set(eval_tsv, NUM_CLASSES))
