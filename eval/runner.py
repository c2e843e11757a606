"""Run HEAR tasks end to end: embeddings, heareval's MLP, the linear probe, scores.

The work is split by concern in :mod:`eval.hear_run`; this module is its
public face (``ced-eval hear`` and the tests use it).

Output folder layout::

    <out>/run.json                      identity (module, weights sha256, options, grid,
                                        package version) and provenance: a folder holds one run
    <out>/module.json                   what the module check found (sizes, device, method)
    <out>/embeddings/<module>/<task>/   heareval's files (embeddings, predictions, scores);
                                        <module> carries the model options as heareval names it
    <out>/results/<task>.json           what this tool concluded, written atomically
    <out>/logs/<task>.<step>.log        full output of every heareval step
    <out>/locks/                        per-task locks shared by parallel jobs and runs
                                        (``kind``: flock or lock files, see hear_run.identity)

Resuming: a task whose result says ``ok`` for every requested part is not
touched again; heareval skips finished embeddings (``.done.embeddings``) and
predictions (``prediction-done.json``), and a step that was interrupted is
restarted from a clean folder.
"""

from eval.hear_run.errors import RunError, TaskError
from eval.hear_run.schedule import run_hear, summary_table
from eval.hear_run.settings import GRIDS, LOCKS, PROBES, RunSettings
from eval.hear_run.task_checks import check_task

__all__ = ["GRIDS", "LOCKS", "PROBES", "RunError", "RunSettings", "TaskError", "check_task",
           "run_hear", "summary_table"]  # fmt: skip
