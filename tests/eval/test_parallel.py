"""Tasks in parallel: --jobs on GPUs and cores, several runs on one folder."""

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime

import pytest
from filelock import FileLock

from hear_ced.eval.hear_run import settings as job_settings
from hear_ced.eval.hear_run.settings import RunSettings

from .conftest import evaluate

pytestmark = pytest.mark.slow
TASKS = ("scene_a", "scene_b")


def _scene_task(synthetic_tasks, folder, name):
    """The synthetic multiclass scene task at 16 kHz only, under another name."""
    shutil.copytree(synthetic_tasks / "synth_scene_multiclass", folder / name,
                    ignore=shutil.ignore_patterns("44100"))  # fmt: skip
    return folder / name


# Python start-up code that records the GPU and thread settings each process was started with.
RECORD_ENVIRONMENT = """
import json, os
folder = os.environ.get("CED_TEST_RECORD_ENV")
if folder:
    with open("/proc/self/cmdline", "rb") as handle:
        command = [part.decode() for part in handle.read().split(b"\\0") if part]
    names = ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")
    with open(os.path.join(folder, f"{os.getpid()}.json"), "w") as handle:
        json.dump({"command": command, **{name: os.environ.get(name) for name in names}}, handle)
"""


@pytest.fixture(scope="module")
def jobs_run(synthetic_tasks, tiny_checkpoint, tmp_path_factory):
    """Two tasks, two jobs on a machine that seems to have two GPUs and 8 cores.

    Every process the run starts records its environment (``jobs_run.processes``).
    """
    recorder, records = tmp_path_factory.mktemp("recorder"), tmp_path_factory.mktemp("records")
    (recorder / "sitecustomize.py").write_text(RECORD_ENVIRONMENT)
    tasks = tmp_path_factory.mktemp("tasks")
    for name in TASKS:
        _scene_task(synthetic_tasks, tasks, name)
    settings = RunSettings(
        module="hear_ced.custom", model=str(tiny_checkpoint), tasks_dir=tasks,
        out=tmp_path_factory.mktemp("jobs_run"), probe="linear", jobs=2,
    )  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(job_settings, "visible_gpu_count", lambda: 2)
        patch.setattr(job_settings, "available_cores", lambda: 8)
        patch.delenv("OMP_NUM_THREADS", raising=False)
        patch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        patch.setenv(
            "PYTHONPATH", os.pathsep.join([str(recorder), os.environ.get("PYTHONPATH", "")])
        )
        patch.setenv("CED_TEST_RECORD_ENV", str(records))
        run = evaluate(settings)
    run.processes = [json.loads(path.read_text()) for path in records.iterdir()]
    return run


def _started(run, *words) -> list[dict]:
    return [p for p in run.processes if all(word in p["command"] for word in words)]


def test_each_job_runs_its_steps_on_its_own_gpu_with_its_share_of_the_cores(jobs_run):
    embedding = [_started(jobs_run, "heareval.embeddings.runner", "--task", t)[0] for t in TASKS]
    # the two jobs' steps: GPU 0 and GPU 1 (of two), 8 cores // 2 jobs threads each
    assert sorted(step["CUDA_VISIBLE_DEVICES"] for step in embedding) == ["0", "1"]
    for step in embedding:
        assert step["OMP_NUM_THREADS"] == step["MKL_NUM_THREADS"] == "4"
        assert step["TF_NUM_INTRAOP_THREADS"] == "4"
    for task, step in zip(TASKS, embedding, strict=True):
        assert jobs_run.results[task]["gpu"] == step["CUDA_VISIBLE_DEVICES"]  # recorded per task
        assert any(f"] {task}: ok" in line and f"(GPU {step['CUDA_VISIBLE_DEVICES']}, " in line
                   for line in jobs_run.lines)  # fmt: skip
    (check,) = _started(jobs_run, "hear_ced.eval.hear_run.module_check")
    assert check["CUDA_VISIBLE_DEVICES"] == "0"  # the module is checked where the first job runs
    assert "jobs on GPUs (CUDA_VISIBLE_DEVICES): 0, 1, 4 CPU threads each" in jobs_run.lines


def test_two_jobs_run_both_tasks_at_once(jobs_run):
    first, second = (jobs_run.results[task] for task in TASKS)
    assert first["status"] == second["status"] == "ok"
    spans = [
        (datetime.fromisoformat(r["started"]), datetime.fromisoformat(r["finished"]))
        for r in (first, second)
    ]
    assert max(s for s, _ in spans) < min(f for _, f in spans)  # the two overlapped in time


def _hear(settings_out, tasks_dir, model, *extra) -> list[str]:
    return [sys.executable, "-c", "from hear_ced.eval.cli import main; main()", "hear", "--module", "hear_ced.custom",
            "--model", str(model), "--tasks-dir", str(tasks_dir), "--probe", "linear",
            "--out", str(settings_out), *extra]  # fmt: skip


@pytest.fixture
def two_tasks(synthetic_tasks, tmp_path):
    tasks = tmp_path / "tasks"
    _scene_task(synthetic_tasks, tasks, "scene_a")
    _scene_task(synthetic_tasks, tasks, "scene_b")
    return tasks


def test_two_runs_share_the_tasks_and_wait_for_one_a_third_holds(
    two_tasks, tiny_checkpoint, tmp_path
):
    out = tmp_path / "run"
    (out / "locks").mkdir(parents=True)
    other_run = FileLock(out / "locks" / "scene_a.lock")
    other_run.acquire()
    runs = [subprocess.Popen(_hear(out, two_tasks, tiny_checkpoint), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for _ in range(2)]  # fmt: skip
    deadline = time.time() + 600
    while not (out / "results" / "scene_b.json").exists() and time.time() < deadline:
        for run in runs:
            assert run.poll() is None, run.stdout.read()
        time.sleep(1)
    assert not (out / "results" / "scene_a.json").exists()  # left to its holder
    other_run.release()  # the holder stops without finishing it
    outputs = [run.communicate(timeout=900)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    # at least the run that did scene_b found scene_a held and waited for it
    assert any("waiting for scene_a: another ced-eval run works on it" in o for o in outputs)
    lines = [line for output in outputs for line in output.splitlines()]
    for task in ("scene_a", "scene_b"):
        worked = [line for line in lines if f"] {task}: ok" in line and line.endswith(" s)")]
        assert len(worked) == 1, lines  # one run did the work; the other read its result
        assert sum(f"] {task}: ok" in line for line in lines) == 2
