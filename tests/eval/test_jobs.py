"""What each parallel job of ``ced-eval hear`` gets: its GPU and its share of the CPU threads."""

import json
import sys
from dataclasses import replace

import pytest
from click.testing import CliRunner

from hear_ced.common.config import ConfigError
from hear_ced.eval import cli
from hear_ced.eval.hear_run import settings as job_settings
from hear_ced.eval.hear_run.schedule import run_hear
from hear_ced.eval.hear_run.settings import (
    THREAD_VARIABLES,
    Machine,
    RunError,
    RunSettings,
    plan_jobs,
)
from hear_ced.eval.hear_run.task_state import run_logged

TWO_GPUS = Machine(gpus=("0", "1"), cores=8)


def _settings(tmp_path, **changes) -> RunSettings:
    base = RunSettings(module="hearbaseline", model=None, tasks_dir=tmp_path, out=tmp_path / "run")
    return replace(base, **changes)


def _devices(settings, machine=TWO_GPUS, environ=None) -> list:
    return [job.device for job in plan_jobs(settings, machine, environ or {})]


def test_jobs_take_the_visible_gpus_in_turn(tmp_path):
    assert _devices(_settings(tmp_path, jobs=2)) == ["0", "1"]
    assert _devices(_settings(tmp_path, jobs=4)) == ["0", "1", "0", "1"]
    assert _devices(_settings(tmp_path)) == ["0"]  # one job: the first GPU


def test_devices_choose_the_gpus_and_may_share_one(tmp_path):
    assert _devices(_settings(tmp_path, jobs=2, devices=(1, 0))) == ["1", "0"]
    assert _devices(_settings(tmp_path, jobs=2, devices=(0, 0))) == ["0", "0"]
    assert _devices(_settings(tmp_path, jobs=3, devices=(1,))) == ["1", "1", "1"]


def test_a_job_sees_its_gpu_by_the_name_the_parent_gave_it(tmp_path, monkeypatch):
    monkeypatch.setattr(job_settings, "visible_gpu_count", lambda: 2)
    parent = {"CUDA_VISIBLE_DEVICES": "3,GPU-5f2e"}  # an index and a UUID
    jobs = plan_jobs(_settings(tmp_path, jobs=2), Machine.detect(parent), parent)
    assert [job.environment["CUDA_VISIBLE_DEVICES"] for job in jobs] == ["3", "GPU-5f2e"]


def test_visible_gpus_are_counted_by_torch_and_named_by_cuda_visible_devices(monkeypatch):
    monkeypatch.setattr(job_settings, "visible_gpu_count", lambda: 2)
    assert Machine.detect({}).gpus == ("0", "1")
    assert Machine.detect({"CUDA_VISIBLE_DEVICES": " 4, 6,7"}).gpus == ("4", "6")
    monkeypatch.setattr(job_settings, "available_cores", lambda: 6)
    assert Machine.detect({}).cores == 6


def test_without_gpus_nothing_is_assigned(tmp_path):
    jobs = plan_jobs(_settings(tmp_path, jobs=2), Machine(gpus=(), cores=4), {"HOME": "/h"})
    assert [job.device for job in jobs] == [None, None]
    assert all("CUDA_VISIBLE_DEVICES" not in job.environment for job in jobs)
    assert jobs[0].environment["HOME"] == "/h"


def test_parallel_jobs_divide_the_cores(tmp_path):
    for jobs, threads in ((2, "4"), (3, "2"), (16, "1")):
        for job in plan_jobs(_settings(tmp_path, jobs=jobs), TWO_GPUS, {}):
            assert {job.environment[name] for name in THREAD_VARIABLES} == {threads}
            assert job.threads == int(threads)
    alone = plan_jobs(_settings(tmp_path), TWO_GPUS, {})[0]  # one job: the libraries' defaults
    assert not set(THREAD_VARIABLES) & set(alone.environment) and alone.threads is None


def test_a_users_omp_num_threads_is_respected(tmp_path):
    for job in plan_jobs(_settings(tmp_path, jobs=2), TWO_GPUS, {"OMP_NUM_THREADS": "3"}):
        assert job.environment["OMP_NUM_THREADS"] == "3" and job.threads == 3
        assert "MKL_NUM_THREADS" not in job.environment


def test_a_step_runs_in_its_jobs_environment(tmp_path):
    """run_logged, which starts every heareval step, hands the job's environment over."""
    job = plan_jobs(_settings(tmp_path, jobs=2), TWO_GPUS, {"PATH": "/usr/bin"})[1]
    log = tmp_path / "env.log"
    show = "import json, os; print(json.dumps(dict(os.environ)))"
    run_logged([sys.executable, "-c", show], log, tmp_path, job.environment)
    seen = json.loads(log.read_text())
    assert seen["CUDA_VISIBLE_DEVICES"] == "1" and seen["OMP_NUM_THREADS"] == "4"
    assert seen["TF_NUM_INTRAOP_THREADS"] == "4" and seen["PATH"] == "/usr/bin"


def test_a_gpu_that_is_not_there_stops_the_run_before_anything_runs(tmp_path, monkeypatch):
    (tmp_path / "task").mkdir()
    monkeypatch.setattr(job_settings, "visible_gpu_count", lambda: 2)
    with pytest.raises(RunError, match=r"--devices 0,2: GPU 2 is not there \(this process sees "
                       r"GPUs 0-1\)") as error:  # fmt: skip
        run_hear(_settings(tmp_path, jobs=2, devices=(0, 2)))
    assert "\n" not in str(error.value) and not (tmp_path / "run").exists()
    monkeypatch.setattr(job_settings, "visible_gpu_count", lambda: 0)
    with pytest.raises(RunError, match="GPU 0 is not there .this process sees no GPU"):
        run_hear(_settings(tmp_path, devices=(0,)))


def _hear(tmp_path, *options):
    return CliRunner().invoke(cli.main, ["hear", "--module", "hearbaseline", "--tasks-dir",
                                         str(tmp_path), "--out", str(tmp_path / "run"), *options])  # fmt: skip


def test_devices_option_on_the_command_line(tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr(cli, "run_hear", lambda settings: asked.append(settings) or [])
    assert _hear(tmp_path, "--devices", "0,0").exit_code == 0
    assert _hear(tmp_path, "--devices", "1", "--jobs", "3").exit_code == 0
    assert _hear(tmp_path).exit_code == 0
    assert [(s.devices, s.jobs) for s in asked] == [((0, 0), 2), ((1,), 3), ((), 1)]
    for bad in ("0,x", "", "-1", "0,,1"):
        refused = _hear(tmp_path, "--devices", bad)
        assert refused.exit_code == 2 and "Invalid value for --devices" in refused.output


def test_a_missing_gpu_on_the_command_line_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "task").mkdir()
    monkeypatch.setattr(job_settings, "visible_gpu_count", lambda: 1)
    refused = _hear(tmp_path, "--devices", "0,1")
    assert refused.exit_code == 1
    assert refused.output == "Error: --devices 0,1: GPU 1 is not there (this process sees GPU 0)\n"


def test_a_spawned_worker_filters_the_known_third_party_warnings():
    import multiprocessing
    import warnings

    from hear_ced.eval.hear_run import schedule

    queue = multiprocessing.get_context("spawn").SimpleQueue()
    queue.put("job")
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()  # a spawned worker has none of the parent's filters
        warnings.simplefilter("always")
        schedule._become_job(queue)
        warnings.warn(
            "pkg_resources is deprecated as an API. See the setuptools docs.",
            UserWarning,
            stacklevel=1,
        )
        warnings.warn("a warning of the user's own", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["a warning of the user's own"]
    assert schedule._job == "job"
    schedule._job = None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"grid": "fastest"}, "grid: unknown grid 'fastest'; choose one of ('default', 'fast'"),
        ({"probe": "svm"}, "probe: unknown probe 'svm'; choose one of ('linear', 'mlp', 'both')"),
        ({"lock": "nfs"}, "lock: unknown lock 'nfs'"),
        ({"jobs": 0}, "jobs: must be positive, got 0"),
        ({"grid_points": -1}, "grid_points: must be positive, got -1"),
        ({"devices": (0, -1)}, "devices: GPU indices are not negative"),
        ({"model_options": ["hop_ms", 25]}, "model_options: input should be a valid dictionary"),
        ({"tasks_dir": "tasks"}, "tasks_dir: input should be an instance of path, got str"),
    ],
)
def test_bad_settings_are_refused_when_made_naming_the_setting(tmp_path, changes, message):
    with pytest.raises(ConfigError) as refused:
        _settings(tmp_path, **changes)
    assert str(refused.value).startswith(message)
    assert "\n" not in str(refused.value)
