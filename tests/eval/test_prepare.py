"""``ced-eval prepare-tasks``: 48 kHz HEAR tasks (folders, archives) to 16 kHz, resumable."""

import io
import json
import logging
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from scipy.signal import resample_poly

from hear_ced.eval import prepare
from hear_ced.eval.cli import main
from hear_ced.eval.hear_run.settings import TaskError
from hear_ced.eval.hear_run.task_checks import check_task
from hear_ced.eval.make_tasks import make_tasks
from hear_ced.eval.prepare import MANIFEST, PrepareError, find_tasks, prepare_tasks

SPLITS = ("train", "valid", "test")


def write_task(folder: Path, clips: dict[str, np.ndarray], rate=48000, subtype="PCM_16") -> Path:
    """A scene task in the HEAR layout; clip ``i`` goes to split ``SPLITS[i % 3]``."""
    labels = {split: {} for split in SPLITS}
    for index, (name, audio) in enumerate(clips.items()):
        split = SPLITS[index % 3]
        (folder / str(rate) / split).mkdir(parents=True, exist_ok=True)
        sf.write(folder / str(rate) / split / name, audio, rate, subtype=subtype)
        labels[split][name] = ["a" if index % 2 else "b"]
    metadata = {
        "task_name": folder.name, "embedding_type": "scene", "prediction_type": "multiclass",
        "split_mode": "trainvaltest", "splits": list(SPLITS), "evaluation": ["top1_acc"],
        "sample_duration": 2.0,
    }  # fmt: skip
    (folder / "task_metadata.json").write_text(json.dumps(metadata))
    (folder / "labelvocabulary.csv").write_text("idx,label\n0,a\n1,b\n")
    for split, entries in labels.items():
        (folder / f"{split}.json").write_text(json.dumps(entries))
    return folder


def sine(frames: int, hz: float = 1000.0, amplitude: float = 0.5, rate: int = 48000):
    return (amplitude * np.sin(2 * np.pi * hz * np.arange(frames) / rate)).astype(np.float32)


def noise_clips(count: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        f"{i:03d}.wav": (0.2 * rng.standard_normal(24000 + 7 * i)).astype(np.float32)
        for i in range(count)
    }


def targz(folder: Path, archive: Path, prefix: str = "tasks") -> Path:
    with tarfile.open(archive, "w:gz") as handle:
        handle.add(folder, arcname=f"{prefix}/{folder.name}")
    return archive


def prepared_frames(task: Path, rate: int = 16000) -> dict[str, int]:
    return {
        f"{p.parent.name}/{p.name}": sf.info(p).frames
        for p in sorted((task / str(rate)).glob("*/*.wav"))
    }


def source_frames(task: Path) -> dict[str, int]:
    return {
        f"{p.parent.name}/{p.name}": sf.info(p).frames for p in (task / "48000").glob("*/*.wav")
    }


def test_folder_and_archive_are_prepared_with_the_same_names_and_labels(tmp_path):
    source = tmp_path / "src"
    make_tasks(source, tasks=["synth_scene_multiclass", "synth_event"], sample_rates=[48000])
    archive = targz(source / "synth_event", tmp_path / "synth_event.tar.gz")
    out = tmp_path / "tasks"
    result = CliRunner().invoke(
        main,
        ["prepare-tasks", str(source / "synth_scene_multiclass"), str(archive),
         "--out", str(out), "--jobs", "2"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (
        "36 of 36 file(s) to resample to 16000 Hz" in result.output and "to write" in result.output
    )
    for name in ("synth_scene_multiclass", "synth_event"):
        task, src = out / name, source / name
        for label_file in src.glob("*.json"):
            assert (task / label_file.name).read_bytes() == label_file.read_bytes()
        assert (task / "labelvocabulary.csv").read_bytes() == (
            src / "labelvocabulary.csv"
        ).read_bytes()
        expected = {key: round(n / 3) for key, n in source_frames(src).items()}
        assert prepared_frames(task) == expected and len(expected) in (36, 18)
        assert not (task / "48000").exists() and not (task / ".scratch").exists()
        metadata = check_task(task, 16000)  # what `ced-eval hear` checks first
        assert metadata["task_name"] == name


def test_resampled_audio_matches_an_independent_resampler(tmp_path):
    clips = {"tone.wav": sine(48001), "float.wav": sine(30000, hz=3000, amplitude=0.25),
             "loud.wav": sine(48000, hz=200, amplitude=1.0)}  # fmt: skip
    write_task(tmp_path / "src" / "tones", clips)
    sf.write(tmp_path / "src" / "tones" / "48000" / "valid" / "float.wav", clips["float.wav"],
             48000, subtype="FLOAT")  # fmt: skip
    [report] = prepare_tasks([tmp_path / "src" / "tones"], tmp_path / "out")
    assert report.ok and report.written == 3
    out = tmp_path / "out" / "tones" / "16000"
    for split, name, hz, amplitude in (
        ("train", "tone.wav", 1000, 0.5),
        ("valid", "float.wav", 3000, 0.25),
    ):
        audio, rate = sf.read(out / split / name)
        source = clips[name].astype(np.float64)
        assert rate == 16000 and len(audio) == round(len(source) / 3)
        spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
        assert np.argmax(spectrum) * 16000 / len(audio) == pytest.approx(hz, abs=16000 / len(audio))
        reference = resample_poly(source, 1, 3)[: len(audio)]
        middle = slice(200, len(audio) - 200)
        assert np.max(np.abs(audio[middle] - reference[middle])) < 2e-3
        assert np.sqrt(2 * np.mean(audio[middle] ** 2)) == pytest.approx(amplitude, rel=0.01)
    assert sf.info(out / "train" / "tone.wav").subtype == "PCM_16"
    assert sf.info(out / "valid" / "float.wav").subtype == "FLOAT"
    loud, _ = sf.read(out / "test" / "loud.wav")
    assert np.max(np.abs(loud)) <= 1.0 and np.max(loud) > 0.99  # clipped, not wrapped around


def test_an_interrupted_run_is_resumed_and_leaves_no_half_file_counted_done(
    tmp_path, monkeypatch, caplog
):
    task = write_task(tmp_path / "src" / "noise", noise_clips(9))
    out = tmp_path / "out"
    calls = {"n": 0}
    original = prepare._write

    def interrupt_on_fifth_write(writer, frames, clip):
        calls["n"] += 1
        if calls["n"] == 5:  # in the middle of the third file (two writes per file)
            raise KeyboardInterrupt
        return original(writer, frames, clip)

    monkeypatch.setattr(prepare, "_write", interrupt_on_fifth_write)
    with pytest.raises(KeyboardInterrupt):
        prepare_tasks([task], out)
    monkeypatch.setattr(prepare, "_write", original)
    rate_dir = out / "noise" / "16000"
    assert len(list(rate_dir.glob("*/*.wav"))) == 2  # the cut file never got its name
    # what a killed process leaves: a temporary file, a scratch copy, a line cut short,
    # and a final-named file without a record (a truncated copy by another tool)
    (rate_dir / "test" / ".011.wav.x1y2.tmp.wav").write_bytes(b"RIFF half")
    (out / "noise" / ".scratch").mkdir()
    (out / "noise" / ".scratch" / "0.wav").write_bytes(b"partial copy")
    with open(rate_dir / MANIFEST, "a") as manifest:
        manifest.write('{"file": "test/005.wav", "frames_')
    shutil.copy(task / "48000" / "test" / "008.wav", rate_dir / "test" / "008.wav")
    caplog.set_level(logging.INFO, logger="hear_ced.eval.prepare")
    caplog.clear()
    [report] = prepare_tasks([task], out)
    assert report.ok, report.errors
    assert report.skipped == 2 and report.written == 7
    assert "7 of 9 file(s) to resample" in caplog.messages[0]
    assert prepared_frames(out / "noise") == {
        key: round(n / 3) for key, n in source_frames(task).items()
    }
    assert not list(rate_dir.glob("*/.*.tmp.wav")) and not (out / "noise" / ".scratch").exists()
    again = prepare_tasks([task], out)[0]
    assert again.ok and again.written == 0 and again.skipped == 9


def test_an_undecodable_wav_fails_alone_and_the_task_is_completed_later(tmp_path):
    task = write_task(tmp_path / "src" / "noise", noise_clips(6))
    good = (task / "48000" / "valid" / "001.wav").read_bytes()
    (task / "48000" / "valid" / "001.wav").write_bytes(b"RIFF not really a wav")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["prepare-tasks", str(task), "--out", str(out)])
    assert result.exit_code == 1
    [error] = [line for line in result.output.splitlines() if "001.wav" in line]
    assert error.startswith("  noise: ") and "cannot decode" in error
    assert "noise: INCOMPLETE (1 problem(s)): 6 file(s), 5 written" in result.output
    assert len(prepared_frames(out / "noise")) == 5
    (task / "48000" / "valid" / "001.wav").write_bytes(good)
    [report] = prepare_tasks([task], out)
    assert report.ok and report.written == 1 and report.skipped == 5


def test_bad_sources_fail_alone_with_one_line_each(tmp_path, caplog):
    tasks = tmp_path / "tasks"  # a folder of task folders: each task fails alone
    write_task(tasks / "good", noise_clips(3))
    write_task(tasks / "cd_rate", noise_clips(3), rate=44100)
    not_archive = tmp_path / "notes.tar.gz"
    not_archive.write_text("just text")
    foreign = tmp_path / "photos.tar.gz"
    with tarfile.open(foreign, "w:gz") as handle:
        info = tarfile.TarInfo("photos/cat.jpg")
        info.size = 3
        handle.addfile(info, io.BytesIO(b"jpg"))
    big = write_task(tmp_path / "src" / "big", noise_clips(30, seed=1))
    whole = targz(big, tmp_path / "big.tar.gz").read_bytes()
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(whole[: len(whole) // 2])
    sources = [not_archive, foreign, truncated, tmp_path / "nowhere", tasks]
    reports = prepare_tasks(sources, tmp_path / "out")
    errors = {report.name: report.errors for report in reports}
    assert [report.ok for report in reports] == [False] * 5 + [True]
    assert "notes.tar.gz: not a .tar.gz archive" in errors["notes.tar.gz"][0]
    assert "photos.tar.gz: not a HEAR task archive" in errors["photos.tar.gz"][0]
    assert "truncated.tar.gz: truncated or corrupt archive" in errors["truncated.tar.gz"][0]
    assert "nowhere: no such file or folder" in errors["nowhere"][0]
    assert "cd_rate: no 48000/ audio folder (task has 44100)" in errors["cd_rate"][0]
    assert all(len(e) == 1 and "\n" not in e[0] for e in errors.values() if e)
    failed = [r for r in caplog.records if r.getMessage().startswith("FAILED")]
    assert len(failed) == 5 and {r.levelno for r in failed} == {logging.WARNING}
    assert len(prepared_frames(tmp_path / "out" / "good")) == 3
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good"]


def test_source_listing_notes_missing_files_and_refuses_the_source_rate(tmp_path):
    task = write_task(tmp_path / "noise", noise_clips(3))
    (task / "48000" / "train" / "000.wav").unlink()
    [plan] = find_tasks(task)
    assert len(plan.audio) == 2 and "1 file(s) of train.json missing" in plan.problems[0]
    report = prepare_tasks([task], tmp_path / "out")[0]
    assert not report.ok and report.written == 2
    with pytest.raises(PrepareError, match="already at 48000"):
        prepare_tasks([task], tmp_path / "out", rate=48000)


def test_the_hear_runner_points_a_48k_task_to_prepare_tasks(tmp_path):
    task = write_task(tmp_path / "noise", noise_clips(3))
    with pytest.raises(TaskError, match="task has 48000.*ced-eval prepare-tasks"):
        check_task(task, 16000)


def test_a_prepared_archive_is_the_task_ced_eval_hear_runs_at_16k(tmp_path):
    """The same task as made directly at 16 kHz (which the pipeline tests run end to end)."""
    source, direct = tmp_path / "src", tmp_path / "direct"
    make_tasks(source, tasks=["synth_scene_multiclass"], sample_rates=[48000])
    make_tasks(direct, tasks=["synth_scene_multiclass"], sample_rates=[16000])
    archive = targz(source / "synth_scene_multiclass", tmp_path / "scene.tar.gz")
    prepared = CliRunner().invoke(
        main, ["prepare-tasks", str(archive), "--out", str(tmp_path / "tasks")]
    )
    assert prepared.exit_code == 0, prepared.output
    task, expected = (
        tmp_path / "tasks" / "synth_scene_multiclass",
        direct / "synth_scene_multiclass",
    )
    # the run's own task check passes; only the list of rates the source had differs
    ours, theirs = (check_task(folder, 16000) for folder in (task, expected))
    assert {**ours, "sample_rates": None} == {**theirs, "sample_rates": None}
    assert prepared_frames(task) == prepared_frames(expected)
    for name in ("labelvocabulary.csv", *(f"{split}.json" for split in SPLITS)):
        assert (task / name).read_bytes() == (expected / name).read_bytes(), name
