"""The demo pipeline end to end at toy size (the full demo is `make demo`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner
from sklearn.metrics import average_precision_score

from hear_ced.checkpoints import load_model_file
from hear_ced.common.config import ConfigError
from hear_ced.distill.cli import main
from hear_ced.distill.demo import caveats, load_demo_config
from hear_ced.distill.stats import compare_paired
from hear_ced.distill.synth import SYNTH_CLASSES
from tests.distill.corpus_helpers import NUM_CLASSES

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


def _teacher_map_by_hand(out: Path, eval_tsv: str) -> dict:
    """Test-split mAP of each teacher and of their mean sigmoid, computed from the wav files.

    Independent of ``hear_ced.distill.evaluate`` and ``hear_ced.distill.metrics``: sklearn's average
    precision of every class with a positive clip, averaged over those classes.
    """
    table = pd.read_csv(eval_tsv, sep="\t")
    waves = torch.from_numpy(np.stack([sf.read(f, dtype="float32")[0] for f in table["filename"]]))
    targets = np.zeros((len(table), NUM_CLASSES))
    for row, labels in enumerate(table["labels"].astype(str)):
        targets[row, [int(c) for c in labels.split(";")]] = 1
    present = np.flatnonzero(targets.sum(axis=0))

    def mean_ap(probs: np.ndarray) -> float:
        return float(
            np.mean([average_precision_score(targets[:, c], probs[:, c]) for c in present])
        )

    members = []
    for path in sorted((out / "teachers").glob("teacher*.safetensors")):
        with torch.no_grad():
            members.append(torch.sigmoid(load_model_file(path).eval()(waves)).numpy())
    return {"members": [mean_ap(p) for p in members], "ensemble": mean_ap(np.mean(members, axis=0))}


@pytest.mark.slow
def test_demo_smoke_run_and_resume(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out)] + [x for o in TOY for x in ("--set", o)]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    report = json.loads((out / "report.json").read_text())
    results = report["results"]
    # The teachers' rows are the test-split mAPs of their own and their mean probabilities.
    expected = _teacher_map_by_hand(out, out / "prepared" / "labels" / "eval.tsv")
    assert results["teacher_ensemble"]["mAP"] == pytest.approx(expected["ensemble"], abs=1e-6)
    assert [m["mAP"] for m in results["teachers"]] == pytest.approx(expected["members"], abs=1e-6)
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
    # Every model file names the synthetic corpus's classes.
    assert student.config.labels == tuple(SYNTH_CLASSES)
    for path in (out / "teachers").glob("teacher*.safetensors"):
        assert load_model_file(path).config.labels == tuple(SYNTH_CLASSES), path
    markdown = (out / "report.md").read_text()
    assert "student, distilled" in markdown and "| total |" in markdown
    # Two seeds: the one-sided sign test cannot go below 1 / 4.
    assert "the smallest p 2 seed(s) can reach is 0.25." in markdown
    assert f"mean {claim['mean']:+.4f}" in markdown
    assert "| 1 |" in markdown  # the per-seed table
    # Label-free agreement of every student with the ensemble, in the report too.
    agreement = results["agreement"]
    assert [len(agreement[kind]) for kind in ("distilled", "labels")] == [2, 2]
    assert all(0 <= m["top1"] <= 1 and m["kl"] >= 0 for m in agreement["distilled"])
    assert "Agreement with the teacher ensemble" in markdown

    # A second run resumes through the commands' own records: nothing is trained
    # again, and the report's numbers are the same.
    runs = {path: path.stat().st_mtime_ns for path in out.glob("runs/*/result.json")}
    assert len(runs) == 2 + 2 * 2
    second = CliRunner().invoke(main, args)
    assert second.exit_code == 0, second.output
    assert {path: path.stat().st_mtime_ns for path in runs} == runs
    again = json.loads((out / "report.json").read_text())
    assert again["results"] == results and again["storage"] == report["storage"]
    assert (
        again["stage_seconds"]["student_labels_seed1"]
        == report["stage_seconds"]["student_labels_seed1"]
    )
    changed = CliRunner().invoke(main, args + ["--set", "logits.k=4"])
    assert changed.exit_code != 0 and "other settings" in changed.output
    assert "--restart" in changed.output
    restarted = CliRunner().invoke(main, args + ["--set", "logits.k=4", "--restart"])
    assert restarted.exit_code == 0, restarted.output
    assert json.loads((out / "report.json").read_text())["storage"]["k"] == 4


def test_demo_plan_errors_name_the_key():
    with pytest.raises(ConfigError, match="corpus.n_trian"):
        load_demo_config(overrides=["corpus.n_trian=5"])
    with pytest.raises(ConfigError, match="teachers.sizes"):
        load_demo_config(overrides=["teachers.sizes=[[32,1]]"])
    plan = load_demo_config()
    assert plan.student.optim.adam_8bit is False and plan.student.model.num_classes == 24


def test_caveats_follow_the_seeds():
    # Three seeds, all favouring the distilled student: the smallest one-sided
    # sign-test p is 1 / 2**3, which this run reaches.
    three = caveats(compare_paired([0.5, 0.4, 0.3], [0.4, 0.2, 0.25]))
    assert "mean +0.1167, ahead in 3 of 3 seed(s)" in three
    assert f"p = {0.5**3:.3f}, where the smallest p 3 seed(s) can reach is {0.5**3:.4g}." in three
    # Eight seeds, split 5 to 3: P(X >= 5 | 8, 1/2) = 93 / 256 against a floor of 1 / 2**8.
    diffs = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08]
    mixed = caveats(compare_paired([0.5 + d for d in diffs], [0.5] * 5 + [0.6] * 3))
    assert "ahead in 5 of 8 seed(s)" in mixed
    assert f"p = {93 / 256:.3f}, where the smallest p 8 seed(s) can reach is {0.5**8:.4g}." in mixed
    # Ties count for neither side: one win of one untied seed, p = 1 / 2.
    tied = caveats(compare_paired([0.5, 0.5, 0.6], [0.5, 0.4, 0.6]))
    assert "ahead in 1 of 3 seed(s)" in tied and "sign test p = 0.500" in tied


def test_demo_needs_a_seed():
    with pytest.raises(ConfigError, match="seeds"):
        load_demo_config(overrides=["seeds=0"])
