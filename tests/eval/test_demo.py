"""``ced-eval demo``: what it asks of the runner (the end-to-end runs are in test_pipeline)."""

from pathlib import Path

import pytest
from click.testing import CliRunner

import hear_ced.eval.cli
import hear_ced.eval.make_tasks
import hear_ced.eval.report
from hear_ced.eval.cli import main


@pytest.fixture
def demo_calls(tmp_path, monkeypatch):
    """Runs ``ced-eval demo`` with the runner, task writer and report replaced; its settings."""
    calls = []

    def fake_run(settings):
        calls.append(settings)
        return [{"task": f"t{i}", "status": "ok", "primary_metric": "m"} for i in range(3)]

    def fake_tasks(folder):
        return [Path(folder) / name for name in ("event", "multiclass", "multilabel")]

    report = tmp_path / "report.md"
    report.write_text("report\n")
    monkeypatch.setattr(hear_ced.eval.cli, "run_hear", fake_run)
    monkeypatch.setattr(hear_ced.eval.make_tasks, "make_tasks", fake_tasks)
    monkeypatch.setattr(hear_ced.eval.report, "write_report", lambda *a, **k: {"markdown": report})
    model = tmp_path / "student.safetensors"
    model.write_bytes(b"weights")

    def invoke(*options):
        calls.clear()
        out = str(tmp_path / "out")
        result = CliRunner().invoke(main, ["demo", "--model", str(model), "--out", out, *options])
        assert result.exit_code == 0, result.output
        return calls

    return invoke


@pytest.mark.parametrize("cores, jobs", [(1, 1), (2, 2), (16, 3)])
def test_demo_runs_one_task_per_core(demo_calls, monkeypatch, cores, jobs):
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    calls = demo_calls()
    assert [s.module for s in calls] == ["hear_ced.custom", "hearbaseline"]
    assert {s.jobs for s in calls} == {jobs}
    assert {(s.grid, s.grid_points, s.probe) for s in calls} == {("fast", 2, "both")}


def test_demo_jobs_option_wins(demo_calls, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert {s.jobs for s in demo_calls("--jobs", "1")} == {1}
