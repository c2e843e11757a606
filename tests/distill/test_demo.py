"""The demo pipeline end to end at toy size (the full demo is `make demo`)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from distill.cli import main
from distill.config import ConfigError
from distill.demo import load_demo_config
from hear_ced.checkpoints import load_model_file

TOY = [
    "corpus.n_train=16",
    "corpus.student_clips=12",
    "corpus.n_eval=8",
    "corpus.clip_seconds=1.0",
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


def test_demo_smoke_run_and_resume(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out)] + [x for o in TOY for x in ("--set", o)]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    report = json.loads((out / "report.json").read_text())
    results = report["results"]
    for name in ("teacher_ensemble", "distilled_student", "hard_label_student"):
        assert 0.0 < results[name]["mAP"] <= 1.0
    assert len(results["teachers"]) == 2
    assert report["storage"]["payload_bytes_per_sample_epoch"] == 3 * 4 + 4
    assert report["verify_logits"]["checked_rows"] > 0
    assert report["storage"]["rows"] == 12  # the students' share only
    claim = report["claim"]
    assert claim["holds"] == (
        claim["distilled_within_margin_of_ensemble"] and claim["distilled_above_hard_label_student"]
    )
    student = load_model_file(out / "student.safetensors")
    assert student.config.embed_dim == 32 and student.config.num_classes == 24
    markdown = (out / "report.md").read_text()
    assert "student, distilled" in markdown and "| total |" in markdown

    stages = json.loads((out / "stages.json").read_text())
    second = CliRunner().invoke(main, args)
    assert second.exit_code == 0, second.output
    assert second.output.count("done earlier, skipped") == len(stages)
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
