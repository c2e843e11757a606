import json
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

import hear_ced.distill.logits as logits
from hear_ced.checkpoints import save_model
from hear_ced.common.config import from_dict, to_plain
from hear_ced.common.files import file_sha256
from hear_ced.distill.augment import AugmentConfig, epoch_seeds
from hear_ced.distill.data import AudioStore, prepare
from hear_ced.distill.extract import SaveLogitsConfig, save_logits, teacher_probs, verify_logits
from hear_ced.distill.logits import LogitStore, LogitStoreMismatch
from hear_ced.distill.synth import SYNTH_CLASSES, synthesize
from hear_ced.distill.teachers import TeacherEnsemble
from hear_ced.distill.views import AugmentedClips, load_rows
from hear_ced.model import CED, CEDConfig
from hear_ced.tagging import pass_probabilities

TINY = CEDConfig(embed_dim=32, depth=1, num_heads=2, num_classes=len(SYNTH_CLASSES))
AUGMENT = AugmentConfig(mixup=True, time_mask_width=30, freq_mask_width=12)


def _teacher(path, seed):
    torch.manual_seed(seed)
    model = CED(TINY)
    # Spread the outputs so the top-K is decided by clear margins.
    torch.nn.init.normal_(model.outputlayer[1].weight, std=0.5)
    return save_model(model, path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract")
    corpus = synthesize(root / "corpus", 8, 0, clip_seconds=2.0, seed=3)
    labels = prepare(corpus / "train.tsv", root / "prepared", progress=False).labels_tsv
    teachers = [str(_teacher(root / f"teacher{i}.safetensors", i)) for i in range(2)]
    cfg = SaveLogitsConfig(
        teachers=teachers,
        train_tsv=str(labels),
        out_dir=str(root / "reference"),
        k=5,
        epochs=2,
        augment=AUGMENT,
        batch_size=4,
        clip_seconds=1.0,
        block_rows=4,
    )
    result = save_logits(cfg, progress=False)
    return root, cfg, result


def _arrays(directory):
    store = LogitStore(directory)
    rows = np.arange(store.header.n_rows)
    return [store.read(epoch, rows) for epoch in range(store.num_epochs)]


def test_save_logits_stores_the_ensemble_top_k(setup):
    _, cfg, result = setup
    assert result.n_rows == 16 and result.epochs == 2 and result.computed_rows == 32
    assert 0 < result.bytes_per_sample_epoch < result.total_bytes / (result.n_rows * result.epochs)
    store = LogitStore(cfg.out_dir)
    assert store.header.k == 5 and store.header.augment == to_plain(AUGMENT)
    assert [t["sha256"] for t in store.header.teachers] == [file_sha256(p) for p in cfg.teachers]
    ensemble = TeacherEnsemble.from_paths(cfg.teachers)
    rows = load_rows(cfg.train_tsv, 1.0, 1.0)
    for epoch in range(2):
        seeds = epoch_seeds(0, epoch, 16)
        assert np.array_equal(store.seeds(epoch), seeds)
        values, indexes, _ = store.read(epoch, np.arange(16))
        assert (np.diff(values.astype(np.float32), axis=1) <= 0).all()
        clips = AugmentedClips(rows, AudioStore(), seeds, AUGMENT, 16000)
        items = [clips[i] for i in (2, 11)]
        wave = torch.from_numpy(np.stack([item["wave"] for item in items]))
        probs = teacher_probs(
            ensemble, wave, torch.tensor([item["seed"] for item in items]), AUGMENT
        )
        top = probs.topk(5)
        assert np.array_equal(top.indices.numpy(), indexes[[2, 11]])
        assert np.allclose(top.values.numpy(), values[[2, 11]], atol=1e-3)


def test_verify_passes_on_good_logits_and_fails_on_tampered_ones(setup, tmp_path):
    root, cfg, _ = setup
    report = verify_logits(cfg.out_dir, n_rows=12, seed=1)
    assert report.ok and report.checked == 12 and report.mismatches == []
    assert report.max_value_error < 1e-3
    for dataset, change in (
        ("topk_values", lambda a: a * 0.9),
        ("topk_indexes", lambda a: (a + 1) % len(SYNTH_CLASSES)),
        ("seeds", lambda a: a + 1),
    ):
        tampered = tmp_path / dataset
        shutil.copytree(cfg.out_dir, tampered)
        with h5py.File(tampered / "epoch_001_rank_000.h5", "r+") as handle:
            handle[dataset][:] = change(handle[dataset][:])
        report = verify_logits(tampered, n_rows=32, seed=1)
        assert not report.ok and report.mismatches, dataset
        assert all("epoch 1" in m for m in report.mismatches)
    other = root / "other_teacher.safetensors"
    _teacher(other, 7)
    report = verify_logits(cfg.out_dir, n_rows=4, teachers=[cfg.teachers[0], str(other)])
    assert not report.ok and "not the file the logits were made with" in report.mismatches[0]


def test_rerun_with_other_settings_is_refused(setup):
    _, cfg, _ = setup
    for change in (
        {"k": 3},
        {"augment": AugmentConfig(time_mask_width=20)},
        {"clip_seconds": 0.75},
    ):
        other = SaveLogitsConfig(**{**cfg.__dict__, **change})
        with pytest.raises(LogitStoreMismatch):
            save_logits(other, progress=False)


def test_a_store_is_claimed_through_claim_folder(setup, tmp_path, monkeypatch):
    """Another K is refused by name; runtime settings and moved teachers are a resume."""
    root, cfg, _ = setup
    out = tmp_path / "store"
    shutil.copytree(cfg.out_dir, out)
    claims = []
    claim = logits.claim_folder
    monkeypatch.setattr(
        logits, "claim_folder", lambda *a, **k: claims.append(a[2]) or claim(*a, **k)
    )
    with pytest.raises(LogitStoreMismatch, match=r"other settings \(k: 5 stored, 3 wanted\)"):
        save_logits(SaveLogitsConfig(**{**cfg.__dict__, "out_dir": str(out), "k": 3}), False)
    moved = [shutil.copy(t, tmp_path / f"moved{i}.safetensors") for i, t in enumerate(cfg.teachers)]
    runtime = {"batch_size": 3, "num_workers": 1, "teachers": [str(t) for t in moved]}
    again = save_logits(SaveLogitsConfig(**{**cfg.__dict__, "out_dir": str(out), **runtime}), False)
    assert again.computed_rows == 0 and claims == ["header.json"] * 2
    assert [t["path"] for t in LogitStore(out).header.teachers] == runtime["teachers"]


def test_the_header_names_the_classes_of_the_corpus(setup):
    _, cfg, _ = setup  # prepare copied the corpus's class_labels_indices.csv beside the list
    assert LogitStore(cfg.out_dir).header.labels == SYNTH_CLASSES


def test_more_epochs_extend_a_store_and_fewer_are_refused(setup, tmp_path):
    _, cfg, _ = setup
    out = tmp_path / "grown"
    shutil.copytree(cfg.out_dir, out)
    stored = {p.name: p.read_bytes() for p in out.glob("epoch_*.h5")}
    grown = save_logits(SaveLogitsConfig(**{**cfg.__dict__, "out_dir": str(out), "epochs": 3}))
    assert grown.epochs == 3 and grown.computed_rows == 16  # only the new epoch
    store = LogitStore(out)
    assert store.num_epochs == 3 and store.complete_epochs() == [0, 1, 2]
    assert {p.name: p.read_bytes() for p in out.glob("epoch_00[01]_*.h5")} == stored
    assert (store.seeds(2) == epoch_seeds(cfg.run_seed, 2, 16)).all()
    assert verify_logits(out, n_rows=48, seed=0).ok
    with pytest.raises(LogitStoreMismatch, match=r"holds 3 epochs; --epochs 2 asks for fewer"):
        save_logits(SaveLogitsConfig(**{**cfg.__dict__, "out_dir": str(out)}))


def test_restart_replaces_a_store_of_other_settings(setup, tmp_path):
    _, cfg, _ = setup
    out = tmp_path / "restarted"
    shutil.copytree(cfg.out_dir, out)
    other = SaveLogitsConfig(**{**cfg.__dict__, "out_dir": str(out), "k": 3})
    with pytest.raises(LogitStoreMismatch, match="choose another --out, or pass --restart"):
        save_logits(other, progress=False)
    result = save_logits(other, progress=False, restart=True)
    assert result.computed_rows == 32 and LogitStore(out).header.k == 3


def test_cli_refuses_a_time_mask_wider_than_half_the_clip(setup, tmp_path):
    from click.testing import CliRunner

    from hear_ced.distill.cli import main

    _, cfg, _ = setup
    args = ["save-logits", "--teacher", cfg.teachers[0], "--train-tsv", cfg.train_tsv]
    args += ["--out", str(tmp_path / "o"), "--seconds", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "--time-mask-width" in result.output and "--seconds" in result.output
    assert "use at most 50" in result.output


def test_resumed_run_equals_an_uninterrupted_one(setup, tmp_path, monkeypatch):
    _, cfg, _ = setup
    out = tmp_path / "resumed"
    resumed_cfg = SaveLogitsConfig(**{**cfg.__dict__, "out_dir": str(out)})
    real_write = logits.EpochWriter.write_block
    written = {"n": 0}

    def dying_write(self, *args):
        if written["n"] == 5:  # one epoch file and one block of the next
            raise RuntimeError("killed")
        written["n"] += 1
        real_write(self, *args)

    monkeypatch.setattr(logits.EpochWriter, "write_block", dying_write)
    with pytest.raises(RuntimeError, match="killed"):
        save_logits(resumed_cfg, progress=False)
    assert (out / "epoch_000_rank_000.h5").is_file()
    assert len(list((out / "parts" / "epoch_001_rank_000").glob("*.npz"))) == 1
    monkeypatch.setattr(logits.EpochWriter, "write_block", real_write)
    result = save_logits(resumed_cfg, progress=False)
    assert result.computed_rows == 16 - 4
    for mine, reference in zip(_arrays(out), _arrays(cfg.out_dir), strict=True):
        for a, b in zip(mine, reference, strict=True):
            assert np.array_equal(a, b)


_TORCHRUN_SCRIPT = """
import json, sys
from hear_ced.common.config import from_dict
from hear_ced.distill.extract import SaveLogitsConfig, save_logits
save_logits(from_dict(SaveLogitsConfig, json.loads(sys.argv[1])), progress=False)
"""


@pytest.mark.slow
def test_two_process_torchrun_matches_one_process(setup, tmp_path):
    _, cfg, _ = setup
    script = tmp_path / "run.py"
    script.write_text(_TORCHRUN_SCRIPT)
    out = tmp_path / "sharded"
    values = {**cfg.__dict__, "out_dir": str(out), "augment": to_plain(AUGMENT)}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
    ]
    command += [str(script), json.dumps(values)]
    subprocess.run(command, check=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    store = LogitStore(out)
    assert store.header.world_size == 2
    assert sorted(p.name for p in out.glob("epoch_*.h5")) == [
        f"epoch_{e:03d}_rank_{r:03d}.h5" for e in range(2) for r in range(2)
    ]
    with h5py.File(out / "epoch_000_rank_001.h5", "r") as handle:
        assert handle["seeds"].shape == (8,)
    for sharded, single in zip(_arrays(out), _arrays(cfg.out_dir), strict=True):
        assert np.array_equal(sharded[2], single[2])
        assert np.array_equal(sharded[1], single[1])
        assert np.allclose(sharded[0].astype(np.float32), single[0].astype(np.float32), atol=1e-3)
    assert verify_logits(out, n_rows=8).ok


def test_teacher_ensemble_is_the_mean_of_the_teachers_probabilities(setup):
    _, cfg, _ = setup
    ensemble = TeacherEnsemble.from_paths(cfg.teachers)
    assert [t["sha256"] for t in ensemble.identities] == [file_sha256(p) for p in cfg.teachers]
    mel = ensemble.mel(torch.randn(3, 16000) * 0.1)
    expected = sum(pass_probabilities(m, mel) for m in ensemble.models) / 2
    assert torch.allclose(ensemble.probs(mel), expected)
    with pytest.raises(ValueError, match="disagree on the number of classes"):
        TeacherEnsemble(
            [CED(TINY), CED(CEDConfig(embed_dim=32, depth=1, num_heads=2, num_classes=5))]
        )


def _stored_rows(out) -> int:
    """Rows already on disk: finished epoch files plus finished blocks."""
    header = logits.read_header(out)
    finished = {p.stem for p in out.glob("epoch_*_rank_*.h5")}
    blocks = [p for p in out.glob("parts/*/block_*.npz") if p.parent.name not in finished]
    return len(finished) * header.n_rows + len(blocks) * header.block_rows


@pytest.mark.slow
def test_sigkill_mid_run_loses_nothing_finished(setup, tmp_path):
    _, cfg, _ = setup
    out = tmp_path / "killed"
    values = {**cfg.__dict__, "out_dir": str(out), "augment": to_plain(AUGMENT)}
    values.update(block_rows=1, batch_size=1)
    script = tmp_path / "run.py"
    script.write_text(_TORCHRUN_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, str(script), json.dumps(values)], env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        if (out / "parts").is_dir() and len(list(out.glob("parts/*/block_*.npz"))) >= 3:
            break
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    before = _stored_rows(out)
    assert 3 <= before < 32
    result = save_logits(from_dict(SaveLogitsConfig, values), progress=False)
    assert result.computed_rows == 32 - before
    for resumed, reference in zip(_arrays(out), _arrays(cfg.out_dir), strict=True):
        assert np.array_equal(resumed[2], reference[2])
        assert np.array_equal(resumed[1], reference[1])
        assert np.allclose(
            resumed[0].astype(np.float32), reference[0].astype(np.float32), atol=1e-3
        )
    assert not (out / "parts").exists()
