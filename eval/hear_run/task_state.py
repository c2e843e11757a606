"""One task from embeddings to scores, resumable at every step.

States, each kept on disk: checked -> embedded (heareval's ``.done.embeddings``)
-> MLP scored (``prediction-done.json`` and the score file) and/or linear probe
scored -> ``results/<task>.json`` with ``status: ok``. A rerun skips what is
done, restarts an interrupted step from a clean folder, and redoes a result
file it cannot read. A failing step fails its task only.

Every heareval step runs in its own Python process with :mod:`hear_ced.eval.compat`
installed, so a crash, an ``assert`` or a leaked global in one task cannot take
the others down, and each step's output goes to its own log file.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

from hear_ced.common.files import read_json, write_json
from hear_ced.common.logs import PROGRESS_INTERVAL, child_warnings
from hear_ced.eval.hear_run.settings import Job, RunSettings, TaskError
from hear_ced.eval.hear_run.task_checks import audio_totals, check_task
from hear_ced.eval.tasks import TASK_BY_DIRECTORY, percent

SCORES = "test.predicted-scores.json"
PREDICTION_FILES = ("prediction-done.json", "prediction.log", SCORES)


def with_shims(module: str, arguments: list[str]) -> list[str]:
    """heareval's ``python -m module arguments`` in a process of its own, under the shims."""
    return [sys.executable, "-m", "hear_ced.eval.compat", module, *arguments]


def _last_error(log: Path) -> str:
    """The exception line closing a traceback, or the last non-empty line."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    for line in reversed(lines):
        head = line.split(":", 1)[0]
        if head.endswith(("Error", "Exception", "Interrupt")) and " " not in head:
            return line[:600]
    return lines[-1][:600] if lines else "no output"


def run_logged(
    command: list[str], log: Path, cwd: Path, environment: Mapping[str, str] | None = None
) -> None:
    """Run a step, all output to ``log``; a failure raises TaskError naming the cause.

    ``environment`` is its job's (``settings.job_environment``: its GPU and CPU
    threads); by default this process's. Known third-party warnings are off, and
    tqdm redraws every few seconds: in a log file its redraws pile up on one line.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    environment = dict(
        os.environ if environment is None else environment,
        PYTHONUNBUFFERED="1",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONWARNINGS=child_warnings(os.environ.get("PYTHONWARNINGS")),
        TQDM_MININTERVAL=os.environ.get("TQDM_MININTERVAL", str(PROGRESS_INTERVAL)),
    )
    with open(log, "w") as handle:
        code = subprocess.call(
            command, stdout=handle, stderr=subprocess.STDOUT, cwd=cwd, env=environment
        )
    if code != 0:
        raise TaskError(f"{_last_error(log)} (exit {code}; full log {log})")


def module_folder_name(module: str, options: dict) -> str:
    """heareval's name for a module's embeddings folder: options are part of it."""
    if not options:
        return module
    from slugify import slugify

    return module + "-" + "-".join(f"{slugify(k)}={slugify(str(v))}" for k, v in options.items())


def clean_predictions(embed_dir: Path) -> None:
    """Remove what an interrupted (or unreadable) heareval prediction step left behind."""
    shutil.rmtree(embed_dir / "lightning_logs", ignore_errors=True)
    for name in PREDICTION_FILES:
        (embed_dir / name).unlink(missing_ok=True)
    for stale in embed_dir.glob("*.predictions.pkl"):
        stale.unlink()


def heareval_scores(embed_dir: Path, metric: str) -> dict:
    """Primary metric from heareval's score file (k-fold: its mean).

    A missing or unreadable score file fails its task, and the predictions are
    cleared so the next run makes them again.
    """
    path = embed_dir / SCORES
    try:
        data = json.loads(path.read_text())  # heareval writes bare NaN / Infinity
        if "aggregated_scores" in data:
            score = data["aggregated_scores"].get(f"test_{metric}_mean")
            folds = {
                name: values.get(f"test_{metric}")
                for name, values in data.items()
                if isinstance(values, dict) and f"test_{metric}" in values
            }
        else:
            score = data.get("test", {}).get(f"test_{metric}")
            folds = {"test": score}
    except FileNotFoundError:
        clean_predictions(embed_dir)
        raise TaskError(f"heareval wrote no {SCORES} in {embed_dir}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        clean_predictions(embed_dir)
        raise TaskError(f"unreadable {path} ({exc}); predictions are redone next run") from exc
    if not isinstance(score, int | float):
        clean_predictions(embed_dir)
        raise TaskError(f"{path} has no test_{metric} score; predictions are redone next run")
    if not math.isfinite(score):
        raise TaskError(f"heareval scored {metric} as {score} (non-finite) in {path}")
    return {"metric": metric, "score": float(score), "folds": folds}


def check_embeddings_finite(embed_dir: Path, splits: list[str], rows: int = 4096) -> None:
    """Name NaN/Infinity in a module's embeddings (heareval would stop at a bare assert)."""
    import numpy as np

    for split in splits:
        shape = tuple(json.loads((embed_dir / f"{split}.embedding-dimensions.json").read_text()))
        values = np.memmap(
            embed_dir / f"{split}.embeddings.npy", dtype=np.float32, mode="r", shape=shape
        )
        for first in range(0, shape[0], rows):
            if not np.isfinite(values[first : first + rows]).all():
                (embed_dir / ".done.embeddings").unlink(missing_ok=True)  # recompute next run
                raise TaskError(f"the module produced NaN or Infinity embeddings (split {split})")


def embeddings_root(settings: RunSettings) -> Path:
    """heareval's folder of this run's module (and options), holding one folder per task."""
    return settings.out / "embeddings" / module_folder_name(settings.module, settings.model_options)


def read_result(path: Path) -> dict:
    """A task's stored result; a missing or unreadable one counts as not started."""
    try:
        result = read_json(path)
    except (FileNotFoundError, ValueError):
        return {}
    return result if isinstance(result, dict) else {}


def finished_result(settings: RunSettings, task: str) -> dict | None:
    """The stored result of a task finished with every requested part, else None."""
    result = read_result(settings.result_path(task))
    done = result.get("status") == "ok" and all(part in result for part in settings.parts)
    return result if done else None


def run_task(task_dir: Path, settings: RunSettings, module_info: dict, job: Job) -> dict:
    """Evaluate one task in ``job`` (its GPU and threads); returns (and stores) its result."""
    result_path = settings.result_path(task_dir.name)
    result = read_result(result_path)
    hear_task = TASK_BY_DIRECTORY.get(task_dir.name)
    result.update(
        {
            "task": task_dir.name,
            "hear_column": hear_task.column if hear_task else None,
            "module": settings.module,
            "model": settings.model,
            "device": module_info["device"],
            "gpu": job.device,  # the CUDA_VISIBLE_DEVICES of its steps
            "started": _now(),
            "errors": {},
        }
    )
    embed_dir = embeddings_root(settings) / task_dir.name
    seconds = result.setdefault("seconds", {})
    try:
        metadata = check_task(task_dir, module_info["sample_rate"])
        result["primary_metric"] = metadata["evaluation"][0]
        result["embedding_type"] = metadata["embedding_type"]
        result["clips"], result["audio_seconds"] = audio_totals(
            task_dir, module_info["sample_rate"], metadata["splits"]
        )
        if not (embed_dir / ".done.embeddings").exists():
            seconds["embeddings"] = _embed(task_dir, settings, job)
        check_embeddings_finite(embed_dir, metadata["splits"])
    except TaskError as exc:
        result["errors"]["embeddings"] = str(exc)
        return _store(result, result_path, settings.parts)
    for part in settings.parts:
        if result.get(part, {}).get("score") is not None:
            continue
        start = time.time()
        try:
            if part == "mlp":
                result[part] = _run_mlp(embed_dir, settings, result["primary_metric"], job)
            else:
                result[part] = _run_linear(embed_dir, job.threads)
        except TaskError as exc:
            result["errors"][part] = str(exc)
            result.pop(part, None)
        seconds[part] = round(time.time() - start, 2)
    return _store(result, result_path, settings.parts)


def _embed(task_dir: Path, settings: RunSettings, job: Job) -> float:
    """heareval's embeddings runner on the task; returns the seconds it took."""
    arguments = [settings.module, "--tasks-dir", str(settings.tasks_dir), "--task", task_dir.name,
                 "--embeddings-dir", str(settings.out / "embeddings")]  # fmt: skip
    if settings.model:
        arguments += ["--model", settings.model]
    if settings.model_options:
        arguments += ["--model-options", json.dumps(settings.model_options)]
    log = settings.out / "logs" / f"{task_dir.name}.embeddings.log"
    start = time.time()
    run_logged(
        with_shims("heareval.embeddings.runner", arguments), log, settings.out, job.environment
    )
    return round(time.time() - start, 2)


def _run_mlp(embed_dir: Path, settings: RunSettings, metric: str, job: Job) -> dict:
    if not (embed_dir / "prediction-done.json").exists():
        clean_predictions(embed_dir)
        run_logged(
            with_shims(
                "heareval.predictions.runner",
                [
                    str(embed_dir),
                    "--grid",
                    settings.grid,
                    "--grid-points",
                    str(settings.grid_points),
                ],
            ),
            settings.out / "logs" / f"{embed_dir.name}.predictions.log",
            settings.out,
            job.environment,
        )
    return heareval_scores(embed_dir, metric)


def _run_linear(embed_dir: Path, threads: int | None) -> dict:
    from threadpoolctl import threadpool_limits

    from hear_ced.eval.probe import ProbeError, linear_probe

    try:
        with threadpool_limits(limits=threads):
            scores = linear_probe(embed_dir)
    except (ProbeError, KeyError, ValueError) as exc:
        raise TaskError(f"linear probe: {exc}") from exc
    if not math.isfinite(scores["score"]):
        raise TaskError(f"linear probe scored {scores['metric']} as {scores['score']} (non-finite)")
    return scores


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _store(result: dict, path: Path, wanted: tuple[str, ...]) -> dict:
    done = not result["errors"] and all(part in result for part in wanted)
    result["status"] = "ok" if done else "failed"
    result["finished"] = _now()
    write_json(path, result, allow_nan=True)
    return result


def summary_line(result: dict) -> str:
    """One progress line of a finished task; scores in % as in every ced-eval table."""
    if result["status"] != "ok":
        return "FAILED: " + "; ".join(f"{k}: {v}" for k, v in result["errors"].items())
    parts = []
    for part in ("mlp", "linear"):
        if part in result:
            parts.append(f"{part}={percent(result[part]['score'])}%")  # finite when ok
    return f"ok  {result.get('primary_metric')} " + " ".join(parts)
