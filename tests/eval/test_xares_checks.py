"""``ced-eval xares``'s own checks, without running X-ARES: hop, flags, task folders, encoder file."""

from __future__ import annotations

import importlib
import io
import json
import logging
import sys
import tarfile
from pathlib import Path

import pytest

from hear_ced.eval.hear_run.settings import RunError, TaskError
from hear_ced.eval.xares import run as xares_run
from hear_ced.eval.xares.report import KNN, MLP, rows
from hear_ced.eval.xares.run import XaresRunSettings, check_hop, write_encoder_module
from hear_ced.eval.xares.task_folders import TaskFolder, builtin_tasks, check_audio, task_folders

FRAME = {"task_type": "frame", "metric_args": {"segment_length_in_s": 1.0}}
CLIP = {"task_type": "clip", "metric_args": {}}
SPLITS = {"name": "toy", "audio_tars": {"train": "train*.tar", "test": "test*.tar"},
          "encoded_tars": {"train": "wds-encoded-train*.tar", "test": "wds-encoded-test*.tar"}}  # fmt: skip


@pytest.mark.parametrize(("hop", "passes", "ok"), [(40.0, 4, True), (20.0, 8, True),
                                                   (160.0, 1, False), (80.0, 2, False)])  # fmt: skip
def test_a_frame_task_needs_a_hop_dividing_its_segments(hop, passes, ok):
    if ok:
        check_hop("desed", FRAME, hop, passes)
        return
    with pytest.raises(TaskError) as info:
        check_hop("desed", FRAME, hop, passes)
    message = str(info.value)
    assert message.startswith(f"task desed: the {hop:g} ms hop (--passes {passes})")
    assert "1000 ms scoring segments" in message and message.endswith("use --passes 4 or 8 or 16")


def test_clip_tasks_and_frame_tasks_without_segments_have_no_hop_rule():
    check_hop("esc50", CLIP, 160.0, 1)
    check_hop("x", {"task_type": "frame", "metric_args": {}}, 160.0, 1)


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as handle:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            handle.addfile(info, io.BytesIO(data))
    return path


def _encoding(folder: Path, train: int, test: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    _tar(folder / "wds-encoded-train000000.tar", {f"{i}.npy": b"x" for i in range(train)})
    _tar(folder / "wds-encoded-test000000.tar", {f"{i}.npy": b"x" for i in range(test)})


CLIPS = {"train": 3, "test": 2}
ENCODER = {"weights_sha256": "a" * 64, "passes": 2}


def test_a_complete_stamped_encoding_counts_as_done(tmp_path):
    _encoding(tmp_path, 3, 2)
    (tmp_path / xares_run.READY).touch()
    assert not xares_run.is_encoded(
        tmp_path, SPLITS, CLIPS, ENCODER
    )  # X-ARES's flag alone is not enough
    xares_run.accept(tmp_path, SPLITS, CLIPS, ENCODER, tmp_path / "no.log")
    assert xares_run.is_encoded(tmp_path, SPLITS, CLIPS, ENCODER)


@pytest.mark.parametrize("damage", ["empty tar", "short split", "other encoder", "no tar"])
def test_a_stale_ready_flag_is_not_trusted(tmp_path, caplog, damage):
    _encoding(tmp_path, 3, 2)
    (tmp_path / xares_run.READY).touch()
    xares_run.accept(tmp_path, SPLITS, CLIPS, ENCODER, tmp_path / "no.log")
    if damage == "empty tar":
        _tar(tmp_path / "wds-encoded-test000000.tar", {})
    elif damage == "short split":
        _tar(tmp_path / "wds-encoded-train000000.tar", {"0.npy": b"x"})
    elif damage == "no tar":
        (tmp_path / "wds-encoded-test000000.tar").unlink()
    with caplog.at_level(logging.WARNING):
        other = {**ENCODER, "passes": 4} if damage == "other encoder" else ENCODER
        assert not xares_run.is_encoded(tmp_path, SPLITS, CLIPS, other)
    assert f"clearing a stale {xares_run.READY}" in caplog.text


def test_an_empty_encoded_tar_is_refused_naming_it(tmp_path):
    _encoding(tmp_path, 3, 0)
    (tmp_path / xares_run.READY).touch()
    with pytest.raises(
        TaskError, match=r"split test: 0 of 2 clips encoded \(wds-encoded-test000000.tar empty\)"
    ):
        xares_run.accept(tmp_path, SPLITS, CLIPS, ENCODER, tmp_path / "no.log")
    assert not (tmp_path / xares_run.READY).exists()  # X-ARES will encode again next time


def test_a_logged_decode_failure_is_refused_even_when_the_counts_add_up(tmp_path):
    _encoding(tmp_path, 5, 4)  # crop_length makes several samples per clip
    (tmp_path / xares_run.READY).touch()
    log = tmp_path / "decode.log"
    log.write_text("/tmp/file.wav\tLibsndfileError: Format not recognised.\n")
    with pytest.raises(TaskError, match="1 audio member"):
        xares_run.accept(tmp_path, SPLITS, CLIPS, ENCODER, log)


def test_task_folders_resolve_x_ares_tasks_and_refuse_unknown_ones(tmp_path):
    (tmp_path / "tasks" / "esc50").mkdir(parents=True)
    (tmp_path / "tasks" / "mine").mkdir()
    (tmp_path / "tasks" / "mine" / "mine_task.py").write_text("# a custom task\n")
    found = task_folders(tmp_path / "tasks", ())
    assert [(t.name, t.task_py) for t in found] == [
        ("esc50", builtin_tasks()["esc50"]),
        ("mine", "ced_xares_tasks/mine_task.py"),
    ]
    assert builtin_tasks()["esc50"] == "tasks/esc50_task.py" and len(builtin_tasks()) > 20
    assert not (tmp_path / "work").exists()  # nothing written before the run claims its folder
    for task in found:
        task.install(tmp_path / "work")
    assert (tmp_path / "work/ced_xares_tasks/mine_task.py").read_text() == "# a custom task\n"
    (tmp_path / "tasks" / "nonesuch").mkdir()
    with pytest.raises(
        RunError, match="task folder nonesuch: no \\*_task.py in it and no X-ARES task"
    ):
        task_folders(tmp_path / "tasks", ())
    with pytest.raises(RunError, match=r"tasks \['other'\] not found"):
        task_folders(tmp_path / "tasks", ("other",))


def test_a_missing_split_of_an_x_ares_task_names_what_to_download(tmp_path):
    _tar(tmp_path / "train_000000.tar", {"a.wav": b"RIFF"})
    task = TaskFolder(tmp_path, "tasks/toy_task.py")
    with pytest.raises(TaskError) as info:
        check_audio(task, {**SPLITS, "zenodo_id": "14614287"})
    assert str(info.value) == (
        f"task {tmp_path.name}: no audio tars for split test (test*.tar); "
        f"download X-ARES's Zenodo record 14614287 into {tmp_path}"
    )


def test_the_encoder_module_has_one_encoder_built_without_arguments(tmp_path, tiny_checkpoint):
    name = write_encoder_module(tmp_path, None, str(tiny_checkpoint), 4)
    sys.path.insert(0, str(tmp_path))
    try:
        module = importlib.import_module(Path(name).stem)
        assert [n for n in dir(module) if n.endswith("Encoder")] == ["CEDEncoder"]
        encoder = module.CEDEncoder()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(Path(name).stem, None)
    assert encoder.hop_size_in_ms == 40.0 and encoder.output_dim == 32


def test_settings_take_a_size_or_a_checkpoint(tmp_path, tiny_checkpoint):
    assert XaresRunSettings("mini", None, tmp_path, tmp_path).module == "hear_ced.mini"
    assert (
        XaresRunSettings("hear_ced.custom", str(tiny_checkpoint), tmp_path, tmp_path).variant
        is None
    )
    with pytest.raises(RunError, match="needs --model"):
        XaresRunSettings("hear_ced.custom", None, tmp_path, tmp_path)
    with pytest.raises(RunError, match="--passes must divide"):
        XaresRunSettings("hear_ced.tiny", None, tmp_path, tmp_path, passes=3)
    with pytest.raises(RunError, match="unknown module"):
        XaresRunSettings("hear_ced.huge", None, tmp_path, tmp_path)
    with pytest.raises(RunError, match="does not exist"):
        XaresRunSettings("hear_ced.tiny", str(tmp_path / "none.safetensors"), tmp_path, tmp_path)


def test_report_rows_show_published_numbers():
    result = {"task": "esc50", "name": "esc50", "formal_name": "ESC-50", "metric": "accuracy",
              "mlp": 0.91234, "knn": 0.5, "status": "ok"}  # fmt: skip
    assert rows([result]) == [("esc50", "ESC-50", "accuracy", "0.912", "0.500",
                               f"{MLP['esc50']:.3f}", f"{KNN['esc50']:.3f}", "ok")]  # fmt: skip
    assert MLP["esc50"] == 0.857 and KNN["esc50"] == 0.618


@pytest.mark.parametrize(("gpus", "jobs"), [(0, "0"), (2, "1")])
def test_x_ares_job_mode_follows_the_device(monkeypatch, tmp_path, gpus, jobs):
    """No GPU: --max-jobs 0, since X-ARES's pool picks GPU i % num_gpus."""
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    commands = []
    monkeypatch.setattr(xares_run, "run_logged", lambda command, *rest: commands.append(command))
    xares_run.xares_stages(
        "enc.py", "tasks/esc50_task.py", tmp_path, tmp_path / "l", tmp_path / "d"
    )
    (command,) = commands
    assert command[command.index("xares.run") :] == [
        "xares.run", "enc.py", "tasks/esc50_task.py", "--max-jobs", jobs,
        "--from-stage", "1", "--to-stage", "2",
    ]  # fmt: skip


def test_the_command_refuses_bad_input_in_one_line_and_writes_nothing(tmp_path, tiny_checkpoint):
    from click.testing import CliRunner

    from hear_ced.eval.cli import main

    out = tmp_path / "out"
    runner = CliRunner()
    outcome = runner.invoke(main, ["xares", "--module", "hear_ced.custom",
                                   "--tasks-dir", str(tmp_path), "--out", str(out)])  # fmt: skip
    assert outcome.exit_code == 1
    assert (
        outcome.output.strip() == "Error: hear_ced.custom needs --model: it has no default weights"
    )
    outcome = runner.invoke(main, ["xares", "--module", "hear_ced.custom", "--model",
                                   str(tiny_checkpoint), "--tasks-dir", str(tmp_path / "none"),
                                   "--out", str(out)])  # fmt: skip
    assert outcome.exit_code == 1
    assert outcome.output.strip() == f"Error: tasks folder {tmp_path / 'none'} does not exist"
    assert not out.exists()


TOY = {**SPLITS, "formal_name": "Toy", "task_type": "clip", "disabled": False, "private": False,
       "zenodo_id": None, "metric": "accuracy", "metric_args": {}, "eval_weight": 2,
       "do_knn": False, "crop_length": None, "epochs": 1}  # fmt: skip


def test_the_run_clears_a_stale_encoding_and_resumes_after_a_kill(
    tmp_path, tiny_checkpoint, monkeypatch
):
    """The orchestration around X-ARES, with X-ARES's process replaced by its file effects."""
    from hear_ced.eval.xares.run import run_xares

    folder = tmp_path / "tasks" / "toy"
    folder.mkdir(parents=True)
    (folder / "toy_task.py").write_text("# described below\n")
    _tar(folder / "train_000000.tar", {"a.wav": b"x", "b.wav": b"x", "c.wav": b"x"})
    _tar(folder / "test_000000.tar", {"a.wav": b"x", "b.wav": b"x"})
    out = tmp_path / "out"
    env = out / "embeddings/env/toy"

    def describe(encoder_py, task_pys, work_dir, log):
        path = work_dir / "describe.json"
        encoder = {"check_audio_encoder": True, "hop_size_in_ms": 80.0, "output_dim": 32}
        path.write_text(json.dumps({"encoder": encoder, "tasks": {t: TOY for t in task_pys}}))
        return path

    seen = []

    def xares(encoder_py, task_py, work_dir, log, decode_log):
        assert (env / xares_run.AUDIO_READY).exists() and (env / "train_000000.tar").is_symlink()
        encodings = env / "embeddings/CEDEncoder"
        seen.append(sorted(p.name for p in encodings.iterdir()) if encodings.exists() else [])
        assert not (env / "checkpoints").joinpath("CEDEncoder").exists()  # nothing half-trained
        if not (encodings / xares_run.READY).exists():  # X-ARES skips encoding on its flag
            _encoding(encodings, 3, 2)
            (encodings / xares_run.READY).touch()
        (env / "checkpoints/CEDEncoder").mkdir(parents=True, exist_ok=True)
        (env / "checkpoints/CEDEncoder/mlp_score.txt").write_text("0.75\n2")

    monkeypatch.setattr(xares_run, "describe_tasks", describe)
    monkeypatch.setattr(xares_run, "xares_stages", xares)
    # Another model's encoding, flagged ready, with an empty split.
    _encoding(env / "embeddings/CEDEncoder", 3, 0)
    (env / "embeddings/CEDEncoder" / xares_run.READY).touch()
    settings = dict(module="hear_ced.custom", model=str(tiny_checkpoint),
                    tasks_dir=tmp_path / "tasks", out=out)  # fmt: skip
    (result,) = run_xares(XaresRunSettings(**settings))
    assert result["status"] == "ok" and result["mlp"] == 0.75
    assert seen == [[]]  # cleared before X-ARES ran
    # Killed after X-ARES scored, before the result was written: nothing is redone.
    (out / "results/toy.json").unlink()
    assert run_xares(XaresRunSettings(**settings))[0]["mlp"] == 0.75 and len(seen) == 1
    # Killed while training: the encoding is kept, the half-trained state is not.
    (out / "results/toy.json").unlink()
    (env / "checkpoints/CEDEncoder/mlp_score.txt").write_text("0.7")  # cut short
    assert run_xares(XaresRunSettings(**settings))[0]["status"] == "ok"
    assert seen[-1] == sorted([xares_run.READY, xares_run.STAMP, "wds-encoded-test000000.tar",
                               "wds-encoded-train000000.tar"])  # fmt: skip
