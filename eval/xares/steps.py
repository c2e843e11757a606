"""X-ARES's own entry point (``python -m xares.run``), one task at a time, and its encoder.

Each task runs in its own process under the shims (:mod:`hear_ced.eval.xares.launch`),
in the run's work folder (X-ARES keeps everything under ``./env``), with
all output in ``logs/<task>.xares.log``. X-ARES's job mode follows the
device: on a GPU its process pool (``--max-jobs 1``, GPU ``i % num_gpus``);
on a CPU ``--max-jobs 0``, in-process, since the pool's GPU index divides by
the GPU count.

X-ARES builds its encoder from a file path, without arguments, from the one
module-level name ending in ``Encoder``; the class name also names X-ARES's
output folders (``embeddings/CEDEncoder``, ``checkpoints/CEDEncoder``).
"""

from __future__ import annotations

from pathlib import Path

from hear_ced.common.files import write_text
from hear_ced.eval.hear_run.errors import RunError, TaskError
from hear_ced.eval.hear_run.task_state import run_logged
from hear_ced.eval.xares import launch

MODULE = "ced_xares_encoder"
CLASS = "CEDEncoder"

_TEMPLATE = '''"""This run's X-ARES encoder, written by ced-eval xares."""

import hear_ced.xares as _xares


class {cls}(_xares.CEDEncoder):
    def __init__(self) -> None:
        super().__init__(variant={variant!r}, model_file_path={model!r}, passes={passes!r})
'''


def write_encoder_module(
    work_dir: Path, variant: str | None, model: str | None, passes: int
) -> str:
    """Write the module into ``work_dir``; returns the path X-ARES is given (relative to it)."""
    path = work_dir / f"{MODULE}.py"
    write_text(path, _TEMPLATE.format(cls=CLASS, variant=variant, model=model or "", passes=passes))
    return path.name


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
    """Run :mod:`hear_ced.eval.xares.describe` in a child; returns the JSON it wrote."""
    out = work_dir / "describe.json"
    out.unlink(missing_ok=True)
    command = launch.command(log.with_suffix(".decode"), "hear_ced.eval.xares.describe",
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
