"""All tasks of a run: one after another, or ``jobs`` at a time in separate processes.

A process works on a task only while it holds the task's lock, so parallel
jobs and separate ``ced-eval hear`` invocations on one folder each take the
tasks nobody holds; a task another process holds is waited for at the end
(and taken over if that process stops without finishing it).

Each parallel job is a worker process that keeps one :class:`~.settings.Job`
(its GPU and CPU threads) for all the tasks it runs; the steps it starts get
that job's environment. Tasks run in this process (``--jobs 1``, and those
waited for at the end) use the first job's.

Progress goes to this module's logger: one line per task as it finishes
(a warning for a failed task); the caller shows :func:`summary_table` of the
returned results.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing.queues import SimpleQueue
from pathlib import Path

from hear_ced.common.logs import silence_known_noise
from hear_ced.common.tables import markdown_table
from hear_ced.eval.hear_run.identity import (
    claim_run,
    claim_task,
    in_turn,
    lock_kind,
    record_provenance,
    restart,
    run_identity,
)
from hear_ced.eval.hear_run.module_check import describe_module
from hear_ced.eval.hear_run.settings import Job, Machine, RunSettings, plan_jobs, resolved_model
from hear_ced.eval.hear_run.task_checks import select_task_dirs
from hear_ced.eval.hear_run.task_state import finished_result, run_task, summary_line
from hear_ced.eval.tasks import HEAR_TASKS, missing_directories, percent

log = logging.getLogger(__name__)


def run_hear(settings: RunSettings) -> list[dict]:
    """Evaluate every task of ``settings.tasks_dir``; returns one result per task."""
    settings.model = resolved_model(settings.model)
    settings.out, settings.tasks_dir = settings.out.resolve(), settings.tasks_dir.resolve()
    jobs = plan_jobs(settings, Machine.detect(os.environ), os.environ)
    task_dirs = select_task_dirs(settings.tasks_dir, settings.tasks)
    identity = run_identity(settings)
    settings.lock = lock_kind(settings.out, settings.lock)
    if settings.restart:
        restart(settings.out, settings.lock)
    claim_run(settings, identity)
    log.info(_coverage(settings, task_dirs))
    results: dict[str, dict] = {}
    for task_dir in task_dirs:
        if finished := finished_result(settings, task_dir.name):
            results[task_dir.name] = finished
    pending = [t for t in task_dirs if t.name not in results]
    done = 0
    for task_dir in task_dirs:
        if task_dir not in pending:
            done += 1
            log.info("[%d/%d] %s: %s (finished earlier)", done, len(task_dirs), task_dir.name,
                     summary_line(results[task_dir.name]))  # fmt: skip
    if pending:
        module_info = describe_module(
            settings.module, settings.model, settings.model_options, settings.out,
            jobs[0].environment,
        )  # fmt: skip
        record_provenance(settings, module_info)
        log.info("module %s: %s Hz, scene embedding %s, timestamp embedding %s (%s, %s embeddings)",
                 settings.module, module_info["sample_rate"], module_info["scene_embedding_size"],
                 module_info["timestamp_embedding_size"], module_info["device"],
                 module_info["embedding_method"])  # fmt: skip
        if jobs[0].device is not None:
            log.info("jobs on GPUs (CUDA_VISIBLE_DEVICES): %s, %s CPU threads each",
                     ", ".join(job.device for job in jobs), jobs[0].threads or "all")  # fmt: skip
        for result, note in _run_pending(pending, settings, module_info, jobs):
            done += 1
            results[result["task"]] = result
            level = logging.INFO if result["status"] == "ok" else logging.WARNING
            log.log(level, "[%d/%d] %s: %s %s", done, len(task_dirs), result["task"],
                    summary_line(result), note)  # fmt: skip
    return [results[t.name] for t in task_dirs]


def _coverage(settings: RunSettings, task_dirs: list[Path]) -> str:
    present = {p.name for p in task_dirs}
    missing = [t.column for t in HEAR_TASKS if not set(t.directories) <= present]
    if len(missing) == len(HEAR_TASKS):
        return (f"none of the {len(HEAR_TASKS)} HEAR tasks in {settings.tasks_dir}; "
                f"running {len(task_dirs)} other task(s)")  # fmt: skip
    folders = missing_directories(present)
    return f"{len(missing)} of {len(HEAR_TASKS)} HEAR tasks missing" + (
        f": {', '.join(missing)} (folders {', '.join(folders)})" if missing else ""
    )


def claim_and_run(
    task_dir: Path, settings: RunSettings, module_info: dict, wait: bool, job: Job
) -> tuple[dict, str] | None:
    """Run a task under its lock; None when another process holds it and ``wait`` is off."""
    return claim_task(
        settings.out, settings.lock, task_dir.name,
        lambda: finished_result(settings, task_dir.name),
        lambda: run_task(task_dir, settings, module_info, job),
        wait, "" if job.device is None else f"GPU {job.device}, ",
    )  # fmt: skip


_job: Job | None = None  # in a worker process: the job it is


def _become_job(jobs: SimpleQueue) -> None:
    """Worker initializer: take the next free job (each worker takes one of its own).

    A spawned worker starts without the CLI's warning filters, so it sets them again.
    """
    global _job
    silence_known_noise()
    _job = jobs.get()


def _claim_and_run_in_job(task_dir: Path, settings: RunSettings, module_info: dict):
    assert _job is not None, "runs in a worker started by _run_pending"
    return claim_and_run(task_dir, settings, module_info, False, _job)


def _run_pending(pending: list[Path], settings: RunSettings, module_info: dict, jobs: list[Job]):
    """(result, note) per task as they finish; tasks held elsewhere are waited for last."""
    by_name = {task_dir.name: task_dir for task_dir in pending}
    if settings.jobs == 1:
        yield from in_turn(
            list(by_name),
            lambda name, wait: claim_and_run(by_name[name], settings, module_info, wait, jobs[0]),
        )
        return
    held_elsewhere = []
    context = multiprocessing.get_context("spawn")  # no forked copies of loaded libraries
    free = context.SimpleQueue()
    for job in jobs:  # the pool starts at most settings.jobs workers and never replaces one
        free.put(job)
    with ProcessPoolExecutor(settings.jobs, mp_context=context, initializer=_become_job,
                             initargs=(free,)) as pool:  # fmt: skip
        futures = {pool.submit(_claim_and_run_in_job, t, settings, module_info): t for t in pending}
        for future in as_completed(futures):
            outcome = future.result()
            if outcome is None:
                held_elsewhere.append(futures[future])
            else:
                yield outcome
    for task_dir in sorted(held_elsewhere):
        yield claim_and_run(task_dir, settings, module_info, True, jobs[0])


def summary_table(results: list[dict]) -> str:
    """Markdown table of a run, one row per task, scores in % (as ``ced-eval report``'s)."""
    rows = []
    for result in results:
        scores = [percent(result.get(part, {}).get("score")) for part in ("mlp", "linear")]
        rows.append(
            (result["task"], result.get("primary_metric") or "-", *scores, result["status"])
        )
    return markdown_table(("task", "metric", "mlp %", "linear %", "status"), rows)
