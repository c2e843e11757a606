"""``hear_ced.common.files``: durable writes, JSON, run-folder claims and locks."""

import os
import stat

import filelock
import pytest

from hear_ced.common.files import (
    FolderClaimed,
    atomic_path,
    claim_folder,
    folder_lock,
    read_json,
    write_bytes,
    write_json,
    write_text,
)


def leftovers(folder, name):
    """Temporary files of ``name`` still in ``folder``."""
    return [p for p in folder.iterdir() if p.name.startswith(f".{name}.")]


def test_atomic_path_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "report.md"
    target.parent.mkdir()
    target.write_text("old")
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".md"
        tmp.write_text("new")
        assert target.read_text() == "old"  # nothing visible before the block ends
    assert target.read_text() == "new"
    assert leftovers(target.parent, "report.md") == []


def test_atomic_path_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("disk on fire")
    assert target.read_text() == "old"
    assert leftovers(tmp_path, "results.json") == []


def test_atomic_path_makes_the_parent_folders(tmp_path):
    target = write_bytes(tmp_path / "a" / "b" / "blob.bin", b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"


def test_write_json_round_trip_and_indent(tmp_path):
    data = {"mAP": 0.25, "tasks": ["esc50", "fsd50k"], "nested": {"k": None}}
    path = write_json(tmp_path / "r.json", data)
    assert read_json(path) == data
    assert path.read_text().startswith('{\n  "mAP"')  # indent=2 by default
    compact = write_json(tmp_path / "c.json", data, indent=None)
    assert compact.read_text().count("\n") == 1 and read_json(compact) == data


def test_read_json_names_an_unreadable_file(tmp_path):
    path = write_text(tmp_path / "broken.json", '{"half": ')
    with pytest.raises(ValueError, match="broken.json is not valid JSON"):
        read_json(path)


def test_claim_folder_accepts_its_own_plan_and_refuses_another(tmp_path):
    plan = {"model": "mini", "seed": 1, "epochs": 3}
    assert claim_folder(tmp_path, plan) is False  # a new run
    assert read_json(tmp_path / "plan.json") == plan
    assert claim_folder(tmp_path, dict(plan)) is True  # a resume of the same plan
    with pytest.raises(
        FolderClaimed, match=r"\(seed: 1 stored, 2 wanted\); use another"
    ) as refused:
        claim_folder(tmp_path, {**plan, "seed": 2})
    assert "epochs" not in str(refused.value) and "model" not in str(refused.value)
    assert read_json(tmp_path / "plan.json") == plan  # the refusal changed nothing


def test_claim_folder_names_nested_keys_and_lets_uncompared_ones_change(tmp_path):
    plan = {"optim": {"lr": 0.1, "epochs": 3}, "workers": 2, "sizes": (1, 2)}
    runtime = {"workers"}

    def compared(values):
        return {k: v for k, v in values.items() if k not in runtime}

    first = {"started": "today"}
    assert claim_folder(tmp_path, plan, "config.json", compared=compared, first=first) is False
    assert read_json(tmp_path / "config.json") == {**plan, "sizes": [1, 2], **first}
    # A runtime change is a resume; the record takes the new value and keeps what only it holds.
    assert claim_folder(
        tmp_path, {**plan, "workers": 8}, "config.json", compared=compared, first={"started": "now"}
    )
    assert read_json(tmp_path / "config.json")["workers"] == 8
    assert read_json(tmp_path / "config.json")["started"] == "today"
    with pytest.raises(FolderClaimed, match=r"\(optim\.lr: 0\.1 stored, 0\.2 wanted\)") as refused:
        claim_folder(tmp_path, {**plan, "optim": {"lr": 0.2, "epochs": 3}}, "config.json",
                     compared=compared, first=first)  # fmt: skip
    assert str(refused.value).startswith(f"{tmp_path} holds a run with other settings")
    assert "workers" not in str(refused.value) and "epochs" not in str(refused.value)


def test_claim_folder_takes_the_folders_own_lock(tmp_path):
    taken = []

    class Lock:
        def __enter__(self):
            taken.append("in")

        def __exit__(self, *exc):
            taken.append("out")

    claim_folder(tmp_path, {"a": 1}, lock=Lock())
    assert taken == ["in", "out"] and not (tmp_path / "locks").exists()


def test_folder_lock_is_a_filelock_in_the_run_folder(tmp_path):
    lock = folder_lock(tmp_path, "train")
    assert isinstance(lock, filelock.BaseFileLock)
    assert lock.lock_file == str(tmp_path / "locks" / "train.lock")
    with lock:
        other = filelock.FileLock(tmp_path / "locks" / "train.lock", is_singleton=False)
        with pytest.raises(filelock.Timeout):
            other.acquire(timeout=0)
    other.acquire(timeout=0)  # free again once the holder is done
    other.release()


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    """The process's umask for one test; the files written should get 0o666 less it."""
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_json_gets_the_umasks_mode(umask, tmp_path):
    assert mode_of(write_json(tmp_path / "r.json", {"a": 1})) == 0o666 & ~umask


def test_a_writer_that_sets_its_own_mode_is_overruled(umask, tmp_path):
    with atomic_path(tmp_path / "blob.bin") as tmp:
        tmp.write_bytes(b"x")
        os.chmod(tmp, 0o600)
    assert mode_of(tmp_path / "blob.bin") == 0o666 & ~umask


def test_safetensors_gets_the_umasks_mode(umask, tmp_path, tiny_ced):
    from hear_ced.checkpoints import save_model

    assert mode_of(save_model(tiny_ced, tmp_path / "m.safetensors")) == 0o666 & ~umask


def test_onnx_export_gets_the_umasks_mode(umask, tmp_path, tiny_ced):
    from click.testing import CliRunner

    from hear_ced.checkpoints import save_model
    from hear_ced.cli import main

    checkpoint = save_model(tiny_ced, tmp_path / "m.safetensors")
    target = tmp_path / "m.onnx"
    result = CliRunner().invoke(main, ["export-onnx", str(target), "--model", str(checkpoint)])
    assert result.exit_code == 0, result.output
    assert mode_of(target) == 0o666 & ~umask


def test_prepared_hdf5_gets_the_umasks_mode(umask, tmp_path):
    import numpy as np
    import soundfile as sf

    from hear_ced.distill.data import prepare

    sf.write(tmp_path / "a.wav", np.zeros(1600, dtype=np.float32), 16000)
    (tmp_path / "list.tsv").write_text(f"filename\n{tmp_path / 'a.wav'}\n")
    prepare(tmp_path / "list.tsv", tmp_path / "out", workers=1, progress=False)
    shards = list((tmp_path / "out" / "hdf5").glob("*.h5"))
    assert shards and all(mode_of(p) == 0o666 & ~umask for p in shards)


def test_png_plot_gets_the_umasks_mode(umask, tmp_path):
    import numpy as np

    from hear_ced.timeline import Timeline, plot_timelines

    line = Timeline(np.array([0.0, 1.0]), np.array([1.0, 2.0]), np.full((2, 3), 0.5))
    plot_timelines([("clip", line)], ["a", "b", "c"], tmp_path / "t.png", top=2)
    assert mode_of(tmp_path / "t.png") == 0o666 & ~umask


@pytest.fixture(scope="module")
def tiny_ced():
    import torch

    from hear_ced.model import CED, CEDConfig

    torch.manual_seed(0)
    return CED(CEDConfig(embed_dim=32, depth=1, num_heads=1)).eval()


def test_a_refusal_speaks_the_commands_terms(tmp_path):
    """Keys as the user spells them, a hint when its key alone differs, the command's advice."""
    plan = {"epochs": 1, "lr": 0.1, "model": "a" * 64}
    claim_folder(tmp_path, plan)
    terms = {"spell": lambda key: f"--{key}", "hints": {"epochs": "more is another run"},
             "advice": "use another --out"}  # fmt: skip
    with pytest.raises(FolderClaimed) as longer:
        claim_folder(tmp_path, {**plan, "epochs": 2}, **terms)
    assert str(longer.value).endswith(
        "(--epochs: 1 stored, 2 wanted); more is another run; use another --out"
    )
    with pytest.raises(FolderClaimed) as both:
        claim_folder(tmp_path, {**plan, "epochs": 2, "model": "b" * 64}, **terms)
    assert "--model: aaaaaaaaaaaa stored, bbbbbbbbbbbb wanted" in str(both.value)  # sha256-long
    assert "another run" not in str(both.value)
