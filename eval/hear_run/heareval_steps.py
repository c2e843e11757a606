"""heareval's steps as subprocesses, and the files they leave behind.

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
from collections.abc import Mapping
from pathlib import Path

from hear_ced.common.logs import PROGRESS_INTERVAL, child_warnings
from hear_ced.eval.hear_run.errors import TaskError

SCORES = "test.predicted-scores.json"
PREDICTION_FILES = ("prediction-done.json", "prediction.log", SCORES)


def with_shims(module: str, arguments: list[str]) -> list[str]:
    """Command running ``python -m module arguments`` with the compatibility shims."""
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


def embeddings_arguments(
    module: str, model: str | None, options: dict, tasks_dir: Path, task: str, embeddings: Path
) -> list[str]:
    """Arguments of heareval's embeddings runner for one task."""
    arguments = [module, "--tasks-dir", str(tasks_dir), "--task", task,
                 "--embeddings-dir", str(embeddings)]  # fmt: skip
    if model:
        arguments += ["--model", model]
    if options:
        arguments += ["--model-options", json.dumps(options)]
    return arguments


def predictions_arguments(embed_dir: Path, grid: str, grid_points: int) -> list[str]:
    return [str(embed_dir), "--grid", grid, "--grid-points", str(grid_points)]


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
