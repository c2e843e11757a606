"""Run identity, provenance, ``--restart`` and the locks that let runs share a folder.

One output folder holds one run: one module with the same weights (by
content), model options, package version and MLP grid. Re-running after the
weights file was retrained in place is therefore refused instead of silently
mixing old and new scores. ``run.json`` records the identity and the
provenance (versions, device, embedding method).

Locks: ``run`` guards ``run.json``; ``<task>`` is held while a process works
on a task, so parallel jobs and separate ``ced-eval hear`` invocations on one
folder (on one machine or several) each take tasks nobody holds. Two kinds
(``--lock``), both filelock's:

* ``flock``: ``locks/<name>.lock`` with a kernel lock (``flock``) on it,
  released by the OS when its process dies, even by ``kill -9``. Exclusive
  across machines only where the file system carries flock between clients
  (NFSv3 with lockd, NFSv4; not Lustre without ``-o flock``, not every
  CIFS/SMB or FUSE mount).
* ``file``: ``locks/<name>.softlock``, created exclusively (``O_EXCL``, atomic
  on NFSv3+, Lustre, GPFS, CIFS/SMB), holding its owner's pid and host. One a
  dead process on this host left is taken over; one from another host cannot
  be checked from here, and is named with the command that clears it.

``auto`` (the default) takes ``flock`` on local file systems and ``file`` on
all others. The first run records the kind in ``locks/kind``; every later
run on the folder uses it, so runs on the file server itself (a local file
system there) and on its clients exclude each other.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from filelock import BaseFileLock, FileLock, SoftFileLock, Timeout

from hear_ced.common.files import (
    FolderClaimed,
    claim_folder,
    file_sha256,
    read_json,
    remove_tree,
    write_json,
    write_text,
)
from hear_ced.eval.hear_run.settings import RunError, RunSettings
from hear_ced.eval.tasks import size_of_module

log = logging.getLogger(__name__)

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


def package_version() -> str | None:
    """hear-ced's installed version (``hear_ced.eval`` exists only in an installed hear-ced)."""
    return version_of("hear-ced")


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


def run_identity(settings: RunSettings) -> dict:
    """What makes two runs comparable; one output folder holds one identity."""
    weights = weights_file(settings.module, settings.model)
    return {
        "module": settings.module,
        "model": settings.model,
        "grid": settings.grid,
        "grid_points": settings.grid_points,
        "weights_sha256": file_sha256(weights) if weights else None,
        "model_options": settings.model_options,
        "package_version": package_version(),
    }


# File systems whose kernel locks are certain to be this machine's alone and sound.
LOCAL_FILE_SYSTEMS = frozenset({
    "ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "jfs", "reiserfs", "bcachefs",
    "nilfs2", "tmpfs", "ramfs", "overlay", "vfat", "exfat", "ntfs3", "hfsplus", "apfs",
})  # fmt: skip
SUFFIXES = {"flock": ".lock", "file": ".softlock"}
RUN_LOCK_SECONDS = 60.0  # run.json is held for milliseconds; longer means a lost holder


def file_system_type(path: Path, mounts: Path = Path("/proc/self/mountinfo")) -> str | None:
    """The type of the file system holding ``path`` (Linux' mount table), None if unknown."""
    try:
        lines = mounts.read_text().splitlines()
    except OSError:
        return None
    path, best, found = path.resolve(), -1, None
    for line in lines:
        fields, _, rest = line.partition(" - ")
        mount = Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields.split()[4]))
        # the deepest mount point above ``path``; of several on it, the last one is seen
        if (mount == path or mount in path.parents) and len(mount.parts) >= best:
            best, found = len(mount.parts), rest.split()[0]
    return found


def lock_kind(out: Path, asked: str) -> str:
    """``flock`` or ``file`` for the run folder ``out``: as recorded there, else as asked.

    ``auto`` is ``flock`` on a local file system, else ``file``. A kind other
    than the recorded one is refused: its locks would not exclude the others'.
    """
    locks = out / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    chosen = asked
    if asked == "auto":
        chosen = "flock" if file_system_type(locks) in LOCAL_FILE_SYSTEMS else "file"
    record = locks / "kind"
    candidate = write_text(locks / f".kind.{socket.gethostname()}.{os.getpid()}", chosen + "\n")
    try:
        os.link(candidate, record)  # atomic, also over NFS: the first run's kind stays
    except FileExistsError:
        pass
    finally:
        candidate.unlink()
    recorded = record.read_text().strip()
    if recorded not in SUFFIXES:
        raise RunError(f"{record} holds {recorded!r}, not one of {tuple(SUFFIXES)}")
    if asked not in ("auto", recorded):
        raise RunError(
            f"the runs in {out} lock with --lock {recorded} ({record}); --lock {asked} would "
            f"not exclude them: use --lock auto (or delete {record} while no run works there)"
        )
    return recorded


def run_lock(out: Path, kind: str, name: str) -> BaseFileLock:
    """The lock ``name`` of the run folder ``out``, of ``kind`` (see the module's docstring)."""
    kind = kind if kind in SUFFIXES else lock_kind(out, kind)  # run_hear resolves it once
    path = out / "locks" / f"{name}{SUFFIXES[kind]}"
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path) if kind == "flock" else SoftFileLock(path, poll_interval=1.0)


def holder(lock: BaseFileLock) -> str | None:
    """Who holds a lock file, and how to clear it if that process is gone; None if unknown.

    (A kernel lock does not say who holds it.)
    """
    if not isinstance(lock, SoftFileLock):
        return None
    try:
        pid, host = Path(lock.lock_file).read_text().splitlines()[:2]
    except (OSError, ValueError):  # released meanwhile, or still being written
        return None
    if host.split("?")[0] == socket.gethostname():  # filelock marks other PID namespaces with ?
        return f"pid {pid} on this host"
    return f"pid {pid} on {host}; if that process is gone: rm {lock.lock_file}"


@contextmanager
def _holding_run_lock(out: Path, kind: str) -> Iterator[None]:
    lock = run_lock(out, kind, "run")
    try:
        lock.acquire(timeout=RUN_LOCK_SECONDS)
    except Timeout:
        who = holder(lock) or "by another process"
        raise RunError(
            f"{out}: run.json is locked for over {RUN_LOCK_SECONDS:.0f} s ({who})"
        ) from None
    try:
        yield
    finally:
        lock.release()


def claim_run(settings: RunSettings, identity: dict) -> None:
    """Write ``run.json`` for a new HEAR run, or check that the folder holds this same run.

    ``run.json`` also holds the provenance (written by the first invocation)
    and the tasks folder, which may differ between invocations of one run.
    """
    provenance = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "weights_sha256": identity["weights_sha256"],
        "model_options": identity["model_options"],
        "device": None,
        "embedding_method": None,
    }
    claim(settings.out, settings.lock, identity, extra={"tasks_dir": str(settings.tasks_dir)},
          first={"provenance": provenance})  # fmt: skip


def claim(
    out: Path, kind: str, identity: dict, extra: dict | None = None, first: dict | None = None
) -> None:
    """Tie ``out`` to ``identity`` under the run lock (:func:`hear_ced.common.files.claim_folder`).

    ``extra`` is recorded and may change between invocations, ``first`` is
    written by the first one only; a folder of another run is a RunError.
    """
    try:
        claim_folder(
            out,
            {**identity, **(extra or {})},
            "run.json",
            compared=lambda run: {key: run.get(key) for key in identity},
            first=first,
            lock=_holding_run_lock(out, kind),
            advice="use --restart to start over there or another --out",
        )
    except FolderClaimed as exc:
        raise RunError(str(exc)) from None
    except RunError:  # the run lock's own message
        raise
    except ValueError as exc:  # run.json is not JSON
        raise RunError(f"{exc}; use --restart") from exc


def claim_task(
    out: Path, kind: str, task: str, finished: Callable[[], dict | None],
    run: Callable[[], dict], wait: bool, where: str = "",
) -> tuple[dict, str] | None:  # fmt: skip
    """Run a task under its lock: (result, note), None when another process holds it and
    ``wait`` is off. A task that process finished meanwhile (``finished``) is not run again;
    ``where`` opens the note of a task run here (its GPU)."""
    lock = run_lock(out, kind, task)
    if wait:
        who = holder(lock)
        log.info("waiting for %s: another ced-eval run works on it%s", task,
                 f" ({who})" if who else "")  # fmt: skip
    try:
        lock.acquire(timeout=-1 if wait else 0)
    except Timeout:
        return None
    try:
        result = finished()
        if result:
            return result, "(finished by another run)"
        start = time.time()
        result = run()
        return result, f"({where}{time.time() - start:.1f} s)"
    finally:
        lock.release()


def in_turn(tasks: list[str], claim_one: Callable[[str, bool], tuple[dict, str] | None]):
    """(result, note) per task, one after another; tasks held elsewhere are waited for last."""
    held_elsewhere = []
    for task in tasks:
        outcome = claim_one(task, False)
        if outcome is None:
            held_elsewhere.append(task)
        else:
            yield outcome
    for task in sorted(held_elsewhere):
        yield claim_one(task, True)


def record_provenance(settings: RunSettings, module_info: dict) -> None:
    """Add what the module check found (device, embedding method) and today's versions."""
    run_file = settings.out / "run.json"
    with _holding_run_lock(settings.out, settings.lock):
        run = read_json(run_file)
        run["provenance"].update(
            versions=versions(),
            device=module_info["device"],
            embedding_method=module_info["embedding_method"],
        )
        write_json(run_file, run)


def restart(out: Path, kind: str) -> None:
    """Delete an earlier run's derived files; refused while another process works there."""
    if not out.is_dir():
        return
    held = []
    for path in sorted((out / "locks").glob(f"*{SUFFIXES[kind]}")):
        lock = run_lock(out, kind, path.stem)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            who = holder(lock)
            held.append(f"{path.stem} ({who})" if who else path.stem)
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
