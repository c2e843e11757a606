"""X-ARES's own entry point (``python -m xares.run``), one task at a time.

Each task runs in its own process under the shims (:mod:`eval.xares.launch`),
in the run's work folder (X-ARES keeps everything under ``./env``), with
all output in ``logs/<task>.xares.log``. X-ARES's job mode follows the
device: on a GPU its process pool (``--max-jobs 1``, GPU ``i % num_gpus``);
on a CPU ``--max-jobs 0``, in-process, since the pool's GPU index divides by
the GPU count.
"""

from __future__ import annotations

from pathlib import Path

from eval.hear_run.errors import RunError, TaskError
from eval.hear_run.heareval_steps import run_logged
from eval.xares import launch


def max_jobs() -> int:
    """X-ARES's ``--max-jobs`` for this machine: 0 (no process pool) without a GPU."""
    import torch

    return 1 if torch.cuda.device_count() > 0 else 0


def run_xares(encoder_py: str, task_py: str, work_dir: Path, log: Path, decode_log: Path) -> None:
    """X-ARES's encode and score stages (1 and 2) of one task; a failing process raises TaskError.

    Stage 0 (download) is never run: the audio is linked in and flagged ready.
    """
    arguments = [encoder_py, task_py, "--max-jobs", str(max_jobs()),
                 "--from-stage", "1", "--to-stage", "2"]  # fmt: skip
    run_logged(launch.command(decode_log, "xares.run", arguments), log, work_dir)


def describe(encoder_py: str, task_pys: list[str], work_dir: Path, log: Path) -> Path:
    """Run :mod:`eval.xares.describe` in a child; returns the JSON it wrote."""
    out = work_dir / "describe.json"
    out.unlink(missing_ok=True)
    command = launch.command(log.with_suffix(".decode"), "eval.xares.describe",
                             [str(out), encoder_py, *task_pys])  # fmt: skip
    try:
        run_logged(command, log, work_dir)
    except TaskError as exc:
        raise RunError(f"X-ARES could not build the encoder or read the tasks: {exc}") from exc
    return out


def read_score(path: Path) -> tuple[float, int] | None:
    """X-ARES's ``mlp_score.txt``/``knn_score.txt``: score and evaluation weight; None if absent or cut short."""
    try:
        score, weight = path.read_text().split()
        return float(score), int(weight)
    except (FileNotFoundError, ValueError):
        return None
