"""``ced_common.files``: durable writes, JSON, run-folder claims and locks."""

import filelock
import pytest

from ced_common.files import (
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
    with pytest.raises(FolderClaimed, match=r"differs in seed\b") as refused:
        claim_folder(tmp_path, {**plan, "seed": 2})
    assert "epochs" not in str(refused.value) and "model" not in str(refused.value)
    assert read_json(tmp_path / "plan.json") == plan  # the refusal changed nothing


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
