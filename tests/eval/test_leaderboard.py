"""Leaderboard row and report tables from a hand-built run folder."""

import csv
import io
import json

import pytest

from hear_ced.eval.leaderboard import LeaderboardError, leaderboard_row, render_row
from hear_ced.eval.report import build_rows, load_run, write_report
from hear_ced.eval.tasks import LEADERBOARD_COLUMNS, TASK_BY_DIRECTORY


def make_run(folder, scores: dict, module="hear_ced.mini"):
    """A run folder whose tasks have the given MLP scores (None: failed)."""
    (folder / "results").mkdir(parents=True)
    info = {
        "module": module,
        "model": None,
        "model_options": {},
        "provenance": {"embedding_method": "default"},
        "grid": "fast",
        "grid_points": 2,
    }
    (folder / "run.json").write_text(json.dumps(info))
    for task, score in scores.items():
        result = {"task": task, "status": "ok" if score is not None else "failed",
                  "primary_metric": "top1_acc", "mlp": {"score": score},
                  "linear": {"score": None if score is None else score - 0.1}}  # fmt: skip
        (folder / "results" / f"{task}.json").write_text(json.dumps(result))
    return folder


def all_scores():
    scores = {directory: 0.9 for directory in TASK_BY_DIRECTORY}
    scores["beehive_states_fold0-v2-full"] = 0.5
    scores["beehive_states_fold1-v2-full"] = 0.6
    scores["esc50-v2.0.0-full"] = 0.95651
    scores["maestro-v3.0.0-5h"] = 0.08123
    return scores


# checked by hand: Beehive = mean of 0.5 and 0.6, ESC-50 and Maestro rounded to 4 places
EXPECTED = [
    "CED-Mini (test)", "https://example.org/ced", "2024-05-01",
    "0.5500", "0.9000", "0.9000", "0.9000", "0.9565", "0.9000", "0.9000", "0.9000", "0.9000",
    "0.9000", "0.0812", "0.9000", "0.9000", "0.9000", "0.9000", "0.9000", "0.9000", "0.9000",
    "0.9000",
]  # fmt: skip


def test_full_row_matches_the_hand_checked_row(tmp_path):
    run = make_run(tmp_path / "run", all_scores())
    row = leaderboard_row(run, "CED-Mini (test)", "https://example.org/ced", "2024-05-01")
    parsed = list(csv.reader(io.StringIO(render_row(row))))
    assert parsed[0] == list(LEADERBOARD_COLUMNS)
    assert parsed[1] == EXPECTED


def test_missing_or_failed_tasks_are_refused_unless_partial(tmp_path):
    scores = all_scores()
    del scores["esc50-v2.0.0-full"]
    scores["beehive_states_fold1-v2-full"] = None  # failed fold: whole Beehive column missing
    run = make_run(tmp_path / "run", scores)
    with pytest.raises(LeaderboardError, match="2 of 19 tasks missing or failed: Beehive, ESC-50"):
        leaderboard_row(run, "m", "u", "2024-05-01")
    row = leaderboard_row(run, "m", "u", "2024-05-01", allow_partial=True)
    assert row["Beehive"] == "" and row["ESC-50"] == "" and row["FSD50K"] == "0.9000"
    with pytest.raises(LeaderboardError, match="YYYY-MM-DD"):
        leaderboard_row(run, "m", "u", "01/05/2024", allow_partial=True)


def test_a_run_without_any_task_score_gives_no_row_even_partial(tmp_path):
    run = make_run(tmp_path / "run", {"synth_task": 0.5})
    with pytest.raises(LeaderboardError, match="a score for none of the 19 tasks: no row"):
        leaderboard_row(run, "m", "u", "2024-05-01", allow_partial=True)


def test_report_rows_compare_with_published_and_second_run(tmp_path):
    run = make_run(tmp_path / "run", {"esc50-v2.0.0-full": 0.9, "synth_task": 0.5})
    other = make_run(tmp_path / "other", {"esc50-v2.0.0-full": 0.7}, module="hearbaseline")
    rows = {row["task"]: row["runs"] for row in build_rows([load_run(run), load_run(other)])}
    esc, other_esc = rows["ESC-50"]
    assert esc["published"] == 0.9535  # CED-Mini
    assert esc["difference"] == pytest.approx(0.9 - 0.9535)
    assert other_esc["mlp"] == 0.7 and esc["linear"] == pytest.approx(0.8)
    assert other_esc["published"] is None  # hearbaseline: no published size
    assert rows["synth_task"][0]["published"] is None and rows["synth_task"][1]["mlp"] is None
    audioset = tmp_path / "audioset.json"
    audioset.write_text(
        json.dumps({"clips": 12, "model": {"mAP": 0.25, "mAUC": 0.8, "d_prime": 1.2}})
    )
    paths = write_report([run, other], audioset_json=audioset)
    markdown = paths["markdown"].read_text()
    assert "| ESC-50 | top1_acc | 90.00 | 80.00 | 95.35 | -5.35 | yes | 70.00 | 60.00 |" in markdown
    assert "| 12 | 25.00 | 80.00 | 1.200 |" in markdown
    table = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    assert table[0]["task"] == "ESC-50" and float(table[0]["published"]) == 0.9535


def test_custom_module_of_a_published_size_is_compared_with_that_size(tmp_path):
    run = make_run(tmp_path / "run", {"esc50-v2.0.0-full": 0.9}, module="hear_ced.custom")
    assert build_rows([load_run(run)])[0]["runs"][0]["published"] is None
    (run / "module.json").write_text(json.dumps({"ced_size": "small"}))
    assert build_rows([load_run(run)])[0]["runs"][0]["published"] == 0.9595
