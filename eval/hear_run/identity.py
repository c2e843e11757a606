"""Run identity, provenance, ``--restart`` and the locks that let runs share a folder.

One output folder holds one run: one module with the same weights (by
content), model options, package version and MLP grid. Re-running after the
weights file was retrained in place is therefore refused instead of silently
mixing old and new scores. ``run.json`` records the identity and the
provenance (versions, device, embedding method).

Locks (``filelock``, released by the OS when a process dies): ``locks/run.lock``
guards ``run.json``; ``locks/<task>.lock`` is held while a process works on a
task, so parallel jobs and separate ``ced-eval hear`` invocations on one
folder each take tasks nobody holds.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock, Timeout

from ced_common.files import folder_lock, read_json, remove_tree, write_json
from eval.hear_run.errors import RunError
from eval.hear_run.settings import RunSettings
from eval.tasks import size_of_module

DERIVED = ("embeddings", "results", "logs", "module.json", "run.json")  # what --restart removes
DISTRIBUTIONS = {  # provenance name -> distributions that provide it
    "torch": ("torch",), "numpy": ("numpy",), "heareval": ("heareval",),
    "hear_ced": ("hear-ced",), "pytorch_lightning": ("pytorch-lightning",),
    "scikit_learn": ("scikit-learn",), "tensorflow": ("tensorflow-cpu", "tensorflow"),
}  # fmt: skip


def version_of(*distributions: str) -> str | None:
    """Installed version of the first of ``distributions`` that is installed."""
    for distribution in distributions:
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def package_version() -> str:
    found = version_of("hear-ced")
    if found:
        return found
    import hear_ced

    return hear_ced.__version__


def versions() -> dict:
    found = {"python": platform.python_version()}
    found.update({name: version_of(*dists) for name, dists in DISTRIBUTIONS.items()})
    return found


def weights_file(module: str, model: str | None) -> Path | None:
    """The file (or folder) ``load_model`` reads: ``--model``, or a published size's default."""
    if model:
        return Path(model)
    size = size_of_module(module)
    if size is None:
        return None  # a module with built-in or no weights
    from hear_ced.weights import WeightsNotFoundError, resolve_weights

    try:
        return resolve_weights(size, option="--model")
    except WeightsNotFoundError as exc:
        raise RunError(f"module {module}: {' '.join(str(exc).split())}") from exc


def sha256(path: Path) -> str:
    """Content hash of a file, or of a folder's files (names and contents)."""
    if path.is_file():
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path)}\0{sha256(file)}\n".encode())
    return digest.hexdigest()


def run_identity(settings: RunSettings) -> dict:
    """What makes two runs comparable; one output folder holds one identity."""
    weights = weights_file(settings.module, settings.model)
    return {
        "module": settings.module,
        "model": settings.model,
        "grid": settings.grid,
        "grid_points": settings.grid_points,
        "weights_sha256": sha256(weights) if weights else None,
        "model_options": settings.model_options,
        "package_version": package_version(),
    }


def task_lock(out: Path, task: str) -> FileLock:
    return folder_lock(out, task)


def group_lock(out: Path, group: str) -> FileLock:
    """Held while one task of a group with shared audio embeds (see shared_audio)."""
    return folder_lock(out, f"embed-{group}")


def _changes(previous: dict, identity: dict) -> list[str]:
    def show(value) -> str:
        if isinstance(value, str) and len(value) == 64:  # a sha256
            return value[:12]
        return json.dumps(value)

    return [
        f"{key} {show(previous.get(key))} -> {show(value)}"
        for key, value in identity.items()
        if previous.get(key) != value
    ]


def claim_run(settings: RunSettings, identity: dict) -> None:
    """Write ``run.json`` for a new run, or check that the folder holds this same run.

    Not :func:`ced_common.files.claim_folder`: ``run.json`` also holds the
    provenance and the tasks folder, which may differ between invocations of
    one run, and a refusal names the old and new value of each changed key.
    """
    out = settings.out
    run_file = out / "run.json"
    with folder_lock(out, "run"):
        previous = {}
        if run_file.exists():
            try:
                previous = read_json(run_file)
            except ValueError as exc:
                raise RunError(f"{exc}; use --restart") from exc
            if not isinstance(previous, dict):
                raise RunError(f"{run_file} does not hold a JSON object; use --restart")
            changes = _changes(previous, identity)
            if changes:
                raise RunError(
                    f"{out} holds another run of {previous.get('module')} "
                    f"({'; '.join(changes)}); use --restart to start over there or another --out"
                )
        provenance = previous.get("provenance") or {
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": versions(),
            "weights_sha256": identity["weights_sha256"],
            "model_options": identity["model_options"],
            "device": None,
            "embedding_method": None,
        }
        write_json(
            run_file, {**identity, "tasks_dir": str(settings.tasks_dir), "provenance": provenance}
        )


def record_provenance(out: Path, module_info: dict) -> None:
    """Add what the module check found (device, embedding method) and today's versions."""
    run_file = out / "run.json"
    with folder_lock(out, "run"):
        run = read_json(run_file)
        run["provenance"].update(
            versions=versions(),
            device=module_info["device"],
            embedding_method=module_info["embedding_method"],
        )
        write_json(run_file, run)


def restart(out: Path) -> None:
    """Delete an earlier run's derived files; refused while another process works there."""
    if not out.is_dir():
        return
    held = []
    locks = sorted((out / "locks").glob("*.lock")) if (out / "locks").is_dir() else []
    for path in locks:
        lock = FileLock(path)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            held.append(path.stem)
        else:
            lock.release()
    if held:
        raise RunError(f"cannot restart {out}: another ced-eval run works on {', '.join(held)}")
    for name in DERIVED:
        path = out / name
        if path.is_dir():
            remove_tree(path)  # an interrupted restart leaves no half-deleted run behind
        else:
            path.unlink(missing_ok=True)
