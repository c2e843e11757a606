"""``ced-eval xares`` end to end: X-ARES itself on small synthetic tasks, random CED weights.

The tasks are written with X-ARES's own tar writer (in a child process under
the torchaudio shim, since X-ARES imports torchaudio). One run covers a clip
task and a frame task that score, and the bad inputs that must fail alone:
a corrupt audio member and a split made only of corrupt audio (X-ARES writes
an empty encoded tar for it), a missing split, and a hop that does not
divide a frame task's segments.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
from click.testing import CliRunner

from hear_ced.eval.cli import main
from hear_ced.eval.hear_run.settings import RunError
from hear_ced.eval.xares import launch
from hear_ced.eval.xares import run as xares_module
from hear_ced.eval.xares.run import XaresRunSettings, max_jobs, run_xares

pytestmark = pytest.mark.slow

CLIP_TASK = """from xares.task import TaskConfig


def {name}_config(encoder) -> TaskConfig:
    return TaskConfig(
        name="{name}", formal_name="Synthetic clips", encoder=encoder, eval_weight=8,
        train_split="synth_train", valid_split="synth_valid", test_split="synth_test",
        label_processor=lambda x: int(x["label"]), output_dim=2, epochs=2, batch_size_train=8,
    )
"""

FRAME_TASK = """from math import ceil

import torch

from xares.task import TaskConfig


def {name}_config(encoder) -> TaskConfig:
    hop = encoder.hop_size_in_ms / 1000 if encoder else 0.0  # X-ARES also builds it without one

    def labels(x):
        target = torch.zeros(1, ceil(x["duration"] / hop))
        target[0, ceil(x["onset"] / hop) : ceil(x["offset"] / hop)] = 1.0
        return target

    return TaskConfig(
        name="{name}", formal_name="Synthetic events", encoder=encoder, eval_weight=8,
        task_type="frame", criterion="BCEWithLogitsLoss", do_knn=False, output_dim=1,
        metric="segmentf1_macro",
        metric_args=dict(hop_size_in_ms=1000 * hop, segment_length_in_s={segment}),
        train_split="synth_train", valid_split="synth_valid", test_split="synth_test",
        label_processor=labels, epochs=2, batch_size_train=8,
    )
"""

SPLITS = {"synth_train": 16, "synth_valid": 8, "synth_test": 8}
RATE = 16000


def _clip(kind: str, rng: np.random.Generator, index: int) -> tuple[np.ndarray, object]:
    noise = 0.05 * rng.standard_normal(RATE)
    t = np.arange(RATE) / RATE
    if kind == "clip":
        label = index % 2
        tone = 0.3 * np.sin(2 * np.pi * (300 + 500 * label) * t)
        return (noise + tone).astype(np.float32), str(label)
    onset = float(rng.uniform(0.0, 0.5))
    offset = onset + 0.4
    tone = 0.4 * np.sin(2 * np.pi * 1000 * t) * ((t >= onset) & (t < offset))
    return (noise + tone).astype(np.float32), {"onset": onset, "offset": offset, "duration": 1.0}


def write_task(root: Path, name: str, kind: str, segment: float = 0.32, corrupt: dict | None = None,
               skip: tuple[str, ...] = ()) -> None:  # fmt: skip
    """One task folder: its task file and X-ARES audio tars written by X-ARES's writer.

    ``corrupt`` maps a split to how many of its clips are replaced by bytes no decoder reads.
    """
    from xares.audiowebdataset import write_audio_tar

    folder = root / name
    clips_dir = root / f".{name}-wav"
    folder.mkdir(parents=True)
    clips_dir.mkdir()
    template = CLIP_TASK if kind == "clip" else FRAME_TASK
    (folder / f"{name}_task.py").write_text(template.format(name=name, segment=segment))
    rng = np.random.default_rng(len(name))
    for split, count in SPLITS.items():
        if split in skip:
            continue
        paths, labels = [], []
        for index in range(count):
            audio, label = _clip(kind, rng, index)
            path = clips_dir / f"{split}_{index:03d}.wav"
            if index < (corrupt or {}).get(split, 0):
                path.write_bytes(b"RIFF not audio" + rng.bytes(400))
            else:
                soundfile.write(path, audio, RATE)
            paths.append(str(path))
            labels.append(label)
        write_audio_tar(paths, labels, str(folder / f"{split}_*.tar"), num_shards=1)


def write_tasks(root: Path) -> None:
    write_task(root, "synth_clip", "clip")
    write_task(root, "synth_frame", "frame")
    write_task(root, "synth_corrupt", "clip", corrupt={"synth_train": 1, "synth_test": 8})
    write_task(root, "synth_missing", "clip", skip=("synth_test",))
    write_task(root, "synth_hop", "frame", segment=0.1)


@pytest.fixture(scope="module")
def xares_tasks(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("xares_tasks")
    log = root / ".decode.log"
    # X-ARES's writer module imports torchaudio: run it under the shims, as ced-eval does.
    command = launch.command(log, "tests.eval.test_xares_run", [str(root)])
    subprocess.run(command, check=True, cwd=Path(__file__).resolve().parents[2])
    return root


@pytest.fixture(scope="module")
def xares_run(xares_tasks, tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("xares_out")
    arguments = ["xares", "--module", "hear_ced.custom", "--model", str(tiny_checkpoint),
                 "--tasks-dir", str(xares_tasks), "--out", str(out)]  # fmt: skip
    outcome = CliRunner().invoke(main, arguments)
    results = {p.stem: json.loads(p.read_text()) for p in (out / "results").glob("*.json")}
    return outcome, out, results


def test_clip_and_frame_tasks_score_with_x_ares_itself(xares_run):
    outcome, out, results = xares_run
    clip, frame = results["synth_clip"], results["synth_frame"]
    assert clip["status"] == "ok" and frame["status"] == "ok", (clip["error"], frame["error"])
    assert 0 <= clip["mlp"] <= 1 and 0 <= clip["knn"] <= 1 and 0 <= frame["mlp"] <= 1
    assert "knn" not in frame  # the task turns X-ARES's kNN off
    assert clip["clips"] == {"synth_train": 16, "synth_valid": 8, "synth_test": 8}
    # The scores are X-ARES's own files, read back.
    score_file = out / "embeddings/env/synth_clip/checkpoints/CEDEncoder/mlp_score.txt"
    assert math.isclose(float(score_file.read_text().split()[0]), clip["mlp"])
    assert clip["xares_max_jobs"] == max_jobs()
    # Random weights still separate a 300 Hz tone from an 800 Hz one for X-ARES's kNN.
    assert clip["knn"] > 0.7


def test_the_report_sits_beside_the_published_columns(xares_run):
    outcome, out, results = xares_run
    assert outcome.exit_code == 1  # the bad tasks failed; the good ones are in the report
    assert "4 task(s) failed" not in outcome.output and "3 task(s) failed" in outcome.output
    lines = (out / "report.csv").read_text().splitlines()
    assert lines[0].split(",") == ["task", "X-ARES task", "metric", "MLP", "kNN",
                                   "dasheng MLP", "dasheng kNN", "status"]  # fmt: skip
    row = next(line.split(",") for line in lines if line.startswith("synth_clip,"))
    assert float(row[3]) == pytest.approx(results["synth_clip"]["mlp"], abs=5e-4)
    assert row[5:7] == ["", ""]  # no published numbers for a synthetic task


def test_corrupt_audio_fails_its_task_naming_the_members(xares_run):
    _, out, results = xares_run
    error = results["synth_corrupt"]["error"]
    assert results["synth_corrupt"]["status"] == "failed"
    assert "synth_train: 15 of 16 clips encoded" in error
    assert "synth_test: 0 of 8 clips encoded (wds-encoded-synth_test000000.tar empty)" in error
    assert "synth_train_000000.tar:synth_train_000.wav (Format not recognised.)" in error
    # X-ARES set its flag on the short encoding; it is gone, and so is what X-ARES trained on it.
    task_env = out / "embeddings/env/synth_corrupt"
    assert not (task_env / "embeddings/CEDEncoder/.encoded_tar_ready").exists()
    assert not (task_env / "checkpoints/CEDEncoder").exists()


def test_a_missing_split_names_the_task_and_the_tars(xares_run, xares_tasks):
    error = xares_run[2]["synth_missing"]["error"]
    assert error == (
        "task synth_missing: no audio tars for split synth_test (synth_test*.tar); "
        f"put them into {xares_tasks / 'synth_missing'}"
    )


def test_a_hop_that_does_not_divide_the_segments_is_refused(xares_run):
    error = xares_run[2]["synth_hop"]["error"]
    assert "the 80 ms hop (--passes 2) does not divide its 100 ms scoring segments" in error
    assert error.endswith("use --passes 8 or 16")


def test_a_rerun_redoes_nothing_finished(xares_run, xares_tasks, tiny_checkpoint, monkeypatch):
    _, out, results = xares_run

    def no_child(*args, **kwargs):
        raise AssertionError("a finished task was run again")

    monkeypatch.setattr(xares_module, "xares_stages", no_child)
    monkeypatch.setattr(xares_module, "describe_tasks", no_child)
    settings = XaresRunSettings(module="hear_ced.custom", model=str(tiny_checkpoint),
                                tasks_dir=xares_tasks, out=out, tasks=("synth_clip", "synth_frame"))  # fmt: skip
    again = run_xares(settings)
    assert [r["finished"] for r in again] == [results[t]["finished"] for t in settings.tasks]


def test_another_identity_is_refused_and_restart_starts_over(
    xares_run, xares_tasks, tiny_checkpoint, tmp_path
):
    out = tmp_path / "copy"
    shutil.copytree(xares_run[1], out, symlinks=True)
    settings = dict(module="hear_ced.custom", model=str(tiny_checkpoint), tasks_dir=xares_tasks,
                    out=out, tasks=("synth_missing",), passes=4)  # fmt: skip
    with pytest.raises(RunError, match="passes.*--restart"):
        run_xares(XaresRunSettings(**settings))
    results = run_xares(XaresRunSettings(**settings, restart=True))
    assert [r["task"] for r in results] == ["synth_missing"]
    assert sorted(p.name for p in (out / "results").iterdir()) == ["synth_missing.json"]
    assert json.loads((out / "run.json").read_text())["passes"] == 4


if __name__ == "__main__":  # run under hear_ced.eval.xares.launch by the fixture below
    write_tasks(Path(sys.argv[1]))
