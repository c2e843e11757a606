"""Make the ``16000/`` audio folders of HEAR tasks from the public 48 kHz archives.

The freely downloadable HEAR 2021 archives hold ``<task>/48000/<split>/*.wav``
only; a 16 kHz model needs ``<task>/16000/<split>/*.wav`` with the same file
names. :func:`prepare_tasks` reads task folders or ``.tar.gz`` archives and
writes::

    <out>/<task>/task_metadata.json, labelvocabulary.csv, <split>.json   copied as they are
    <out>/<task>/<rate>/<split>/<file>.wav                               resampled with soxr (VHQ)
    <out>/<task>/<rate>/.prepared.jsonl                                  one line per finished file

Every wav is written under a temporary name and renamed when complete, then
recorded in ``.prepared.jsonl``; a file counts as done only when both exist,
so an interrupted run is resumed by running it again (files without a record,
such as those of another tool, are redone). Memory stays bounded for any task
size: archives are streamed member by member (each wav is copied to a scratch
file, resampled, deleted) and every file is resampled in blocks.
"""

from __future__ import annotations

import json
import logging
import shutil
import tarfile
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import soundfile as sf
import soxr
from filelock import FileLock, Timeout

from hear_ced.common.files import atomic_path, write_bytes
from hear_ced.common.logs import progress_bar
from hear_ced.frontend import SAMPLE_RATE

log = logging.getLogger(__name__)

SOURCE_RATE = 48000  # the only rate of the public HEAR archives
QUALITY = "VHQ"
BLOCK_FRAMES = 10 * SOURCE_RATE  # frames resampled at a time: bounded memory for 600 s clips
KEPT_SUBTYPES = ("PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE")  # else written as PCM_16
MANIFEST = ".prepared.jsonl"
SCRATCH = ".scratch"
WAV_HEADER_BYTES = 44


class PrepareError(ValueError):
    """A source or one task of it cannot be prepared; the message names which and why."""


@dataclass(frozen=True)
class AudioFile:
    """One source wav: ``<split>/<name>`` and where it is (a path or an archive member)."""

    split: str
    name: str
    size: int  # bytes
    source: str

    @property
    def key(self) -> str:
        return f"{self.split}/{self.name}"


@dataclass
class TaskPlan:
    """A task found in a source: its small label files (read) and its wavs (listed)."""

    name: str
    source: Path  # task folder or archive
    archive: bool
    label_files: dict[str, bytes]
    audio: list[AudioFile]
    problems: list[str] = field(default_factory=list)  # source faults found while listing


@dataclass
class TaskReport:
    """What :func:`prepare_task` did; ``errors`` empty means complete."""

    name: str
    files: int = 0
    skipped: int = 0
    written: int = 0
    bytes_written: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


# ---------------------------------------------------------------- finding tasks


def expand_sources(sources: list[Path]) -> list[Path]:
    """Each source, with a folder of task folders replaced by its tasks (each fails alone)."""
    expanded = []
    for source in sources:
        children = []
        if source.is_dir() and not (source / "task_metadata.json").is_file():
            children = sorted(p for p in source.iterdir() if (p / "task_metadata.json").is_file())
        expanded += children or [source]
    return expanded


def find_tasks(source: Path) -> list[TaskPlan]:
    """The task in a task folder, or the tasks in a ``.tar.gz`` archive: one per metadata file.

    Both are listed the same way (an archive's members read once; no wav is
    decoded or extracted here); a split's wav missing from the 48 kHz folder
    leaves its task incomplete (``problems``) rather than failing the source.
    """
    if not source.exists():
        raise PrepareError(f"{source}: no such file or folder")
    archive = not source.is_dir()
    small, wavs = _archive_files(source) if archive else _folder_files(source)
    roots = sorted(str(PurePosixPath(n).parent) for n in small if n.endswith("task_metadata.json"))
    if not roots:
        kind = "archive" if archive else "folder"
        raise PrepareError(f"{source}: not a HEAR task {kind} (no task_metadata.json)")
    plans = []
    for root in roots:
        root = "" if root == "." else root
        name = PurePosixPath(root).name or source.name.removesuffix(".tar.gz")
        prefix = f"{root}/" if root else ""
        try:
            splits = [
                str(split) for split in json.loads(small[f"{prefix}task_metadata.json"])["splits"]
            ]
        except (ValueError, KeyError, TypeError) as exc:
            raise PrepareError(
                f"{name}: task_metadata.json has no valid 'splits' list ({exc})"
            ) from exc
        if not splits:
            raise PrepareError(f"{name}: task_metadata.json lists no splits")
        label_files = {}
        for file_name in (
            "task_metadata.json",
            "labelvocabulary.csv",
            *(f"{s}.json" for s in splits),
        ):
            if f"{prefix}{file_name}" not in small:
                raise PrepareError(f"{source}: task {name} lacks {file_name}")
            label_files[file_name] = small[f"{prefix}{file_name}"]
        entries = wavs.get(root, [])
        rates = {rate for rate, *_ in entries if rate.isdigit()}
        if str(SOURCE_RATE) not in rates:
            raise PrepareError(
                f"{name}: no {SOURCE_RATE}/ audio folder (task has "
                f"{', '.join(sorted(rates)) or 'no sample-rate folders'}); "
                f"prepare-tasks reads the {SOURCE_RATE} Hz HEAR archives"
            )
        plan = TaskPlan(name, source, archive, label_files, [
            AudioFile(split, file_name, size, where)
            for rate, split, file_name, size, where in sorted(entries)
            if rate == str(SOURCE_RATE)
        ])  # fmt: skip
        present = {audio.key for audio in plan.audio}
        for split in splits:
            try:
                absent = [
                    n
                    for n in json.loads(label_files[f"{split}.json"])
                    if f"{split}/{n}" not in present
                ]
            except ValueError as exc:
                raise PrepareError(f"{name}: {split}.json is not valid JSON ({exc})") from exc
            if absent:
                plan.problems.append(
                    f"{name}: {len(absent)} file(s) of {split}.json missing from "
                    f"{SOURCE_RATE}/{split}/ in {source} (first: {absent[0]})"
                )
        if not plan.audio:
            plan.problems.append(f"{name}: no wav files in {SOURCE_RATE}/ of {source}")
        plans.append(plan)
    return plans


# A source's files: label files (path -> content) and wavs (task root -> entries)
Wav = tuple[str, str, str, int, str]  # rate, split, name, bytes, where it is (path or member)


def _folder_files(folder: Path) -> tuple[dict[str, bytes], dict[str, list[Wav]]]:
    """A task folder's label files and wavs, keyed as in an archive holding the task alone."""
    small = {
        path.name: path.read_bytes()
        for path in folder.iterdir()
        if path.is_file() and (path.suffix == ".json" or path.name == "labelvocabulary.csv")
    }
    wavs = [
        (path.parent.parent.name, path.parent.name, path.name, path.stat().st_size, str(path))
        for path in folder.glob("*/*/*.wav")
        if not path.name.startswith(".")
    ]
    return small, {"": wavs}


def _archive_files(archive: Path) -> tuple[dict[str, bytes], dict[str, list[Wav]]]:
    """An archive's label files and wavs; members with unsafe names are left out."""
    small: dict[str, bytes] = {}
    wavs: dict[str, list[Wav]] = {}
    opened = False
    try:
        with tarfile.open(archive, "r:gz") as handle:
            opened = True
            for member in handle:
                parts = tuple(p for p in PurePosixPath(member.name).parts if p not in ("", "."))
                if not member.isfile() or not parts or ".." in parts or member.name.startswith("/"):
                    continue
                if parts[-1].endswith(".json") or parts[-1] == "labelvocabulary.csv":
                    small["/".join(parts)] = handle.extractfile(member).read()
                elif parts[-1].endswith(".wav") and len(parts) >= 3:
                    rate, split, name = parts[-3:]
                    wavs.setdefault("/".join(parts[:-3]), []).append(
                        (rate, split, name, member.size, member.name)
                    )
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        problem = "truncated or corrupt archive" if opened else "not a .tar.gz archive"
        raise PrepareError(f"{archive}: {problem} ({exc})") from exc
    return small, wavs


# ---------------------------------------------------------------- one file


def expected_frames(frames: int, rate_in: int, rate_out: int) -> int:
    """Output length of a resampled file: the input duration, rounded to whole samples."""
    return (frames * rate_out + rate_in // 2) // rate_in


def resample_file(source: str | Path, target: str | Path, rate: int) -> dict:
    """Resample one wav to ``rate`` in blocks; ``target`` appears only when complete.

    Linear PCM and float files keep their sample format; anything else is
    written as 16-bit PCM. Integer output is clipped to [-1, 1] (resampling can
    overshoot full scale slightly).
    """
    try:
        with sf.SoundFile(str(source)) as reader:
            if reader.samplerate != SOURCE_RATE:
                raise PrepareError(f"is {reader.samplerate} Hz, expected {SOURCE_RATE} Hz")
            subtype = reader.subtype if reader.subtype in KEPT_SUBTYPES else "PCM_16"
            clip = subtype.startswith("PCM")
            stream = soxr.ResampleStream(
                reader.samplerate, rate, reader.channels, dtype="float64", quality=QUALITY
            )
            frames_in = frames_out = 0
            with atomic_path(target) as tmp:
                with sf.SoundFile(
                    str(tmp), "w", rate, reader.channels, subtype, format="WAV"
                ) as writer:
                    flush = np.zeros((0, reader.channels))
                    for block in reader.blocks(BLOCK_FRAMES, dtype="float64", always_2d=True):
                        frames_in += block.shape[0]
                        frames_out += _write(writer, stream.resample_chunk(block), clip)
                    frames_out += _write(writer, stream.resample_chunk(flush, last=True), clip)
                want = expected_frames(frames_in, SOURCE_RATE, rate)
                if abs(frames_out - want) > 1:
                    raise PrepareError(f"resampled to {frames_out} frames, expected {want}")
    except sf.LibsndfileError as exc:
        raise PrepareError(f"cannot decode: {exc}") from exc
    return {"frames_in": frames_in, "rate_in": SOURCE_RATE, "frames_out": frames_out}


def _write(writer: sf.SoundFile, frames: np.ndarray, clip: bool) -> int:
    writer.write(np.clip(frames, -1.0, 1.0) if clip else frames)
    return frames.shape[0]


# ---------------------------------------------------------------- one task


class _InlineExecutor:
    """Runs each job when it is submitted (``--jobs 1``): no worker processes."""

    def submit(self, function: Callable, *args) -> Future:
        future: Future = Future()
        try:
            future.set_result(function(*args))
        except Exception as exc:  # reported per file, like a worker's exception
            future.set_exception(exc)
        return future

    def __enter__(self) -> _InlineExecutor:
        return self

    def __exit__(self, *exc_info) -> None:
        return None


def _read_manifest(path: Path) -> dict[str, dict]:
    """Records of finished files; a line cut short by an interrupted run is ignored."""
    records = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
                records[record["file"]] = record
            except (ValueError, KeyError, TypeError):
                continue
    return records


def estimate_bytes(source_bytes: int, rate: int) -> int:
    """Size of a resampled wav: same sample format, ``rate / 48000`` as many samples."""
    data = max(source_bytes - WAV_HEADER_BYTES, 0)
    return WAV_HEADER_BYTES + -(-data * rate // SOURCE_RATE)


def _human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000:
            return f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def _where(plan: TaskPlan, audio: AudioFile) -> str:
    return f"{plan.source}:{audio.source}" if plan.archive else audio.source


def _readable_sources(
    plan: TaskPlan, todo: list[AudioFile], scratch: Path
) -> Iterator[tuple[AudioFile, Path, bool]]:
    """(file, path to read, is a scratch copy) per file to do; archives are streamed once."""
    if not plan.archive:
        for audio in todo:
            yield audio, Path(audio.source), False
        return
    wanted = {audio.source: audio for audio in todo}
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(plan.source, "r|gz") as archive:
            for member in archive:
                audio = wanted.pop(member.name, None)
                if audio is None:
                    continue
                path = scratch / f"{len(wanted)}.wav"
                with open(path, "wb") as copy:
                    shutil.copyfileobj(archive.extractfile(member), copy, 2**20)
                yield audio, path, True
                if not wanted:
                    break
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise PrepareError(f"{plan.source}: truncated or corrupt archive ({exc})") from exc


def _resample_all(
    sources: Iterator[tuple[AudioFile, Path, bool]],
    rate_dir: Path,
    rate: int,
    executor,
    window: int,
) -> Iterator[tuple[AudioFile, dict | BaseException]]:
    """Resample on ``executor`` with at most ``window`` files in flight (bounded scratch)."""
    pending: dict = {}  # future -> (file, path read, is a scratch copy)

    def collect(futures) -> Iterator[tuple[AudioFile, dict | BaseException]]:
        for future in futures:
            audio, path, is_scratch = pending.pop(future)
            if is_scratch:
                path.unlink(missing_ok=True)
            yield audio, future.exception() or future.result()

    for audio, path, is_scratch in sources:
        target = rate_dir / audio.split / audio.name
        future = executor.submit(resample_file, str(path), str(target), rate)
        pending[future] = (audio, path, is_scratch)
        if len(pending) >= window:
            yield from collect(wait(pending, return_when=FIRST_COMPLETED)[0])
    yield from collect(wait(pending)[0])


def prepare_task(plan: TaskPlan, out: Path, rate: int, executor, window: int) -> TaskReport:
    """Prepare one task under ``out`` (resumable); returns what was done and what failed."""
    report = TaskReport(plan.name, files=len(plan.audio), errors=list(plan.problems))
    task_dir, rate_dir = out / plan.name, out / plan.name / str(rate)
    rate_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(task_dir / ".prepare.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        report.errors.append(f"{plan.name}: {task_dir} is being prepared by another process")
        return report
    try:
        # what a killed run left: scratch copies and temporary files (the task is locked)
        shutil.rmtree(task_dir / SCRATCH, ignore_errors=True)
        for stale in (*rate_dir.glob("*/.*.tmp.wav"), *task_dir.glob(".*.tmp.*")):
            stale.unlink(missing_ok=True)
        for file_name, content in plan.label_files.items():
            target = task_dir / file_name
            if not (target.is_file() and target.read_bytes() == content):  # as when in place
                write_bytes(target, content)
        manifest_path = rate_dir / MANIFEST
        done = _read_manifest(manifest_path)
        todo = [a for a in plan.audio if not (a.key in done and (rate_dir / a.key).is_file())]
        report.skipped = len(plan.audio) - len(todo)
        estimate = sum(estimate_bytes(audio.size, rate) for audio in todo)
        log.info(
            "%s: %d of %d file(s) to resample to %d Hz (%d prepared earlier), about %s to write",
            plan.name, len(todo), len(plan.audio), rate, report.skipped, _human(estimate),
        )  # fmt: skip
        free = shutil.disk_usage(rate_dir).free
        if estimate > free:
            report.errors.append(
                f"{plan.name}: needs about {_human(estimate)}, {rate_dir} has {_human(free)} free"
            )
            return report
        failed: set[str] = set()
        if todo:
            sources = _readable_sources(plan, todo, task_dir / SCRATCH)
            with (
                open(manifest_path, "a") as manifest,
                progress_bar(
                    total=len(todo), desc=plan.name, unit="file", leave=False, logger=log
                ) as bar,
            ):
                if manifest.tell() and not manifest_path.read_bytes().endswith(b"\n"):
                    manifest.write("\n")  # after a line cut short by a killed run
                try:
                    for audio, outcome in _resample_all(sources, rate_dir, rate, executor, window):
                        bar.update()
                        if isinstance(outcome, BaseException):
                            failed.add(audio.key)
                            reason = str(outcome).splitlines()[0] if str(outcome) else ""
                            if not isinstance(outcome, PrepareError):
                                reason = f"{type(outcome).__name__}: {reason}"
                            report.errors.append(f"{plan.name}: {_where(plan, audio)}: {reason}")
                            continue
                        manifest.write(json.dumps({"file": audio.key, **outcome}) + "\n")
                        manifest.flush()
                        report.written += 1
                        report.bytes_written += (rate_dir / audio.key).stat().st_size
                except PrepareError as exc:  # the archive broke while streaming it
                    report.errors.append(f"{plan.name}: {exc}")
                    return report
        unseen = len(todo) - report.written - len(failed)
        if unseen:
            report.errors.append(f"{plan.name}: {unseen} file(s) of {plan.source} were not read")
    finally:
        shutil.rmtree(task_dir / SCRATCH, ignore_errors=True)
        lock.release()
    return report


def prepare_tasks(
    sources: list[Path],
    out: Path,
    rate: int = SAMPLE_RATE,
    jobs: int = 1,
) -> list[TaskReport]:
    """Prepare every task of every source; a bad source or task fails alone.

    Progress is logged per task; a source or task that cannot be completed is a
    warning, followed by one line per problem.
    """
    if rate == SOURCE_RATE:
        raise PrepareError(f"--rate {rate}: the sources are already at {SOURCE_RATE} Hz")
    out.mkdir(parents=True, exist_ok=True)
    executor = _InlineExecutor() if jobs == 1 else ProcessPoolExecutor(max_workers=jobs)
    reports = []
    with executor:
        for source in expand_sources([Path(s) for s in sources]):
            try:
                plans = find_tasks(source)
            except PrepareError as exc:
                reports.append(TaskReport(source.name, errors=[str(exc)]))
                log.warning("FAILED %s", exc)
                continue
            for plan in plans:
                report = prepare_task(plan, out, rate, executor, 2 * jobs)
                reports.append(report)
                state = "ok" if report.ok else f"INCOMPLETE ({len(report.errors)} problem(s))"
                log.log(
                    logging.INFO if report.ok else logging.WARNING,
                    "%s: %s: %d file(s), %d written (%s), %d prepared earlier",
                    plan.name, state, report.files, report.written,
                    _human(report.bytes_written), report.skipped,
                )  # fmt: skip
                for error in report.errors:
                    log.warning("  %s", error)
    return reports
