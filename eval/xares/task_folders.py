"""X-ARES task folders: which task file defines each, and whether its audio is all there.

A tasks folder holds one folder per task with X-ARES's audio tars in it, as
X-ARES's ``env/<task>/`` after its download. A folder with a ``*_task.py`` of
its own is defined by that file; any other is the X-ARES task of the same
name (X-ARES's ``tasks`` package, e.g. ``esc50``).
"""

from __future__ import annotations

import ast
import importlib.metadata
import shutil
import tarfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from hear_ced.eval.hear_run.settings import RunError, TaskError
from hear_ced.eval.hear_run.task_checks import select_task_dirs

AUDIO_SUFFIXES = (".flac", ".mp3", ".sox", ".wav", ".m4a", ".ogg", ".wma")  # X-ARES's decoder
TASK_FILES = "ced_xares_tasks"  # package in the work folder holding copied task files


@dataclass(frozen=True)
class TaskFolder:
    folder: Path
    task_py: str  # the path X-ARES imports the task by, relative to the work folder
    own_file: Path | None = None  # the folder's own task file, copied to ``task_py``

    @property
    def name(self) -> str:
        return self.folder.name

    def install(self, work_dir: Path) -> None:
        """Copy the folder's own task file to where X-ARES imports it from (by module name)."""
        if self.own_file is not None:
            target = work_dir / self.task_py
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.own_file, target)


@cache
def builtin_tasks() -> dict[str, str]:
    """X-ARES's own task files by task name (read, not run: ``name="..."`` of the config)."""
    try:
        root = Path(importlib.metadata.distribution("xares").locate_file("tasks"))
    except importlib.metadata.PackageNotFoundError as exc:
        raise RunError("X-ARES is not installed: pip install --no-deps xares==0.1.3") from exc
    found = {}
    for path in sorted(root.glob("*_task.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            value = node.value if isinstance(node, ast.keyword) and node.arg == "name" else None
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                found[value.value] = f"tasks/{path.name}"
                break
    return found


def task_folders(tasks_dir: Path, selected: tuple[str, ...]) -> list[TaskFolder]:
    """The task folders to run, each with its task file (see :meth:`TaskFolder.install`)."""
    return [_task_folder(folder) for folder in select_task_dirs(tasks_dir, selected)]


def _task_folder(folder: Path) -> TaskFolder:
    own = sorted(folder.glob("*_task.py"))
    if len(own) > 1:
        raise RunError(f"task folder {folder} holds {len(own)} *_task.py files; keep one")
    if own:
        return TaskFolder(folder, f"{TASK_FILES}/{folder.name}_task.py", own[0])
    builtin = builtin_tasks().get(folder.name)
    if builtin is None:
        raise RunError(
            f"task folder {folder.name}: no *_task.py in it and no X-ARES task of that name "
            f"(X-ARES's tasks: {', '.join(sorted(builtin_tasks()))})"
        )
    return TaskFolder(folder, builtin)


def audio_members(tar: Path) -> list[str]:
    """Names of the audio members of one tar (headers only: no audio is decoded)."""
    try:
        with tarfile.open(tar) as handle:
            return [m.name for m in handle.getmembers() if m.name.lower().endswith(AUDIO_SUFFIXES)]
    except (tarfile.TarError, OSError) as exc:
        raise TaskError(f"{tar}: not a readable tar ({exc})") from exc


def split_tars(folder: Path, pattern: str) -> list[Path]:
    return sorted(p for p in folder.glob(pattern) if p.is_file() or p.is_symlink())


def check_audio(task: TaskFolder, description: dict) -> dict[str, int]:
    """Clips per split; a split without tars, or with no audio, fails the task naming what is missing."""
    missing, clips = [], {}
    for split, pattern in description["audio_tars"].items():
        tars = split_tars(task.folder, pattern)
        if not tars:
            missing.append(f"split {split} ({pattern})")
            continue
        clips[split] = sum(len(audio_members(tar)) for tar in tars)
        if clips[split] == 0:
            raise TaskError(f"task {task.name}: split {split}'s tars ({pattern}) hold no audio")
    if missing:
        source = (
            f"download X-ARES's Zenodo record {description['zenodo_id']} into {task.folder}"
            if description.get("zenodo_id")
            else f"put them into {task.folder}"
        )
        raise TaskError(f"task {task.name}: no audio tars for {', '.join(missing)}; {source}")
    return clips


def undecodable(task: TaskFolder, description: dict) -> list[str]:
    """``tar:member (error)`` for every audio member soundfile cannot decode (the slow check).

    Run only once encoding came up short: it decodes the whole task.
    """
    import io

    import soundfile

    bad = []
    for pattern in description["audio_tars"].values():
        for tar in split_tars(task.folder, pattern):
            with tarfile.open(tar) as handle:
                for member in handle.getmembers():
                    if not member.name.lower().endswith(AUDIO_SUFFIXES):
                        continue
                    data = handle.extractfile(member)
                    try:
                        soundfile.read(io.BytesIO(data.read() if data else b""))
                    except Exception as exc:  # soundfile raises several types for bad data
                        reason = getattr(exc, "error_string", None) or str(exc)
                        bad.append(f"{tar.name}:{member.name} ({' '.join(reason.split())})")
    return bad
