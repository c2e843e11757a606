"""``ced-eval xares``: X-ARES tasks end to end, resumable, one task at a time.

Per task: its audio is checked (every split present, a frame task's segments
a whole number of encoder hops), linked into X-ARES's ``env/<task>`` with
X-ARES's download flag set, encoded by X-ARES (checked and stamped, see
:mod:`hear_ced.eval.xares.encoded`), scored by X-ARES (MLP and kNN), and its result
written atomically to ``results/<task>.json``. A failing task fails alone;
a finished one is not touched again.
"""

from __future__ import annotations

import logging
import math
import os
import time
from datetime import datetime, timezone
from pathlib import Path

from hear_ced.common.files import file_sha256, read_json, remove_tree, write_json
from hear_ced.eval.hear_run.errors import RunError, TaskError
from hear_ced.eval.hear_run.identity import (
    claim,
    claim_task,
    in_turn,
    lock_kind,
    restart,
    version_of,
    weights_file,
)
from hear_ced.eval.hear_run.task_state import read_result
from hear_ced.eval.xares import encoded, steps
from hear_ced.eval.xares.settings import PASSES, XaresRunSettings
from hear_ced.eval.xares.steps import write_encoder_module
from hear_ced.eval.xares.task_folders import TaskFolder, check_audio, task_folders, undecodable

log = logging.getLogger(__name__)

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
        steps.describe(encoder_py, [t.task_py for t in pending], work_dir, describe_log)
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
              "xares_max_jobs": steps.max_jobs()}  # fmt: skip
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
    env = encoded.env_dir(work_dir, description)
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
    (env / encoded.AUDIO_READY).touch()


def _evaluate(task: TaskFolder, description: dict, settings: XaresRunSettings, encoder_py: str,
              stamp: dict, clips: dict[str, int]) -> dict:  # fmt: skip
    """X-ARES's encode and score stages in one process; its scores once the encoding is sound.

    A stale encoding is cleared first, so X-ARES's own flag check encodes
    again; scores from a killed attempt are cleared, so it trains again.
    X-ARES scores whatever it encoded: a short encoding is refused after the
    process, its scores with it.
    """
    work_dir = settings.work_dir
    folder = encoded.encoded_dir(work_dir, description)
    checkpoints = encoded.checkpoint_dir(work_dir, description)
    files = {"mlp": checkpoints / "mlp_score.txt", "knn": checkpoints / "knn_score.txt"}
    wanted = ("mlp", "knn") if description["do_knn"] else ("mlp",)
    fresh = not encoded.is_encoded(folder, description, clips, stamp)
    if fresh:
        encoded.clear(work_dir, description)
    elif all(steps.read_score(files[part]) for part in wanted):
        return {part: steps.read_score(files[part])[0] for part in wanted}  # scored, not recorded
    remove_tree(checkpoints)  # X-ARES would trust a checkpoint or score file of a killed run
    log_file = settings.log_path(task.name, "xares")
    decode_log = settings.log_path(task.name, "decode")
    decode_log.unlink(missing_ok=True)
    failure = None
    try:
        steps.run_xares(encoder_py, task.task_py, work_dir, log_file, decode_log)
    except TaskError as exc:
        failure = exc
    if fresh:
        try:
            encoded.accept(folder, description, clips, stamp, decode_log)
        except TaskError as exc:
            remove_tree(checkpoints)
            raise TaskError(
                f"encoding incomplete: {exc}{_decode_failures(task, description)} (log {log_file})"
            ) from exc
    if failure:
        raise failure
    scores = {}
    for part in wanted:
        found = steps.read_score(files[part])
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
