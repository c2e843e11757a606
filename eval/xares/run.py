"""``ced-eval xares``: X-ARES tasks end to end, resumable, one task at a time.

Per task: its audio is checked (every split present, a frame task's segments
a whole number of encoder hops), linked into X-ARES's ``env/<task>`` with
X-ARES's download flag set, encoded by X-ARES (checked and stamped), scored
by X-ARES (MLP and kNN), and its result written atomically to
``results/<task>.json``. A failing task fails alone; a finished one is not
touched again.

X-ARES runs as its own entry point (``python -m xares.run``), one task at a
time, each in its own process under the shims (:mod:`hear_ced.eval.xares.launch`),
in the run's work folder (X-ARES keeps everything under ``./env``), with all
output in ``logs/<task>.xares.log``. X-ARES's job mode follows the device: on
a GPU its process pool (``--max-jobs 1``, GPU ``i % num_gpus``); on a CPU
``--max-jobs 0``, in-process, since the pool's GPU index divides by the GPU
count. X-ARES builds its encoder from a file path, without arguments, from
the one module-level name ending in ``Encoder``; the class name also names
X-ARES's output folders (``embeddings/CEDEncoder``, ``checkpoints/CEDEncoder``).

Encoded tars are never trusted on X-ARES's flag alone: X-ARES drops a clip it
cannot decode with a warning, writes whatever is left (possibly nothing) and
sets ``.encoded_tar_ready``; on the next run the flag makes it skip encoding,
and the failure surfaces at training as a file that "could not be opened".
Here an encoding counts as done only when the flag, a stamp naming this run's
encoder and a sample count of at least one per clip in every split all agree;
anything else is cleared and encoded again, and a short encoding right after
X-ARES ran fails its task naming the files.
"""

from __future__ import annotations

import logging
import math
import os
import tarfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from hear_ced.common.files import file_sha256, read_json, remove_tree, write_json, write_text
from hear_ced.eval.hear_run.identity import (
    claim,
    claim_task,
    in_turn,
    lock_kind,
    restart,
    version_of,
    weights_file,
)
from hear_ced.eval.hear_run.settings import RunError, TaskError, ced_module, resolved_model
from hear_ced.eval.hear_run.task_state import read_result, run_logged
from hear_ced.eval.tasks import size_of_module
from hear_ced.eval.xares import launch
from hear_ced.eval.xares.task_folders import (
    TaskFolder,
    check_audio,
    split_tars,
    task_folders,
    undecodable,
)
from hear_ced.hear import DEFAULT_PASSES

log = logging.getLogger(__name__)

PASSES = (1, 2, 4, 8, 16)  # the divisors of CED's 16-frame patch


@dataclass
class XaresRunSettings:
    module: str  # hear_ced.<size>, a bare size, or hear_ced.custom (needs ``model``)
    model: str | None
    tasks_dir: Path
    out: Path
    tasks: tuple[str, ...] = ()
    passes: int = DEFAULT_PASSES
    restart: bool = False

    def __post_init__(self) -> None:
        self.module = ced_module(self.module, self.model)
        if self.passes not in PASSES:
            raise RunError(f"--passes must divide CED's 16-frame patch: one of {PASSES}")
        self.model = resolved_model(self.model)
        self.out, self.tasks_dir = Path(self.out).resolve(), Path(self.tasks_dir).resolve()

    @property
    def variant(self) -> str | None:
        """The size CEDEncoder loads (None: whatever the checkpoint holds)."""
        return size_of_module(self.module)

    @property
    def work_dir(self) -> Path:
        """X-ARES's working folder: its ``env/``, the encoder module, copied task files.

        Under ``embeddings`` so that ``--restart`` removes it with the rest.
        """
        return self.out / "embeddings"

    def result_path(self, task: str) -> Path:
        return self.out / "results" / f"{task}.json"

    def log_path(self, task: str, step: str) -> Path:
        return self.out / "logs" / f"{task}.{step}.log"


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


def xares_stages(
    encoder_py: str, task_py: str, work_dir: Path, log: Path, decode_log: Path
) -> None:
    """X-ARES's encode and score stages (1 and 2) of one task; a failing process raises TaskError.

    Stage 0 (download) is never run: the audio is linked in and flagged ready.
    """
    arguments = [encoder_py, task_py, "--max-jobs", str(max_jobs()),
                 "--from-stage", "1", "--to-stage", "2"]  # fmt: skip
    run_logged(launch.command(decode_log, "xares.run", arguments), log, work_dir)


def describe_tasks(encoder_py: str, task_pys: list[str], work_dir: Path, log: Path) -> Path:
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


READY = ".encoded_tar_ready"  # X-ARES's flag (XaresSettings.encoded_ready_filename)
AUDIO_READY = ".audio_tar_ready"  # X-ARES's download flag
STAMP = ".ced_encoder.json"  # which encoder wrote the tars, and how many samples


def samples(tar: Path) -> int:
    """Encoded samples (``.npy`` members) in one tar; an unreadable tar holds none."""
    try:
        with tarfile.open(tar) as handle:
            return sum(m.name.endswith(".npy") for m in handle.getmembers())
    except (tarfile.TarError, OSError):
        return 0


def shortfalls(folder: Path, description: dict, clips: dict[str, int]) -> list[str]:
    """What the encoded tars in ``folder`` lack: one line per split that is missing or short."""
    found = []
    for split, pattern in description["encoded_tars"].items():
        tars = split_tars(folder, pattern)
        if not tars:
            found.append(f"split {split}: no encoded tar {folder / pattern}")
            continue
        count = sum(samples(t) for t in tars)
        if count < clips.get(split, 1):
            empty = [t.name for t in tars if samples(t) == 0]
            detail = f" ({', '.join(empty)} empty)" if empty else ""
            found.append(f"split {split}: {count} of {clips.get(split, 1)} clips encoded{detail}")
    return found


def is_encoded(folder: Path, description: dict, clips: dict[str, int], encoder: dict) -> bool:
    """The flag is set by this encoder and every split holds a sample per clip."""
    if not (folder / READY).exists():
        return False
    try:
        stamp = read_json(folder / STAMP)
    except (FileNotFoundError, ValueError):
        stamp = None
    problems = shortfalls(folder, description, clips)
    if stamp != {"encoder": encoder, "clips": clips} or problems:
        why = "; ".join(problems) or "written by another encoder or run"
        log.warning("%s: clearing a stale %s (%s)", folder, READY, why)
        return False
    return True


def accept(
    folder: Path, description: dict, clips: dict[str, int], encoder: dict, decode_log: Path
) -> None:
    """After X-ARES's encode step: stamp a complete encoding, or fail naming what is short.

    ``decode_log`` holds the decodes the torchaudio shim saw fail: with
    ``crop_length`` a task has more samples than clips, so the count alone
    could miss a dropped clip.
    """
    problems = shortfalls(folder, description, clips)
    if decode_log.exists() and decode_log.read_text().strip():
        failed = len(decode_log.read_text().splitlines())
        problems.append(f"{failed} audio member(s) failed to decode")
    if problems or not (folder / READY).exists():
        (folder / READY).unlink(missing_ok=True)
        raise TaskError("; ".join(problems) or f"X-ARES did not finish encoding ({folder})")
    write_json(folder / STAMP, {"encoder": encoder, "clips": clips})


VERSIONED = ("xares", "hear-ced", "torch", "webdataset", "pytorch-ignite")


def run_identity(settings: XaresRunSettings) -> dict:
    """What makes two X-ARES runs comparable; one output folder holds one."""
    weights = weights_file(settings.module, settings.model)
    return {
        "benchmark": "X-ARES",
        "module": settings.module,
        "model": settings.model,
        "passes": settings.passes,
        "weights_sha256": file_sha256(weights) if weights else None,
        "versions": {name: version_of(name) for name in VERSIONED},
    }


def run_xares(settings: XaresRunSettings) -> list[dict]:
    """Evaluate every selected task of ``settings.tasks_dir``; one result per task."""
    tasks = {task.name: task for task in task_folders(settings.tasks_dir, settings.tasks)}
    identity = run_identity(settings)
    locks = lock_kind(settings.out, "auto")  # as ced-eval hear's default: see docs/eval.md
    if settings.restart:
        restart(settings.out, locks)
    claim(settings.out, locks, identity)
    work_dir = settings.work_dir
    work_dir.mkdir(parents=True, exist_ok=True)
    for task in tasks.values():
        task.install(work_dir)
    results = {name: _finished(settings, name) for name in tasks}
    for name, result in results.items():
        if result:
            log.info("%s: %s (finished earlier)", name, summary_line(result))
    pending = [tasks[name] for name, result in results.items() if not result]
    if not pending:
        return list(results.values())
    encoder_py = write_encoder_module(work_dir, settings.variant, settings.model, settings.passes)
    describe_log = settings.log_path("run", "describe")
    described = read_json(
        describe_tasks(encoder_py, [t.task_py for t in pending], work_dir, describe_log)
    )
    encoder = described["encoder"]
    if not encoder["check_audio_encoder"]:
        raise RunError(f"X-ARES's check_audio_encoder refused the encoder (see {describe_log})")
    log.info("encoder: %d-dim frames every %s ms", encoder["output_dim"], encoder["hop_size_in_ms"])
    stamp = {**identity, "hop_size_in_ms": encoder["hop_size_in_ms"]}

    def claim_one(name: str, wait: bool) -> tuple[dict, str] | None:
        task = tasks[name]
        return claim_task(
            settings.out, locks, name, lambda: _finished(settings, name),
            lambda: run_task(task, described["tasks"][task.task_py], settings, encoder_py, stamp),
            wait,
        )  # fmt: skip

    for result, note in in_turn([task.name for task in pending], claim_one):
        results[result["task"]] = result
        level = logging.INFO if result["status"] == "ok" else logging.WARNING
        log.log(level, "%s: %s %s", result["task"], summary_line(result), note)
    return list(results.values())


def _finished(settings: XaresRunSettings, task: str) -> dict | None:
    result = read_result(settings.result_path(task))
    return result if result.get("status") == "ok" else None


def run_task(task: TaskFolder, description: dict, settings: XaresRunSettings, encoder_py: str,
             stamp: dict) -> dict:  # fmt: skip
    """One task from its audio tars to X-ARES's scores; returns (and stores) its result."""
    result = {"task": task.name, "task_py": task.task_py, "started": _now(), "error": None,
              "xares_max_jobs": max_jobs()}  # fmt: skip
    try:
        if "error" in description:
            raise TaskError(f"task file {task.task_py}: {description['error']}")
        result.update(
            name=description["name"], formal_name=description["formal_name"],
            task_type=description["task_type"], metric=description["metric"],
            eval_weight=description["eval_weight"],
        )  # fmt: skip
        if description["disabled"]:
            raise TaskError(f"task {task.name} is disabled in {task.task_py}")
        check_hop(task.name, description, stamp["hop_size_in_ms"], settings.passes)
        result["clips"] = clips = check_audio(task, description)
        _link_audio(task, description, settings.work_dir)
        start = time.time()
        result.update(_evaluate(task, description, settings, encoder_py, stamp, clips))
        result["seconds"] = round(time.time() - start, 2)
    except TaskError as exc:
        prefix = f"task {task.name}: "
        result["error"] = str(exc) if str(exc).startswith(prefix) else prefix + str(exc)
    result["status"] = "failed" if result["error"] else "ok"
    result["finished"] = _now()
    write_json(settings.result_path(task.name), result)
    return result


def check_hop(name: str, description: dict, hop_ms: float, passes: int) -> None:
    """A frame task's metric segments must be a whole number of encoder frames.

    X-ARES max-pools ``ceil(segment / hop)`` frames into one segment: with a
    hop that does not divide the segment, its "1 s" segments silently become
    1.12 s ones. Labels need no check: a task builds them at the encoder's hop
    and X-ARES pads or trims them to the encoder's frame count.
    """
    segment = (description.get("metric_args") or {}).get("segment_length_in_s")
    if description["task_type"] != "frame" or not segment:
        return

    def divides(hop: float) -> bool:
        frames = 1000.0 * segment / hop
        return math.isclose(frames, round(frames), abs_tol=1e-6)

    if divides(hop_ms):
        return
    patch_ms = hop_ms * passes
    working = [p for p in PASSES if divides(patch_ms / p)]
    pooled = math.ceil(1000.0 * segment / hop_ms)
    advice = (f"use --passes {' or '.join(map(str, working))}" if working
              else "no --passes value gives a hop that divides it")  # fmt: skip
    raise TaskError(
        f"task {name}: the {hop_ms:g} ms hop (--passes {passes}) does not divide its "
        f"{1000 * segment:g} ms scoring segments (X-ARES would pool {pooled} frames, "
        f"{pooled * hop_ms:g} ms); {advice}"
    )


def _link_audio(task: TaskFolder, description: dict, work_dir: Path) -> None:
    """X-ARES's ``env/<task>`` with links to the audio tars, and its download flag set."""
    env = work_dir / "env" / description["name"]  # X-ARES's folder of the task
    env.mkdir(parents=True, exist_ok=True)
    for source in sorted(task.folder.iterdir()):
        if source.name.startswith(".") or source.name.endswith("_task.py") or not source.is_file():
            continue
        link = env / source.name
        if link.is_symlink() or link.exists():
            if link.resolve() == source.resolve():
                continue
            link.unlink()
        os.symlink(source.resolve(), link)
    (env / AUDIO_READY).touch()


def _evaluate(task: TaskFolder, description: dict, settings: XaresRunSettings, encoder_py: str,
              stamp: dict, clips: dict[str, int]) -> dict:  # fmt: skip
    """X-ARES's encode and score stages in one process; its scores once the encoding is sound.

    A stale encoding is cleared first, so X-ARES's own flag check encodes
    again; scores from a killed attempt are cleared, so it trains again.
    X-ARES scores whatever it encoded: a short encoding is refused after the
    process, its scores with it.
    """
    work_dir = settings.work_dir
    env = work_dir / "env" / description["name"]
    folder, checkpoints = env / "embeddings" / CLASS, env / "checkpoints" / CLASS
    files = {"mlp": checkpoints / "mlp_score.txt", "knn": checkpoints / "knn_score.txt"}
    wanted = ("mlp", "knn") if description["do_knn"] else ("mlp",)
    fresh = not is_encoded(folder, description, clips, stamp)
    if fresh:
        remove_tree(folder)  # and below, everything trained on it
    elif all(read_score(files[part]) for part in wanted):
        return {part: read_score(files[part])[0] for part in wanted}  # scored, not recorded
    remove_tree(checkpoints)  # X-ARES would trust a checkpoint or score file of a killed run
    log_file = settings.log_path(task.name, "xares")
    decode_log = settings.log_path(task.name, "decode")
    decode_log.unlink(missing_ok=True)
    failure = None
    try:
        xares_stages(encoder_py, task.task_py, work_dir, log_file, decode_log)
    except TaskError as exc:
        failure = exc
    if fresh:
        try:
            accept(folder, description, clips, stamp, decode_log)
        except TaskError as exc:
            remove_tree(checkpoints)
            raise TaskError(
                f"encoding incomplete: {exc}{_decode_failures(task, description)} (log {log_file})"
            ) from exc
    if failure:
        raise failure
    scores = {}
    for part in wanted:
        found = read_score(files[part])
        if found is None or not math.isfinite(found[0]):
            raise TaskError(f"X-ARES wrote no finite {part} score ({files[part]}; log {log_file})")
        scores[part] = found[0]
    return scores


def _decode_failures(task: TaskFolder, description: dict, shown: int = 3) -> str:
    """The members X-ARES dropped as undecodable, for the error message."""
    bad = undecodable(task, description)
    if not bad:
        return ""
    more = f" and {len(bad) - shown} more" if len(bad) > shown else ""
    return f"; cannot decode {'; '.join(bad[:shown])}{more}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def summary_line(result: dict) -> str:
    if result.get("status") != "ok":
        return f"FAILED: {result.get('error')}"
    parts = [f"{p}={result[p]:.4f}" for p in ("mlp", "knn") if result.get(p) is not None]
    return f"ok  {result.get('metric')} " + " ".join(parts)
