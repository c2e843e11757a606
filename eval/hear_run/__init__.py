"""``ced-eval hear``: HEAR tasks end to end, one module per concern.

* :mod:`.settings`: what a run is asked to do, and each parallel job's GPU and threads;
* :mod:`.task_checks`: a task folder is sound before heareval sees it;
* :mod:`.module_check`: the module follows the HEAR API (hearvalidator), in a child process;
* :mod:`.identity`: run identity, provenance, ``--restart`` and the locks (flock or lock files);
* :mod:`.heareval_steps`: heareval's subprocesses and the files they leave;
* :mod:`.shared_audio`: tasks with identical audio (Beehive's folds) embed it once;
* :mod:`.task_state`: one task from embeddings to scores, resumable;
* :mod:`.schedule`: all tasks, one after another or in parallel processes.
"""
