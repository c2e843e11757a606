"""Durable file output: a reader sees the old file or the new one, never half of one.

Every result, shard, store, checkpoint and report of the project is written
through :func:`atomic_path`. The policy is the same everywhere: the new
content is flushed to disk (``fsync``) before it replaces the old file, and
the directory entry is synced after the rename, so a crash or power loss
leaves either the complete old file or the complete new one.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_directory(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open a directory; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` that replaces ``path`` when the block succeeds.

    The temporary file keeps the target's extension (writers such as
    matplotlib or numpy pick the format from it); on error it is removed and
    ``path`` is left as it was. The result gets a plain new file's mode (0o666
    less the umask) whatever the writer did to it: some writers (safetensors)
    make their file private (0o600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp{path.suffix}")
    # Created as open() creates a file, the umask applied: the mode the result keeps.
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    mode = stat.S_IMODE(tmp.stat().st_mode)
    try:
        yield tmp
        _fsync_file(tmp)
        os.chmod(tmp, mode)  # after the writer and the sync, which needs write access
        os.replace(tmp, path)
        _fsync_directory(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temporaries(path: str | os.PathLike) -> None:
    """Delete what :func:`atomic_path` left beside ``path`` in a process that was killed.

    For writers of large files (shards, epoch files) that may be killed part-way:
    a resumed run calls it before writing ``path`` again, so no partial copy is
    left behind. Only one process may write ``path`` at a time.
    """
    path = Path(path)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp{glob.escape(path.suffix)}"):
        stale.unlink(missing_ok=True)


def remove_tree(path: str | os.PathLike) -> None:
    """Delete a folder so that no half-deleted copy remains under its name.

    The folder is first renamed to a hidden name beside it, then removed; an
    interrupted removal leaves only that hidden folder, which the next call
    for the same path clears.
    """
    path = Path(path)
    trash = path.with_name(f".{path.name}.deleting")
    shutil.rmtree(trash, ignore_errors=True)
    if path.exists():
        path.rename(trash)
        shutil.rmtree(trash)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, data: Any, **dump_options: Any) -> Path:
    """``data`` as JSON (``indent=2`` unless told otherwise), atomically."""
    dump_options.setdefault("indent", 2)
    return write_text(path, json.dumps(data, **dump_options) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """The JSON in ``path``; an unreadable file is a ValueError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from exc


def file_sha256(path: str | os.PathLike) -> str:
    """Content hash of a file, or of a folder's files (their relative names and contents)."""
    path = Path(path)
    if path.is_file():
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path)}\0{file_sha256(file)}\n".encode())
    return digest.hexdigest()


def folder_lock(folder: str | os.PathLike, name: str) -> FileLock:
    """A lock file ``folder/locks/<name>.lock``; the OS releases it when a process dies."""
    locks = Path(folder) / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    return FileLock(locks / f"{name}.lock")


class FolderClaimed(ValueError):
    """An output folder already holds a run made with other settings (the message names them)."""


def dotted_items(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as ``{"optim.lr": 0.001, ...}``; an empty mapping is a value."""
    items: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            items |= dotted_items(value, f"{prefix}{key}.")
        else:
            items[f"{prefix}{key}"] = value
    return items


def _changes(stored: Mapping, requested: Mapping) -> list[tuple[str, Any, Any]]:
    """(dotted key, stored value, requested value) of every setting that differs."""
    old, new = dotted_items(stored), dotted_items(requested)
    return [
        (key, old.get(key), new.get(key))
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key)
    ]


def _shown(value: Any) -> str:
    """A setting's value in a refusal; a sha256 by its first 12 digits."""
    if isinstance(value, str) and len(value) == 64:
        return value[:12]
    return json.dumps(value)


def claim_folder(
    folder: str | os.PathLike,
    plan: dict,
    record: str = "plan.json",
    *,
    compared: Callable[[dict], dict] | None = None,
    first: dict | None = None,
    lock: AbstractContextManager | None = None,
    spell: Callable[[str], str] = str,
    hints: Mapping[str, str] | None = None,
    advice: str = "use another output folder, or --restart to delete it and start over",
) -> bool:
    """Tie ``folder`` to ``plan``: write ``folder/record`` for a new run, check it on a resume.

    The one place where every command that writes a run records what
    identifies it, and refuses or resumes by it. Returns True when the folder
    already held this plan (a resume). A folder holding another plan is
    refused with :class:`FolderClaimed`, naming each (dotted) key that
    differs with its stored and its wanted value, since the folder's finished
    parts would silently belong to the old plan; nothing in the folder is
    changed then.

    ``compared`` picks what of a record must agree (default: all of it), so
    runtime settings (worker counts, the device) may change between a run and
    its resumption; on a resume the record is rewritten with the plan's values
    for them, and keeps what only the stored record holds. ``first`` is
    written with a new claim only (e.g. when and where the run started) and
    never compared: give it on every claim.
    ``lock`` replaces the default ``locks/<record>.lock`` (a folder with its
    own lock scheme). The refusal spells keys as the command's user sets them
    (``spell``), adds ``hints[key]`` when that key alone differs, and ends
    with ``advice``.
    """
    folder = Path(folder)
    path = folder / record
    plan = json.loads(json.dumps(plan))  # as stored: tuples become lists
    kept = set(first or ())

    def same(values: dict) -> dict:
        values = {k: v for k, v in values.items() if k not in kept}
        return compared(values) if compared else values

    with lock if lock is not None else folder_lock(folder, Path(record).stem):
        if not path.exists():
            write_json(path, {**plan, **(first or {})}, sort_keys=True)
            return False
        previous = read_json(path)
        if not isinstance(previous, dict):
            raise FolderClaimed(
                f"{folder} holds a run of another plan ({path} holds no JSON object); {advice}"
            )
        changes = _changes(same(previous), same(plan))
        if changes:
            details = "; ".join(
                f"{spell(key)}: {_shown(old)} stored, {_shown(new)} wanted"
                for key, old, new in changes
            )
            hint = (hints or {}).get(changes[0][0]) if len(changes) == 1 else None
            raise FolderClaimed(
                f"{folder} holds a run with other settings ({details})"
                f"{f'; {hint}' if hint else ''}; {advice}"
            )
        updated = {**previous, **plan}
        if updated != previous:
            write_json(path, updated, sort_keys=True)
        return True
