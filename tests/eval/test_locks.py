"""Locks of a run folder: kernel locks on local disks, lock files on network file systems."""

import os
import signal
import subprocess
import sys
from dataclasses import replace

import pytest
from filelock import FileLock, SoftFileLock, Timeout

from hear_ced.common.files import write_json
from hear_ced.eval.hear_run import identity
from hear_ced.eval.hear_run.identity import (
    LOCAL_FILE_SYSTEMS,
    claim_run,
    file_system_type,
    holder,
    lock_kind,
    restart,
    run_identity,
    run_lock,
)
from hear_ced.eval.hear_run.schedule import run_hear
from hear_ced.eval.hear_run.settings import RunError, RunSettings

MOUNTS = """\
22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
40 22 0:40 / /shared rw,relatime - nfs4 server:/export rw,vers=4.2
41 40 0:41 / /shared/my\\040runs rw - fuse.sshfs me@host:/runs rw
42 22 0:42 / /scratch rw - ext4 /dev/sdb1 rw
43 22 0:43 / /scratch rw - lustre 10.0.0.1@tcp:/fs rw,localflock
"""


def test_the_file_system_of_a_path_is_read_from_the_mount_table(tmp_path):
    table = tmp_path / "mountinfo"
    table.write_text(MOUNTS)
    assert file_system_type(tmp_path / "x" / "y", table) in ("ext4", None)  # not under a mount
    assert file_system_type(tmp_path.parent / "nope", table) in ("ext4", None)
    kinds = {}
    for path in ("/home/me/run", "/shared/run", "/shared/my runs/a", "/scratch/run", "/shared"):
        kinds[path] = file_system_type(type(tmp_path)(path), table)
    assert kinds == {"/home/me/run": "ext4", "/shared/run": "nfs4", "/shared/my runs/a":
                     "fuse.sshfs", "/scratch/run": "lustre", "/shared": "nfs4"}  # fmt: skip
    assert file_system_type(tmp_path) in LOCAL_FILE_SYSTEMS  # this machine's temporary folder


def test_auto_takes_kernel_locks_on_a_local_disk_and_lock_files_elsewhere(tmp_path, monkeypatch):
    assert lock_kind(tmp_path / "local", "auto") == "flock"
    monkeypatch.setattr(identity, "file_system_type", lambda path: "nfs4")
    assert lock_kind(tmp_path / "nfs", "auto") == "file"
    assert (tmp_path / "nfs" / "locks" / "kind").read_text() == "file\n"
    assert lock_kind(tmp_path / "local", "auto") == "flock"  # as recorded by its first run
    assert sorted(p.name for p in (tmp_path / "nfs" / "locks").iterdir()) == ["kind"]


def test_a_kind_other_than_the_folders_is_refused(tmp_path):
    assert lock_kind(tmp_path, "file") == "file"
    assert lock_kind(tmp_path, "auto") == "file"
    with pytest.raises(RunError, match=r"lock with --lock file .*--lock flock would not exclude"):
        lock_kind(tmp_path, "flock")


# filelock alone (importing the project takes seconds): the lock of run_lock's file and class
HOLD = """
import sys, time
import filelock
lock = getattr(filelock, sys.argv[2])(sys.argv[1])
lock.acquire()
print("held", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("kind", ["file", "flock"])
def test_a_lock_excludes_other_processes_and_kill_9_frees_it(tmp_path, kind):
    """The promise behind resuming: a killed holder's task can be taken over at once."""
    lock = run_lock(tmp_path, kind, "scene_a")
    process = subprocess.Popen([sys.executable, "-c", HOLD, lock.lock_file, type(lock).__name__],
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert process.stdout.readline() == "held\n"
        with pytest.raises(Timeout):
            lock.acquire(timeout=0)
        if kind == "file":
            assert holder(lock) == f"pid {process.pid} on this host"
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        if kind == "file":
            assert (tmp_path / "locks" / "scene_a.softlock").exists()  # left behind
        lock.acquire(timeout=5)  # a dead owner on this host: taken over
        lock.release()
    finally:
        process.kill()
        process.wait()


def _foreign(path, pid=4242, host="node-elsewhere"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{pid}\n{host}\n")  # what filelock's lock file records of its owner


def test_a_lock_from_another_host_is_refused_naming_the_fix(tmp_path, monkeypatch):
    settings = RunSettings(module="hearbaseline", model=None, tasks_dir=tmp_path,
                           out=tmp_path / "run", lock="file")  # fmt: skip
    _foreign(settings.out / "locks" / "run.softlock")
    monkeypatch.setattr(identity, "RUN_LOCK_SECONDS", 0.2)
    with pytest.raises(RunError) as refused:
        claim_run(settings, run_identity(settings))
    path = settings.out / "locks" / "run.softlock"
    assert str(refused.value) == (
        f"{settings.out}: run.json is locked for over 0 s (pid 4242 on node-elsewhere; "
        f"if that process is gone: rm {path})"
    )
    path.unlink()  # what the message says to do
    claim_run(settings, run_identity(settings))
    assert (settings.out / "run.json").exists()


def _left_by_a_killed_process(out, name):
    """A lock file whose owner died without releasing it (as after kill -9)."""
    path = run_lock(out, "file", name).lock_file
    leave = (
        f"import os, filelock; lock = filelock.SoftFileLock({path!r}); lock.acquire(); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", leave], check=True)
    assert (out / "locks" / f"{name}.softlock").exists()


def test_restart_refuses_while_a_lock_file_is_held_anywhere(tmp_path):
    out = tmp_path / "run"
    (out / "results").mkdir(parents=True)
    _foreign(out / "locks" / "synth_event.softlock")
    with pytest.raises(RunError, match=r"works on synth_event \(pid 4242 on node-elsewhere; if"):
        restart(out, "file")
    assert (out / "results").exists()
    (out / "locks" / "synth_event.softlock").unlink()
    _left_by_a_killed_process(out, "synth_event")
    restart(out, "file")  # a dead process of this host: its lock is taken over
    assert not (out / "results").exists()


def test_kernel_locks_and_lock_files_are_different_files(tmp_path):
    """A leftover kernel-lock file must not read as a held lock file (or the other way)."""
    flock, file = run_lock(tmp_path, "flock", "t"), run_lock(tmp_path, "file", "t")
    assert isinstance(flock, FileLock) and isinstance(file, SoftFileLock)
    with flock:
        pass
    assert (tmp_path / "locks" / "t.lock").exists()
    file.acquire(timeout=0)
    file.release()
    assert holder(flock) is None  # a kernel lock does not say who holds it


def test_a_run_on_a_network_folder_locks_with_lock_files(tmp_path, monkeypatch):
    monkeypatch.setattr(identity, "file_system_type", lambda path: "lustre")
    (tmp_path / "tasks" / "a").mkdir(parents=True)
    settings = RunSettings(module="hearbaseline", model=None, tasks_dir=tmp_path / "tasks",
                           out=tmp_path / "run", probe="linear")  # fmt: skip
    write_json(settings.result_path("a"), {"task": "a", "status": "ok", "linear": {"score": 0.5}})
    run_hear(replace(settings))  # the task finished earlier: only the run's own locks are taken
    assert (settings.out / "locks" / "kind").read_text() == "file\n"
    assert sorted(p.name for p in (settings.out / "locks").iterdir()) == ["kind"]  # all released
    _left_by_a_killed_process(settings.out, "run")
    assert run_hear(replace(settings))[0]["status"] == "ok"  # its stale run lock taken over
