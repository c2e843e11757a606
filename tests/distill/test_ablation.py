"""The ablation and K-sweep experiments at smoke size, and their statistics."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pytest
from click.testing import CliRunner

import hear_ced.distill.ablation.run as ablation_run
from hear_ced.common.config import ConfigError
from hear_ced.distill.ablation.data import build_data, clip_mels, teacher_view_seeds, top_k
from hear_ced.distill.ablation.protocol import ROWS, SMOKE, Protocol
from hear_ced.distill.augment import epoch_seeds
from hear_ced.distill.cli import main
from hear_ced.distill.stats import beats, bootstrap_mean_interval, compare_paired, sign_test

AUGMENTED = dataclasses.replace(SMOKE, teacher_training="augmented")


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture(scope="module")
def smoke_data():
    return build_data(SMOKE)


@pytest.mark.slow
def test_smoke_ablation_reports_every_row_after_its_protocol_and_resumes(tmp_path, caplog):
    out = tmp_path / "ablation"
    first = _invoke("ablation", "--smoke", "--workers", "1", "--out", str(out))
    assert first.exit_code == 0, first.output
    markdown = (out / "ablation.md").read_text()
    protocol_at = markdown.index("## Protocol")
    results_at = markdown.index("## Results")
    assert protocol_at < results_at
    assert "Decision rule" in markdown[protocol_at:results_at]
    table = markdown[results_at:]
    for source in ("teacher", "oracle"):
        for name in (row.name for row in ROWS):
            assert f"| {source} | {name} |" in table
    summary = json.loads((out / "ablation.json").read_text())
    assert summary["complete"] and summary["seeds"] == [0, 1]
    assert len(summary["rows"]) == 8 and len(summary["comparisons"]) == 6
    for row in summary["rows"]:
        # Selection happened on validation: the tested epoch is one that was validated.
        for epoch in row["best_epoch"]:
            assert epoch in row["valid_epochs"]
        assert len(row["train_loss"]) == SMOKE.student_epochs
    for c in summary["comparisons"]:
        a = next(r for r in summary["rows"] if r["source"] == c["source"] and r["row"] == c["a"])
        b = next(r for r in summary["rows"] if r["source"] == c["source"] and r["row"] == c["b"])
        assert c["differences"] == pytest.approx(np.subtract(a["test_mAP"], b["test_mAP"]))
    measured = summary["measured"]
    assert measured["views"] == SMOKE.views * SMOKE.student_clips
    assert (out / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    caplog.set_level(logging.INFO, logger="hear_ced.distill.ablation.run")
    second = _invoke("ablation", "--smoke", "--workers", "1", "--out", str(out))
    assert second.exit_code == 0, second.output
    assert "0 of 16 student runs to train" in caplog.text
    again = json.loads((out / "ablation.json").read_text())
    assert [r["test_mAP"] for r in again["rows"]] == [r["test_mAP"] for r in summary["rows"]]

    # --report-only trains nothing: a missing run stays missing.
    missing = out / "runs" / "oracle_t1s1_k0_seed1.json"
    missing.unlink()
    third = _invoke("ablation", "--smoke", "--report-only", "--out", str(out))
    assert third.exit_code == 0, third.output
    assert not missing.exists()

    other = _invoke("ablation", "--smoke", "--workers", "1", "--seeds", "3", "--out", str(out))
    assert other.exit_code != 0 and "other settings" in other.output


def test_protocol_is_written_before_any_run(tmp_path, monkeypatch):
    def no_data(_protocol):
        raise RuntimeError("stopped before any run")

    monkeypatch.setattr(ablation_run, "build_data", no_data)
    with pytest.raises(RuntimeError):
        ablation_run.run_experiment(tmp_path, SMOKE, "table3", "ced-distill ablation --smoke")
    markdown = (tmp_path / "ablation.md").read_text()
    assert "## Protocol" in markdown and "mixup is off in every row" in markdown
    assert "## Results" not in markdown


@pytest.mark.slow
def test_smoke_k_sweep_compares_the_largest_k(tmp_path):
    out = tmp_path / "k"
    result = _invoke("k-sweep", "--smoke", "--workers", "1", "--out", str(out))
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "ablation.json").read_text())
    assert [r["k"] for r in summary["rows"]] == list(SMOKE.k_values)
    assert [(c["a"], c["b"]) for c in summary["comparisons"]] == [("K=3", "K=1")]


def test_too_few_seeds_is_a_clear_error(tmp_path):
    result = _invoke("ablation", "--smoke", "--seeds", "1", "--out", str(tmp_path))
    assert result.exit_code != 0
    assert "at least 2 seeds" in result.output and "Traceback" not in result.output
    with pytest.raises(ConfigError):
        Protocol(k=25)


def test_top_k_keeps_the_k_largest_and_zeroes_the_rest():
    probs = np.array([[0.1, 0.7, 0.3, 0.9], [0.5, 0.4, 0.6, 0.2]])
    assert np.array_equal(top_k(probs, 2), [[0, 0.7, 0, 0.9], [0.5, 0, 0.6, 0]])


def test_sign_test_on_known_inputs():
    assert sign_test([0.1] * 5) == pytest.approx(1 / 32)  # one-sided, 5 of 5
    assert sign_test([0.1] * 5 + [-0.2]) == pytest.approx(7 / 64)
    assert sign_test([1.0, -1.0, 0.0]) == pytest.approx(0.75)  # the tie is dropped
    assert sign_test([0.0, 0.0]) == 1.0


def test_bootstrap_interval_on_known_inputs():
    assert bootstrap_mean_interval([0.25] * 6) == (0.25, 0.25)
    low, high = bootstrap_mean_interval([0.0, 1.0] * 10, resamples=20_000)
    # The mean of 20 fair coin flips: 0.5 +- 1.96 * 0.5 / sqrt(20) = [0.28, 0.72].
    assert low == pytest.approx(0.28, abs=0.03) and high == pytest.approx(0.72, abs=0.03)


def test_paired_comparison_and_decision_rule():
    c = compare_paired([3.0, 4.0, 5.0], [1.0, 1.0, 6.0])
    assert c["differences"] == [2.0, 3.0, -1.0] and c["mean"] == pytest.approx(4 / 3)
    assert (c["wins"], c["losses"]) == (2, 1) and c["p_value"] == pytest.approx(0.5)
    assert not beats(c)
    clear = compare_paired([1.0 + 0.1 * i for i in range(6)], [0.5] * 6)
    assert clear["p_value"] == pytest.approx(1 / 64) and clear["ci_low"] > 0 and beats(clear)
    with pytest.raises(ValueError):
        compare_paired([1.0], [])


def test_plain_teachers_learn_from_the_plain_clips(smoke_data):
    mels, labels = smoke_data.teacher_train
    rows = np.array([3, 0, 7])
    for epoch in (0, 1):
        batch_mels, batch_labels = ablation_run.teacher_batches(SMOKE, smoke_data, 0)(epoch, rows)
        assert np.array_equal(batch_mels, mels[rows]) and np.array_equal(batch_labels, labels[rows])


def test_augmented_teachers_learn_from_a_fresh_view_of_the_student_views_augmentation(smoke_data):
    mels, labels = smoke_data.teacher_train
    waves = smoke_data.teacher_waves
    rows = np.arange(SMOKE.teacher_clips)
    batch_of = ablation_run.teacher_batches(AUGMENTED, smoke_data, 0)
    first, first_labels = batch_of(0, rows)
    second, _ = batch_of(1, rows)
    # The clip's labels, the clip's view: not the plain clip, and another view each epoch.
    assert np.array_equal(first_labels, labels)
    changed = [not np.array_equal(first[i], mels[i]) for i in rows]
    assert sum(changed) >= SMOKE.teacher_clips // 2
    assert sum(not np.array_equal(first[i], second[i]) for i in rows) >= SMOKE.teacher_clips // 2
    # Drawn by the student views' function and augmentation: with the student views'
    # seeds it gives the stored student views, with the teacher's it gives the batch.
    student = SMOKE.student_clips
    seeds = epoch_seeds(SMOKE.corpus_seed, 0, student)
    assert np.array_equal(
        clip_mels(waves[:student], seeds, SMOKE.augment()), smoke_data.view_mels[0]
    )
    seeds = teacher_view_seeds(AUGMENTED, 0, 0)
    assert np.array_equal(clip_mels(waves, seeds, AUGMENTED.augment()), first)
    # A stream of its own: neither the students' views nor the other teacher's.
    assert not np.array_equal(first[:student], smoke_data.view_mels[0])
    other, _ = ablation_run.teacher_batches(AUGMENTED, smoke_data, 1)(0, rows)
    assert not np.array_equal(first, other)
    # Any order of rows gives each clip its own view.
    shuffled = rows[::-1].copy()
    assert np.array_equal(batch_of(0, shuffled)[0], first[shuffled])


def test_teacher_training_is_a_checked_protocol_setting():
    with pytest.raises(ConfigError, match="teacher_training"):
        Protocol(teacher_training="noisy")


@pytest.mark.slow
def test_smoke_ablation_with_augmented_teachers(tmp_path, caplog, monkeypatch, smoke_data):
    out = tmp_path / "augmented"
    real_fit = ablation_run.fit
    teacher_batches = []

    def recording_fit(model, batch_of, n_rows, *args, **kwargs):
        def recorded(epoch, rows):
            batch = batch_of(epoch, rows)
            if n_rows == SMOKE.teacher_clips:  # a teacher (students see student_clips)
                teacher_batches.append((rows.copy(), batch[0]))
            return batch

        return real_fit(model, recorded, n_rows, *args, **kwargs)

    monkeypatch.setattr(ablation_run, "fit", recording_fit)
    args = ("ablation", "--smoke", "--teachers", "augmented", "--workers", "1", "--out", str(out))
    first = _invoke(*args)
    assert first.exit_code == 0, first.output
    # The teacher learnt from batches that are not the plain clips.
    plain = smoke_data.teacher_train[0]
    assert teacher_batches
    assert all(not np.array_equal(mel, plain[rows]) for rows, mel in teacher_batches)

    plan = json.loads((out / "plan.json").read_text())
    assert plan["protocol"]["teacher_training"] == "augmented"
    summary = json.loads((out / "ablation.json").read_text())
    assert summary["protocol"]["teacher_training"] == "augmented"
    # Only the learned-teacher rows: the oracle's do not depend on the teachers.
    assert [(r["source"], r["row"]) for r in summary["rows"]] == [
        ("teacher", row.name) for row in ROWS
    ]
    assert [(c["a"], c["b"]) for c in summary["comparisons"]] == [
        (ROWS[-1].name, row.name) for row in ROWS[:-1]
    ]
    markdown = (out / "ablation.md").read_text()
    protocol = markdown[: markdown.index("## Results")]
    assert "augmentation-trained teachers" in protocol
    assert "| teacher_training | augmented |" in protocol
    assert "| oracle |" not in markdown

    # Resume: nothing is trained again, the numbers stay.
    caplog.set_level(logging.INFO, logger="hear_ced.distill.ablation.run")
    teacher_batches.clear()
    second = _invoke(*args)
    assert second.exit_code == 0, second.output
    assert "0 teacher(s) to train" in caplog.text
    assert "0 of 8 student runs to train" in caplog.text and not teacher_batches
    again = json.loads((out / "ablation.json").read_text())
    assert [r["test_mAP"] for r in again["rows"]] == [r["test_mAP"] for r in summary["rows"]]

    # The plain-teacher arm never mixes into this folder.
    plain_arm = _invoke("ablation", "--smoke", "--workers", "1", "--out", str(out))
    assert plain_arm.exit_code != 0
    assert "protocol.teacher_training" in plain_arm.output and "Traceback" not in plain_arm.output
