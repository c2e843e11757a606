"""X-ARES's encoded tars: refused when short or empty, and never trusted on its flag alone.

X-ARES drops a clip it cannot decode with a warning, writes whatever is left
(possibly nothing) and sets ``.encoded_tar_ready``; on the next run the flag
makes it skip encoding, and the failure surfaces at training as a file that
"could not be opened". Here an encoding counts as done only when the flag,
a stamp naming this run's encoder and a sample count of at least one per
clip in every split all agree; anything else is cleared and encoded again,
and a short encoding right after X-ARES ran fails its task naming the files.
"""

from __future__ import annotations

import logging
import tarfile
from pathlib import Path

from hear_ced.common.files import read_json, remove_tree, write_json
from hear_ced.eval.hear_run.errors import TaskError
from hear_ced.eval.xares.steps import CLASS
from hear_ced.eval.xares.task_folders import split_tars

log = logging.getLogger(__name__)

READY = ".encoded_tar_ready"  # X-ARES's flag (XaresSettings.encoded_ready_filename)
AUDIO_READY = ".audio_tar_ready"  # X-ARES's download flag
STAMP = ".ced_encoder.json"  # which encoder wrote the tars, and how many samples


def env_dir(work_dir: Path, description: dict) -> Path:
    """X-ARES's folder of one task: ``env/<config name>`` under its working folder."""
    return work_dir / "env" / description["name"]


def encoded_dir(work_dir: Path, description: dict) -> Path:
    return env_dir(work_dir, description) / "embeddings" / CLASS


def checkpoint_dir(work_dir: Path, description: dict) -> Path:
    return env_dir(work_dir, description) / "checkpoints" / CLASS


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


def clear(work_dir: Path, description: dict) -> None:
    """Remove a task's encoded tars and everything trained on them."""
    remove_tree(encoded_dir(work_dir, description))
    remove_tree(checkpoint_dir(work_dir, description))


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
