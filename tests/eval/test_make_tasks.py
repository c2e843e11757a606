"""Synthetic tasks follow the HEAR layout heareval reads."""

import csv
import json
import os
import stat

import soundfile as sf

from hear_ced.eval.hear_run.task_checks import check_task
from hear_ced.eval.make_tasks import SYNTHETIC_TASKS


def test_layout_metadata_and_audio(synthetic_tasks):
    assert sorted(p.name for p in synthetic_tasks.iterdir()) == sorted(
        t.name for t in SYNTHETIC_TASKS
    )
    for task in SYNTHETIC_TASKS:
        folder = synthetic_tasks / task.name
        metadata = json.loads((folder / "task_metadata.json").read_text())
        assert metadata["splits"] == list(task.splits) and metadata["split_mode"] == task.split_mode
        with open(folder / "labelvocabulary.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert [int(r["idx"]) for r in rows] == list(range(len(rows)))
        for rate in (16000, 44100):
            assert check_task(folder, rate)["task_name"] == task.name
        first_split = task.splits[0]
        labels = json.loads((folder / f"{first_split}.json").read_text())
        info = sf.info(str(folder / "16000" / first_split / next(iter(labels))))
        assert info.samplerate == 16000 and info.frames == int(task.clip_seconds * 16000)


def test_event_labels_are_in_milliseconds_inside_the_clip(synthetic_tasks):
    labels = json.loads((synthetic_tasks / "synth_event" / "train.json").read_text())
    events = [event for clip in labels.values() for event in clip]
    assert events and all(0 <= e["start"] < e["end"] <= 3000 for e in events)
    assert max(e["end"] - e["start"] for e in events) > 300  # ms, not seconds


def test_every_multilabel_fold_holds_every_class(synthetic_tasks):
    folder = synthetic_tasks / "synth_scene_multilabel"
    for fold in ("fold00", "fold01", "fold02"):
        labels = json.loads((folder / f"{fold}.json").read_text())
        assert len({label for clip in labels.values() for label in clip}) == 4
        assert any(len(clip) == 2 for clip in labels.values())


def test_task_files_get_a_plain_new_files_mode(synthetic_tasks):
    # written atomically (through a private temporary file), readable as any new file is
    umask = os.umask(0o022)
    os.umask(umask)
    folder = synthetic_tasks / "synth_event"
    for path in (folder / "task_metadata.json", folder / "labelvocabulary.csv",
                 next((folder / "16000" / "train").glob("*.wav"))):  # fmt: skip
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


def test_clips_per_split_and_seconds_resize_every_task(tmp_path):
    from click.testing import CliRunner

    from hear_ced.eval.cli import main

    args = ["make-tasks", str(tmp_path / "t"), "--sample-rates", "16000"]
    sized = [*args, "--clips-per-split", "3", "--seconds", "2"]
    result = CliRunner().invoke(main, sized)
    assert result.exit_code == 0, result.output
    for task in ("synth_scene_multiclass", "synth_event"):
        folder = tmp_path / "t" / task
        assert json.loads((folder / "task_metadata.json").read_text())["sample_duration"] == 2.0
        assert len(json.loads((folder / "train.json").read_text())) == 3
        wave, rate = sf.read(next((folder / "16000" / "train").glob("*.wav")))
        assert wave.shape[0] == 2 * rate
    other = CliRunner().invoke(main, [*args, "--clips-per-split", "4"])
    assert other.exit_code == 1 and "holds 3 clips of 2 s per split, not the 4" in other.output
    short = CliRunner().invoke(main, ["make-tasks", str(tmp_path / "u"), "--seconds", "1"])
    assert short.exit_code == 1 and "synth_event needs clips of at least 2 s" in short.output
