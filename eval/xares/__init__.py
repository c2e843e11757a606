"""``ced-eval xares``: the X-ARES benchmark's own code on a hear_ced model, one module per concern.

* :mod:`.task_folders`: which task file defines each task folder; its audio tars;
* :mod:`.launch` and ``shims/``: X-ARES's processes, with a torchaudio stand-in;
* :mod:`.describe`: X-ARES's encoder check and task configs, read in a child;
* :mod:`.run`: what a run is asked to do; the encoder module X-ARES imports; X-ARES's
  ``xares.run`` per task; encoded tars that can be trusted; all tasks, resumable;
* :mod:`.report`: the table beside the published scores.

Output folder layout::

    <out>/run.json                     identity: module, model, passes, weights sha256, versions
    <out>/embeddings/                  X-ARES's working folder: the encoder module, copied task
                                       files, env/<task>/ (linked audio tars, encoded tars,
                                       checkpoints, X-ARES's score files)
    <out>/results/<task>.json          what this tool concluded, written atomically
    <out>/logs/<task>.xares.log        X-ARES's full output
    <out>/report.md, report.csv        one row per task
    <out>/locks/                       per-task locks shared by concurrent runs
"""
