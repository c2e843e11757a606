"""One folder, one run: weights by content, model options, package version, --restart."""

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner
from filelock import FileLock

from hear_ced.common.files import file_sha256 as sha256
from hear_ced.eval.cli import main
from hear_ced.eval.hear_run import identity
from hear_ced.eval.hear_run.identity import claim_run, restart, run_identity
from hear_ced.eval.hear_run.schedule import run_hear
from hear_ced.eval.hear_run.settings import RunError, RunSettings


def _settings(tmp_path, **changes) -> RunSettings:
    base = RunSettings(module="hearbaseline", model=None, tasks_dir=tmp_path, out=tmp_path / "run")
    return replace(base, **changes)


def test_default_weights_of_a_published_size_are_hashed(tmp_path, monkeypatch):
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "audiotransformer_mini_mAP_4896.pt").write_bytes(b"mini weights")
    expected = hashlib.sha256(b"mini weights").hexdigest()
    monkeypatch.setenv("HEAR_CED_WEIGHTS", str(folder))  # a folder: load_model finds the file
    assert run_identity(_settings(tmp_path, module="hear_ced.mini"))["weights_sha256"] == expected
    monkeypatch.setenv("HEAR_CED_WEIGHTS", str(folder / "audiotransformer_mini_mAP_4896.pt"))
    assert run_identity(_settings(tmp_path, module="hear_ced.mini"))["weights_sha256"] == expected
    assert run_identity(_settings(tmp_path))["weights_sha256"] is None  # built-in weights


def test_no_reachable_default_weights_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("HEAR_CED_WEIGHTS", raising=False)
    monkeypatch.setenv("HEAR_CED_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HEAR_CED_OFFLINE", "1")
    with pytest.raises(RunError, match="module hear_ced.tiny: no weights for CED-tiny") as error:
        run_identity(_settings(tmp_path, module="hear_ced.tiny"))
    assert "\n" not in str(error.value)


def test_a_folder_hash_follows_its_contents(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "model.safetensors").write_bytes(b"1")
    before = sha256(tmp_path / "a")
    (tmp_path / "a" / "model.safetensors").write_bytes(b"2")
    assert sha256(tmp_path / "a") != before


def test_weights_retrained_in_place_are_refused(synthetic_tasks, tmp_path):
    from hear_ced.checkpoints import save_model
    from hear_ced.model import build_model

    weights = tmp_path / "student.safetensors"
    save_model(build_model("tiny", embed_dim=32, depth=1, num_heads=2), weights)
    settings = _settings(tmp_path, module="hear_ced.custom", model=str(weights),
                         tasks_dir=synthetic_tasks)  # fmt: skip
    claim_run(settings, run_identity(settings))  # a run started with the first weights
    old = sha256(weights)
    save_model(build_model("tiny", embed_dim=32, depth=1, num_heads=2), weights)  # retrained
    with pytest.raises(
        RunError, match=f"weights_sha256: {old[:12]} stored, {sha256(weights)[:12]} wanted"
    ):
        run_hear(replace(settings))
    assert not (settings.out / "module.json").exists()  # refused before any work


def test_another_package_version_is_refused(tmp_path, monkeypatch):
    settings = _settings(tmp_path)
    claim_run(settings, run_identity(settings))
    monkeypatch.setattr(identity, "package_version", lambda: "9.9.9")
    with pytest.raises(RunError, match='package_version: "0.1.0" stored, "9.9.9" wanted'):
        claim_run(settings, run_identity(settings))


def test_the_run_is_claimed_through_claim_folder(tmp_path, monkeypatch):
    """Another grid is refused by name; another tasks folder is the same run, provenance kept."""
    claims = []
    claim = identity.claim_folder
    monkeypatch.setattr(
        identity, "claim_folder", lambda *a, **k: claims.append(a[2]) or claim(*a, **k)
    )
    settings = _settings(tmp_path)
    claim_run(settings, run_identity(settings))
    started = json.loads((settings.out / "run.json").read_text())["provenance"]
    faster = replace(settings, grid="fast")
    with pytest.raises(
        RunError,
        match='holds a run with other settings \\(grid: "default" stored, "fast" wanted\\)',
    ):
        claim_run(faster, run_identity(faster))
    moved = replace(settings, tasks_dir=tmp_path / "elsewhere")
    claim_run(moved, run_identity(moved))
    run = json.loads((settings.out / "run.json").read_text())
    assert run["tasks_dir"] == str(tmp_path / "elsewhere") and run["provenance"] == started
    assert claims == ["run.json"] * 3


def test_restart_deletes_only_the_runs_files_and_waits_for_no_one(tmp_path):
    out = tmp_path / "run"
    for folder in ("embeddings/m/task", "results", "logs"):
        (out / folder).mkdir(parents=True)
    (out / "run.json").write_text("{}")
    (out / "module.json").write_text("{}")
    (out / "results" / "task.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    (out / "locks").mkdir()
    held = FileLock(out / "locks" / "task.lock")
    with held, pytest.raises(RunError, match="another ced-eval run works on task"):
        restart(out, "flock")
    assert (out / "results" / "task.json").exists()
    restart(out, "flock")
    assert sorted(p.name for p in out.iterdir()) == ["locks", "notes.txt"]


@pytest.mark.slow
def test_model_options_reach_load_model_and_a_change_needs_restart(
    synthetic_tasks, tiny_checkpoint, tmp_path
):
    out = tmp_path / "run"
    command = ["hear", "--module", "hear_ced.custom", "--model", str(tiny_checkpoint),
               "--tasks-dir", str(synthetic_tasks), "--tasks", "synth_event",
               "--grid", "faster", "--grid-points", "1", "--probe", "linear", "--out", str(out)]  # fmt: skip
    done = CliRunner().invoke(main, [*command, "--model-options", '{"hop_ms": 25}'])
    assert done.exit_code == 0, done.output
    task = out / "embeddings" / "hear_ced.custom-hop-ms=25" / "synth_event"  # heareval's name
    timestamps = json.loads(next(task.glob("test/*.timestamps.json")).read_text())
    assert np.allclose(np.diff(timestamps), 25.0)  # the default is 50 ms
    run = json.loads((out / "run.json").read_text())
    assert run["model_options"] == {"hop_ms": 25} == run["provenance"]["model_options"]
    assert sorted(p.name for p in (out / "results").iterdir()) == ["synth_event.json"]
    refused = CliRunner().invoke(main, command)  # the default options now
    assert refused.exit_code == 1
    assert (
        "model_options.hop_ms: 25 stored, null wanted" in refused.output
        and "--restart" in refused.output
    )


def test_options_load_model_does_not_accept_stop_the_run_first(
    synthetic_tasks, tiny_checkpoint, tmp_path
):
    settings = _settings(tmp_path, module="hear_ced.custom", model=str(tiny_checkpoint),
                         tasks_dir=synthetic_tasks, model_options={"bogus": 1})  # fmt: skip
    with pytest.raises(RunError, match="does not accept the model options") as refused:
        run_hear(settings)
    message = str(refused.value)
    assert '{"bogus": 1}' in message and "unknown option 'bogus'" in message
    assert "\n" not in message and not (settings.out / "results").exists()
