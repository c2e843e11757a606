"""``ced-eval hear``: HEAR tasks end to end, one module per concern.

* :mod:`.settings`: what a run is asked to do, its errors, and each parallel job's GPU and threads;
* :mod:`.task_checks`: a task folder is sound before heareval sees it;
* :mod:`.module_check`: the module follows the HEAR API (hearvalidator), in a child process;
* :mod:`.identity`: run identity, provenance, ``--restart``, the locks (flock or lock files)
  and claiming tasks (also for ``ced-eval xares``);
* :mod:`.task_state`: one task from embeddings to scores through heareval's subprocesses, resumable;
* :mod:`.schedule`: all tasks, one after another or in parallel processes.

Output folder layout::

    <out>/run.json                      identity and provenance: a folder holds one run
    <out>/module.json                   what the module check found (sizes, device, method)
    <out>/embeddings/<module>/<task>/   heareval's files (embeddings, predictions, scores)
    <out>/results/<task>.json           what this tool concluded, written atomically
    <out>/logs/<task>.<step>.log        full output of every heareval step
    <out>/locks/                        per-task locks shared by parallel jobs and runs

A task whose result says ``ok`` for every requested part is not touched again;
heareval itself skips finished embeddings and predictions.
"""
