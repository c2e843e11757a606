"""Run HEAR tasks end to end: embeddings, heareval's MLP, the linear probe, scores.

Every heareval step runs in its own Python process (with :mod:`eval.compat`
installed), so a crash, an ``assert`` or a leaked global in one task cannot
take the others down, and each task's output is logged to its own file.

Output folder layout::

    <out>/run.json                      module, weights, grid: a folder holds one run
    <out>/embeddings/<module>/<task>/   heareval's files (embeddings, predictions, scores)
    <out>/results/<task>.json           what this tool concluded, written atomically
    <out>/logs/<task>.<step>.log        full output of every heareval step

Resuming: a task whose result says ``ok`` for every requested part is not
touched again; heareval skips finished embeddings (``.done.embeddings``) and
predictions (``prediction-done.json``), and a step that was interrupted is
restarted from a clean folder.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from eval.tasks import HEAR_TASKS, SIZES, TASK_BY_DIRECTORY, missing_directories
from hear_ced.atomic import write_json_atomic

PROBES = ("linear", "mlp", "both")
GRIDS = ("default", "fast", "faster")
KNOWN_METRICS = frozenset(
    {
        "top1_acc", "pitch_acc", "chroma_acc", "mAP", "d_prime", "aucroc", "segment_1s_er",
        "event_onset_200ms_fms", "event_onset_50ms_fms", "event_onset_offset_50ms_20perc_fms",
    }
)  # fmt: skip
SPLIT_MODES = ("trainvaltest", "new_split_kfold", "presplit_kfold")
PREDICTION_FILES = ("prediction-done.json", "prediction.log", "test.predicted-scores.json")


class RunError(RuntimeError):
    """The whole run cannot go on (bad module, foreign output folder, ...)."""


class TaskError(RuntimeError):
    """One task cannot be evaluated; the others still run."""


def write_json(path: Path, data: dict) -> None:
    """Atomic JSON write: a reader sees the old file or the new one, never half of one."""
    write_json_atomic(path, data, indent=2, allow_nan=True)


def parts_for(probe: str) -> tuple[str, ...]:
    if probe not in PROBES:
        raise RunError(f"unknown probe {probe!r}; choose one of {PROBES}")
    return ("mlp", "linear") if probe == "both" else (probe,)


# ---------------------------------------------------------------- task checks


def _read_json(path: Path, what: str):
    if not path.is_file():
        raise TaskError(f"missing {what} ({path.name})")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TaskError(f"{path.name} is not valid JSON: {exc}") from exc


def _read_vocabulary(task_dir: Path) -> set[str]:
    path = task_dir / "labelvocabulary.csv"
    if not path.is_file():
        raise TaskError("missing labelvocabulary.csv")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"idx", "label"} <= set(rows[0]):
        raise TaskError("labelvocabulary.csv needs an 'idx,label' header and at least one row")
    indices = sorted(int(row["idx"]) for row in rows)
    if indices != list(range(len(rows))):
        raise TaskError("labelvocabulary.csv indices must be 0..n-1")
    return {str(row["label"]) for row in rows}


def check_task(task_dir: Path, sample_rate: int) -> dict:
    """Validate a task folder before heareval sees it; returns its metadata.

    heareval reports a bad task with a bare ``assert`` deep in a run; this names
    the problem: missing or malformed metadata, labels outside the vocabulary,
    no audio at the module's sample rate, missing or unreadable wav files.
    """
    metadata = _read_json(task_dir / "task_metadata.json", "task metadata")
    if not isinstance(metadata, dict):
        raise TaskError("task_metadata.json must hold a JSON object")
    required = ("task_name", "embedding_type", "prediction_type", "split_mode", "splits")
    absent = [key for key in (*required, "evaluation", "sample_duration") if key not in metadata]
    if absent:
        raise TaskError(f"task_metadata.json lacks {absent}")
    allowed = {
        "embedding_type": ("scene", "event"),
        "prediction_type": ("multiclass", "multilabel"),
        "split_mode": SPLIT_MODES,
    }
    for key, values in allowed.items():
        if metadata[key] not in values:
            raise TaskError(f"task_metadata.json {key}={metadata[key]!r}, expected one of {values}")
    unknown = [m for m in metadata["evaluation"] if m not in KNOWN_METRICS]
    if not metadata["evaluation"] or unknown:
        raise TaskError(
            f"task_metadata.json evaluation {metadata['evaluation']!r} has no/unknown metrics"
        )
    vocabulary = _read_vocabulary(task_dir)
    rate_dir = task_dir / str(sample_rate)
    if not rate_dir.is_dir():
        have = sorted(p.name for p in task_dir.iterdir() if p.is_dir() and p.name.isdigit())
        raise TaskError(
            f"no audio at the module's {sample_rate} Hz: folder {rate_dir.name}/ missing "
            f"(task has {', '.join(have) or 'no sample-rate folders'}); "
            f"make it with `ced-eval prepare-tasks TASK --out DIR --rate {sample_rate}`"
        )
    for split in metadata["splits"]:
        labels = _read_json(task_dir / f"{split}.json", f"labels of split {split}")
        if not isinstance(labels, dict) or not labels:
            raise TaskError(f"{split}.json must map file names to labels and not be empty")
        for name, file_labels in labels.items():
            names = [e["label"] if isinstance(e, dict) else e for e in file_labels]
            outside = [str(label) for label in names if str(label) not in vocabulary]
            if outside:
                raise TaskError(
                    f"{split}.json: {name} has labels {outside} not in labelvocabulary.csv"
                )
            _check_wav(rate_dir / split / name, sample_rate)
    return metadata


def _check_wav(path: Path, sample_rate: int) -> None:
    if not path.is_file():
        raise TaskError(
            f"missing audio file {path.parent.parent.name}/{path.parent.name}/{path.name}"
        )
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise TaskError(f"unreadable audio file {path}: {exc}") from exc
    if info.samplerate != sample_rate:
        raise TaskError(f"{path} is {info.samplerate} Hz but sits in the {sample_rate} Hz folder")


# ---------------------------------------------------------------- subprocesses


def _python_with_compat(module: str, arguments: list[str]) -> list[str]:
    """Command running ``python -m module arguments`` with the compatibility shims."""
    code = (
        "import sys, runpy, eval.compat as c; c.install(); "
        f"sys.argv = [{module!r}] + sys.argv[1:]; runpy.run_module({module!r}, run_name='__main__')"
    )
    return [sys.executable, "-c", code, *arguments]


def _last_error(log: Path) -> str:
    """The exception line closing a traceback, or the last non-empty line."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    for line in reversed(lines):
        head = line.split(":", 1)[0]
        if head.endswith(("Error", "Exception", "Interrupt")) and " " not in head:
            return line[:400]
    return lines[-1][:400] if lines else "no output"


def run_logged(command: list[str], log: Path, cwd: Path) -> None:
    """Run a step, all output to ``log``; a failure raises TaskError naming the cause."""
    log.parent.mkdir(parents=True, exist_ok=True)
    environment = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
    with open(log, "w") as handle:
        code = subprocess.call(
            command, stdout=handle, stderr=subprocess.STDOUT, cwd=cwd, env=environment
        )
    if code != 0:
        raise TaskError(f"{_last_error(log)} (exit {code}; full log {log})")


def describe_module(module: str, model: str | None, out: Path) -> dict:
    """Load the module in a child process and check it follows the HEAR API."""
    info_path = out / "module.json"
    log = out / "logs" / "module-check.log"
    command = [sys.executable, "-m", "eval.runner", module, model or "", str(info_path)]
    try:
        run_logged(command, log, out)
    except TaskError as exc:
        raise RunError(f"module {module} does not work as a HEAR module: {exc}") from exc
    return json.loads(info_path.read_text())


def cuda_problems(cuda: bool, has_pynvml: bool, tensorflow_gpus: int) -> list[str]:
    """Why heareval would stop on this machine: on a CUDA machine it needs pynvml and a
    TensorFlow that sees a GPU too (tensorflow-cpu does not)."""
    if not cuda:
        return []
    problems = [] if has_pynvml else ["heareval imports pynvml, which is not installed"]
    if tensorflow_gpus == 0:
        problems.append("heareval refuses to embed when torch sees a GPU and TensorFlow does not")
    return problems


def _check_machine() -> None:
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        return
    import tensorflow as tf

    problems = cuda_problems(
        True,
        importlib.util.find_spec("pynvml") is not None,
        len(tf.config.list_physical_devices("GPU")),
    )
    if problems:
        raise RuntimeError(
            "; ".join(problems) + ". Run on the CPU with CUDA_VISIBLE_DEVICES= ced-eval ..."
        )


def _check_module_here(module_name: str, model: str, info_path: str) -> None:
    """Child-process side of describe_module: the HEAR API checks themselves."""
    import importlib

    import numpy as np
    import torch

    from eval import compat

    compat.install()
    _check_machine()
    module = importlib.import_module(module_name)
    for name in ("load_model", "get_scene_embeddings", "get_timestamp_embeddings"):
        if not callable(getattr(module, name, None)):
            raise TypeError(f"{module_name} has no function {name}()")
    loaded = module.load_model(model) if model else module.load_model()
    sizes = {}
    for name in ("sample_rate", "scene_embedding_size", "timestamp_embedding_size"):
        value = getattr(loaded, name, None)
        if not isinstance(value, int) or value <= 0:
            raise TypeError(f"model of {module_name} lacks a positive integer attribute {name}")
        sizes[name] = value
    if not isinstance(loaded, torch.nn.Module):
        raise TypeError(
            f"load_model() of {module_name} returned {type(loaded).__name__}, not a torch module"
        )
    audio = torch.from_numpy(
        np.random.default_rng(0).uniform(-0.1, 0.1, (2, sizes["sample_rate"])).astype(np.float32)
    )
    with torch.no_grad():
        scene = module.get_scene_embeddings(audio, loaded)
        embeddings, timestamps = module.get_timestamp_embeddings(audio, loaded)
    if tuple(scene.shape) != (2, sizes["scene_embedding_size"]):
        raise ValueError(
            f"scene embeddings have shape {tuple(scene.shape)}, expected (2, {sizes['scene_embedding_size']})"
        )
    if embeddings.ndim != 3 or embeddings.shape[2] != sizes["timestamp_embedding_size"]:
        raise ValueError(f"timestamp embeddings have shape {tuple(embeddings.shape)}")
    if tuple(timestamps.shape) != tuple(embeddings.shape[:2]):
        raise ValueError(
            f"timestamps {tuple(timestamps.shape)} do not match embeddings {tuple(embeddings.shape)}"
        )
    write_json(
        Path(info_path),
        {"module": module_name, "model": model or None, **sizes, "ced_size": _ced_size(loaded)},
    )


def _ced_size(loaded) -> str | None:
    """tiny/mini/small/base when the loaded model is a CED of a published size."""
    from hear_ced.model import VARIANTS

    config = getattr(getattr(loaded, "model", None), "config", None)
    shape = tuple(getattr(config, key, None) for key in ("embed_dim", "depth", "num_heads"))
    for size in SIZES:
        variant = VARIANTS[size]
        if shape == (variant.embed_dim, variant.depth, variant.num_heads):
            return size
    return None


# ---------------------------------------------------------------- the run


@dataclass
class RunSettings:
    module: str
    model: str | None
    tasks_dir: Path
    out: Path
    tasks: tuple[str, ...] = ()
    grid: str = "default"
    grid_points: int = 8
    probe: str = "both"

    def identity(self) -> dict:
        """What makes two runs comparable; one output folder holds one identity."""
        return {
            "module": self.module,
            "model": self.model,
            "grid": self.grid,
            "grid_points": self.grid_points,
        }


def _claim_output(settings: RunSettings) -> None:
    settings.out.mkdir(parents=True, exist_ok=True)
    run_file = settings.out / "run.json"
    identity = settings.identity()
    if run_file.exists():
        previous = json.loads(run_file.read_text())
        if {key: previous.get(key) for key in identity} != identity:
            raise RunError(
                f"{settings.out} holds a run of {previous.get('module')} "
                f"(model {previous.get('model')}, grid {previous.get('grid')}, "
                f"{previous.get('grid_points')} grid points); use another --out"
            )
    write_json(run_file, {**identity, "tasks_dir": str(settings.tasks_dir)})


def _task_dirs(settings: RunSettings) -> list[Path]:
    if not settings.tasks_dir.is_dir():
        raise RunError(f"tasks folder {settings.tasks_dir} does not exist")
    present = sorted(
        p for p in settings.tasks_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    if settings.tasks:
        names = {p.name for p in present}
        unknown = [t for t in settings.tasks if t not in names]
        if unknown:
            raise RunError(f"tasks {unknown} not found in {settings.tasks_dir}")
        present = [p for p in present if p.name in settings.tasks]
    if not present:
        raise RunError(f"no task folders in {settings.tasks_dir}")
    return present


def _heareval_scores(embed_dir: Path, metric: str) -> dict:
    """Primary metric from heareval's test.predicted-scores.json (k-fold: its mean)."""
    path = embed_dir / "test.predicted-scores.json"
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
    if score is None:
        raise TaskError(f"{path.name} has no test_{metric} score")
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


def _clean_predictions(embed_dir: Path) -> None:
    """Remove what an interrupted heareval prediction step left behind."""
    shutil.rmtree(embed_dir / "lightning_logs", ignore_errors=True)
    for name in PREDICTION_FILES:
        (embed_dir / name).unlink(missing_ok=True)
    for stale in embed_dir.glob("*.predictions.pkl"):
        stale.unlink()


def run_task(task_dir: Path, settings: RunSettings, module_info: dict) -> dict:
    """Evaluate one task; returns (and stores) its result record."""
    result_path = settings.out / "results" / f"{task_dir.name}.json"
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    hear_task = TASK_BY_DIRECTORY.get(task_dir.name)
    result.update(
        {
            "task": task_dir.name,
            "hear_column": hear_task.column if hear_task else None,
            "module": settings.module,
            "model": settings.model,
            "errors": {},
        }
    )
    wanted = parts_for(settings.probe)
    embed_dir = settings.out / "embeddings" / settings.module / task_dir.name
    logs = settings.out / "logs"
    seconds = result.setdefault("seconds", {})
    try:
        metadata = check_task(task_dir, module_info["sample_rate"])
        result["primary_metric"] = metadata["evaluation"][0]
        result["embedding_type"] = metadata["embedding_type"]
        if not (embed_dir / ".done.embeddings").exists():
            start = time.time()
            arguments = [settings.module, "--tasks-dir", str(settings.tasks_dir.resolve()),
                         "--task", task_dir.name, "--embeddings-dir", str((settings.out / "embeddings").resolve())]  # fmt: skip
            if settings.model:
                arguments += ["--model", settings.model]
            run_logged(
                _python_with_compat("heareval.embeddings.runner", arguments),
                logs / f"{task_dir.name}.embeddings.log",
                settings.out,
            )
            seconds["embeddings"] = round(time.time() - start, 2)
        check_embeddings_finite(embed_dir, metadata["splits"])
    except TaskError as exc:
        result["errors"]["embeddings"] = str(exc)
        return _store(result, result_path, wanted)
    for part in wanted:
        if result.get(part, {}).get("score") is not None:
            continue
        start = time.time()
        try:
            result[part] = (
                _run_mlp(embed_dir, settings, result["primary_metric"])
                if part == "mlp"
                else _run_linear(embed_dir)
            )
        except TaskError as exc:
            result["errors"][part] = str(exc)
            result.pop(part, None)
        seconds[part] = round(time.time() - start, 2)
    return _store(result, result_path, wanted)


def _run_mlp(embed_dir: Path, settings: RunSettings, metric: str) -> dict:
    if not (embed_dir / "prediction-done.json").exists():
        _clean_predictions(embed_dir)
        arguments = [str(embed_dir.resolve()), "--grid", settings.grid,
                     "--grid-points", str(settings.grid_points)]  # fmt: skip
        run_logged(
            _python_with_compat("heareval.predictions.runner", arguments),
            settings.out / "logs" / f"{embed_dir.name}.predictions.log",
            settings.out,
        )
    return _heareval_scores(embed_dir, metric)


def _run_linear(embed_dir: Path) -> dict:
    from eval.probe import ProbeError, linear_probe

    try:
        scores = linear_probe(embed_dir)
    except (ProbeError, KeyError, ValueError) as exc:
        raise TaskError(f"linear probe: {exc}") from exc
    if not math.isfinite(scores["score"]):
        raise TaskError(f"linear probe scored {scores['metric']} as {scores['score']} (non-finite)")
    return scores


def _store(result: dict, path: Path, wanted: tuple[str, ...]) -> dict:
    done = not result["errors"] and all(part in result for part in wanted)
    result["status"] = "ok" if done else "failed"
    write_json(path, result)
    return result


def _is_finished(path: Path, wanted: tuple[str, ...]) -> bool:
    if not path.exists():
        return False
    result = json.loads(path.read_text())
    return result.get("status") == "ok" and all(part in result for part in wanted)


def _summary_line(result: dict) -> str:
    if result["status"] != "ok":
        return "FAILED: " + "; ".join(f"{k}: {v}" for k, v in result["errors"].items())
    parts = []
    for part in ("mlp", "linear"):
        if part in result:
            score = result[part]["score"]  # always a finite number for a part that is ok
            parts.append(f"{part}={score:.4f}")
    return f"ok  {result.get('primary_metric')} " + " ".join(parts)


def run_hear(settings: RunSettings, echo=print) -> list[dict]:
    """Evaluate every task of ``settings.tasks_dir``; returns one result per task."""
    if settings.grid not in GRIDS:
        raise RunError(f"unknown grid {settings.grid!r}; choose one of {GRIDS}")
    wanted = parts_for(settings.probe)
    if settings.model and not Path(settings.model).is_file():
        raise RunError(f"model file {settings.model} does not exist")
    settings.model = str(Path(settings.model).resolve()) if settings.model else None
    settings.out, settings.tasks_dir = settings.out.resolve(), settings.tasks_dir.resolve()
    task_dirs = _task_dirs(settings)
    _claim_output(settings)
    with _exclusive(settings.out):
        return _run_tasks(settings, task_dirs, wanted, echo)


@contextlib.contextmanager
def _exclusive(out: Path):
    """Refuse a second concurrent run on one output folder (a stale lock is taken over)."""
    lock = out / ".lock"
    try:
        descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        owner = lock.read_text().strip()
        if owner.isdigit() and _alive(int(owner)):
            raise RunError(f"{out} is in use by another ced-eval run (process {owner})") from None
        lock.unlink(missing_ok=True)
        descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    os.write(descriptor, str(os.getpid()).encode())
    os.close(descriptor)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run_tasks(
    settings: RunSettings, task_dirs: list[Path], wanted: tuple[str, ...], echo
) -> list[dict]:
    present = {p.name for p in task_dirs}
    missing = [t.column for t in HEAR_TASKS if not set(t.directories) <= present]
    if len(missing) < len(HEAR_TASKS):
        folders = missing_directories(present)
        echo(f"{len(missing)} of {len(HEAR_TASKS)} HEAR tasks missing"
             + (f": {', '.join(missing)} (folders {', '.join(folders)})" if missing else ""))  # fmt: skip
    else:
        echo(f"none of the {len(HEAR_TASKS)} HEAR tasks in {settings.tasks_dir}; "
             f"running {len(task_dirs)} other task(s)")  # fmt: skip
    results = []
    module_info = None
    for index, task_dir in enumerate(task_dirs, start=1):
        result_path = settings.out / "results" / f"{task_dir.name}.json"
        start = time.time()
        if _is_finished(result_path, wanted):
            result = json.loads(result_path.read_text())
            note = "(finished earlier)"
        else:
            if module_info is None:  # loaded only when some task needs it
                module_info = describe_module(settings.module, settings.model, settings.out)
                echo(f"module {settings.module}: {module_info['sample_rate']} Hz, scene embedding "
                     f"{module_info['scene_embedding_size']}, timestamp embedding "
                     f"{module_info['timestamp_embedding_size']}")  # fmt: skip
            result = run_task(task_dir, settings, module_info)
            note = f"({time.time() - start:.1f} s)"
        echo(f"[{index}/{len(task_dirs)}] {task_dir.name}: {_summary_line(result)} {note}")
        results.append(result)
    echo(summary_table(results))
    return results


def summary_table(results: list[dict]) -> str:
    """Plain-text table of a run, one row per task."""
    rows = [("task", "metric", "mlp", "linear", "status")]
    for result in results:
        scores = []
        for part in ("mlp", "linear"):
            score = result.get(part, {}).get("score")
            scores.append(f"{score:.4f}" if score is not None else "-")
        rows.append(
            (result["task"], result.get("primary_metric") or "-", *scores, result["status"])
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows
    )


if __name__ == "__main__":
    # child process of describe_module: MODULE MODEL_OR_EMPTY INFO_JSON
    _check_module_here(*sys.argv[1:4])
