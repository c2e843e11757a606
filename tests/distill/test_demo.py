"""The demo pipeline end to end at toy size (the full demo is `make demo`)."""

from __future__ import annotations

import json
import logging

import pytest
from click.testing import CliRunner

from ced_common.config import ConfigError
from distill.cli import main
from distill.demo import load_demo_config, paired_claim
from hear_ced.checkpoints import load_model_file

TOY = [
    "corpus.n_train=16",
    "corpus.student_clips=12",
    "corpus.n_eval=8",
    "corpus.n_valid=6",
    "corpus.clip_seconds=1.0",
    "seeds=2",
    "teachers.sizes=[[32,1,2],[32,1,2]]",
    "teachers.epochs=1",
    "logits.epochs=2",
    "logits.k=3",
    "student.model.embed_dim=32",
    "student.optim.epochs=2",
    "student.optim.batch_size=8",
    "student.eval.every_epochs=1",
    "student.augment.time_mask_width=20",
    "student.progress=false",
]


def test_demo_smoke_run_and_resume(tmp_path, caplog):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out)] + [x for o in TOY for x in ("--set", o)]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    report = json.loads((out / "report.json").read_text())
    results = report["results"]
    assert 0.0 < results["teacher_ensemble"]["mAP"] <= 1.0
    assert len(results["distilled_students"]) == len(results["labels_students"]) == 2
    assert len(results["teachers"]) == 2
    assert report["storage"]["payload_bytes_per_sample_epoch"] == 3 * 4 + 4
    assert report["verify_logits"]["checked_rows"] > 0
    assert report["storage"]["rows"] == 12  # the students' share only
    claim = report["claim"]
    distilled = [m["mAP"] for m in results["distilled_students"]]
    hard = [m["mAP"] for m in results["labels_students"]]
    assert claim["differences"] == pytest.approx(
        [d - h for d, h in zip(distilled, hard, strict=True)]
    )
    # Students select their checkpoints on the validation split, never on the test split.
    for kind in ("distilled", "labels"):
        for seed in (0, 1):
            config = json.loads(
                (out / "runs" / f"student_{kind}_seed{seed}" / "config.json").read_text()
            )
            assert config["data"]["eval_tsv"].endswith("valid.tsv")
            assert config["seed"] == seed
    student = load_model_file(out / "student.safetensors")
    assert student.config.embed_dim == 32 and student.config.num_classes == 24
    markdown = (out / "report.md").read_text()
    assert "student, distilled" in markdown and "| total |" in markdown
    assert "The plan was tuned" in markdown and "thread" in markdown
    assert "holds in " in markdown and "| 1 |" in markdown  # the per-seed table

    stages = json.loads((out / "stages.json").read_text())
    caplog.clear()
    caplog.set_level(logging.INFO, logger="distill.demo")
    second = CliRunner().invoke(main, args)
    assert second.exit_code == 0, second.output
    assert caplog.text.count("done earlier, skipped") == len(stages)
    assert json.loads((out / "stages.json").read_text()) == stages
    changed = CliRunner().invoke(main, args + ["--set", "logits.k=4"])
    assert changed.exit_code != 0 and "another plan" in changed.output


def test_demo_plan_errors_name_the_key():
    with pytest.raises(ConfigError, match="corpus.n_trian"):
        load_demo_config(overrides=["corpus.n_trian=5"])
    with pytest.raises(ConfigError, match="teachers.sizes"):
        load_demo_config(overrides=["teachers.sizes=[[32,1]]"])
    plan = load_demo_config()
    assert plan.student.optim.adam_8bit is False and plan.student.model.num_classes == 24


def test_paired_claim_counts_seeds():
    claim = paired_claim([0.6, 0.5, 0.7], [0.55, 0.52, 0.6])
    assert claim["differences"] == pytest.approx([0.05, -0.02, 0.1])
    assert claim["wins"] == 2 and not claim["distilled_above_hard_label_in_every_seed"]
    assert claim["sign_test_p"] == pytest.approx(0.5)
    assert claim["min_difference"] == pytest.approx(-0.02)


def test_demo_needs_a_seed():
    with pytest.raises(ConfigError, match="seeds"):
        load_demo_config(overrides=["seeds=0"])
