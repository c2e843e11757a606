"""The ced-eval command line: help, errors and the cheap commands."""

import json

from click.testing import CliRunner

from hear_ced.eval.cli import main

from .test_leaderboard import all_scores, make_run


def test_help_lists_every_command():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    commands = ("hear", "make-tasks", "report", "leaderboard", "demo", "heareval-embeddings",
                "heareval-predictions")  # fmt: skip
    for command in commands:
        assert command in result.output


def test_leaderboard_command_prints_the_row_or_refuses(tmp_path):
    run = make_run(tmp_path / "run", all_scores())
    ok = CliRunner().invoke(main, ["leaderboard", str(run), "--name", "M", "--url", "U",
                                   "--date", "2024-05-01", "--no-header"])  # fmt: skip
    assert ok.exit_code == 0 and ok.output.startswith("M,U,2024-05-01,0.5500,")
    partial = make_run(tmp_path / "partial", {"esc50-v2.0.0-full": 0.9})
    refused = CliRunner().invoke(main, ["leaderboard", str(partial), "--name", "M", "--url", "U"])
    assert refused.exit_code == 1 and "18 of 19 tasks missing" in refused.output


def test_hear_command_reports_a_missing_tasks_folder(tmp_path):
    result = CliRunner().invoke(
        main, ["hear", "--module", "hearbaseline", "--tasks-dir", str(tmp_path / "nope"),
               "--out", str(tmp_path / "out")],
    )  # fmt: skip
    assert result.exit_code == 1 and "does not exist" in result.output


def test_hear_command_wants_model_options_as_a_json_object(tmp_path):
    for value, message in (("{oops", "not valid JSON"), ("[1]", "must be a JSON object")):
        result = CliRunner().invoke(
            main, ["hear", "--module", "hear_ced.mini", "--tasks-dir", str(tmp_path),
                   "--out", str(tmp_path / "out"), "--model-options", value],
        )  # fmt: skip
        assert result.exit_code == 2 and message in result.output
        assert "--model-options" in result.output


def test_report_command_on_a_non_run_folder(tmp_path):
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 1 and "not a ced-eval run folder" in result.output


def test_report_command_writes_files(tmp_path):
    run = make_run(tmp_path / "run", {"esc50-v2.0.0-full": 0.9})
    result = CliRunner().invoke(main, ["report", str(run)])
    assert result.exit_code == 0 and "| ESC-50 | top1_acc | 90.00 |" in result.output
    assert json.loads((run / "run.json").read_text())["module"] == "hear_ced.mini"
    assert (run / "report.csv").exists()


def test_report_command_takes_several_runs_and_needs_one(tmp_path):
    first = make_run(tmp_path / "first", {"esc50-v2.0.0-full": 0.9})
    second = make_run(tmp_path / "second", {"esc50-v2.0.0-full": 0.7}, module="hearbaseline")
    both = CliRunner().invoke(main, ["report", str(first), str(second)])
    assert both.exit_code == 0
    assert "| ESC-50 | top1_acc | 90.00 | 80.00 | 95.35 | -5.35 | yes | 70.00 | 60.00 |" in (
        both.output
    )
    assert (first / "report.md").exists() and not (second / "report.md").exists()
    none = CliRunner().invoke(main, ["report"])
    assert none.exit_code == 2 and "Missing argument 'RUN_DIRS...'" in none.output


def test_the_readme_gives_heareval_predictions_right_after_the_embeddings_runner():
    """heareval's own predictions runner fails under torch's weights_only default."""
    from pathlib import Path

    lines = (Path(__file__).parents[2] / "README.md").read_text().splitlines()
    last = max(i for i, line in enumerate(lines) if "heareval.embeddings.runner" in line)
    assert lines[last + 1].startswith("ced-eval heareval-predictions embeddings/hear_ced.mini/")
    assert "heareval.predictions.runner" not in "\n".join(lines)


def test_leaderboard_refuses_a_run_with_no_task_even_partial(tmp_path):
    empty = make_run(tmp_path / "empty", {"synth_task": 0.5})
    args = ["leaderboard", str(empty), "--name", "M", "--url", "U", "--allow-partial"]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 1 and "a score for none of the 19 tasks" in refused.output
    assert "Traceback" not in refused.output
