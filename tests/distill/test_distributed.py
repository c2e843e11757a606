"""Each torchrun process on its own GPU; launches that do not fit the machine are refused."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

import hear_ced.distill.distributed as distributed
import hear_ced.distill.extract as extract
from hear_ced.distill.cli import main
from hear_ced.distill.distributed import device_for_rank
from hear_ced.distill.extract import SaveLogitsConfig, save_logits
from tests.distill.corpus_helpers import prepared_corpus, random_teacher


def _gpus(monkeypatch, gpus: int) -> None:
    """A node with ``gpus`` (pretend) GPUs."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)


@pytest.mark.parametrize("rank", [0, 1, 2, 3])
def test_each_process_gets_the_gpu_of_its_local_rank(rank, monkeypatch):
    _gpus(monkeypatch, 4)
    assert device_for_rank("cuda", rank, 4) == torch.device("cuda", rank)


@pytest.mark.parametrize(
    ("requested", "rank", "local_world", "gpus", "expected"),
    [
        ("cpu", 3, 4, 8, torch.device("cpu")),
        ("auto", 0, 1, 0, torch.device("cpu")),
        ("auto", 1, 2, 2, torch.device("cuda", 1)),
        ("cuda", 0, 1, 2, torch.device("cuda", 0)),
        ("cuda:1", 0, 1, 2, torch.device("cuda", 1)),
    ],
)
def test_device_choice(requested, rank, local_world, gpus, expected, monkeypatch):
    _gpus(monkeypatch, gpus)
    assert device_for_rank(requested, rank, local_world) == expected


@pytest.mark.parametrize(
    ("requested", "rank", "local_world", "gpus", "message"),
    [
        ("cuda", 0, 4, 2, "4 processes on this node but only 2 GPU"),
        ("cuda", 3, 4, 2, "4 processes on this node but only 2 GPU"),
        ("cuda", 0, 1, 0, "no CUDA device here"),
        ("cuda", 0, 2, 0, "no CUDA device here"),
        ("cuda:1", 0, 2, 2, "names one GPU for 2 processes"),
        ("cuda:2", 0, 1, 2, "this machine has cuda:0 .. cuda:1"),
    ],
)
def test_launches_that_do_not_fit_are_refused(
    requested, rank, local_world, gpus, message, monkeypatch
):
    _gpus(monkeypatch, gpus)
    with pytest.raises(ValueError, match=message):
        device_for_rank(requested, rank, local_world)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    train_tsv, _ = prepared_corpus(root, 4, 2, 1.0)
    return train_tsv, random_teacher(root / "teacher.safetensors")


def _torchrun_env(monkeypatch, rank: int, world: int, gpus: int) -> list:
    """torchrun's variables on a node with ``gpus`` (pretend) GPUs; records set-up calls."""
    for name, value in (("WORLD_SIZE", world), ("LOCAL_WORLD_SIZE", world), ("LOCAL_RANK", rank)):
        monkeypatch.setenv(name, str(value))
    monkeypatch.setenv("RANK", str(rank))
    _gpus(monkeypatch, gpus)
    calls: list = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))
    monkeypatch.setattr(
        distributed.dist, "init_process_group", lambda backend: calls.append(("init", backend))
    )
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: rank)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: world)
    return calls


class _Stop(Exception):
    pass


def test_save_logits_binds_each_rank_to_its_own_gpu_with_nccl(setup, tmp_path, monkeypatch):
    train_tsv, teacher = setup
    calls = _torchrun_env(monkeypatch, rank=1, world=2, gpus=2)

    def load_teachers(paths, device):
        calls.append(("teachers", device))
        raise _Stop  # no CUDA here: stop before any tensor would move

    monkeypatch.setattr(extract.TeacherEnsemble, "from_paths", load_teachers)
    cfg = SaveLogitsConfig([str(teacher)], str(train_tsv), str(tmp_path / "out"), device="cuda")
    with pytest.raises(_Stop):
        save_logits(cfg, progress=False)
    cuda1 = torch.device("cuda", 1)
    assert calls == [("set_device", cuda1), ("init", "nccl"), ("teachers", cuda1)]


def test_more_ranks_than_gpus_is_a_clear_error_before_any_work(setup, tmp_path, monkeypatch):
    train_tsv, teacher = setup
    calls = _torchrun_env(monkeypatch, rank=0, world=4, gpus=2)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        [
            "save-logits",
            "--teacher",
            str(teacher),
            "--train-tsv",
            str(train_tsv),
            "--out",
            str(out),
            "--device",
            "cuda",
        ],
    )
    assert result.exit_code != 0
    assert "Error: torchrun started 4 processes on this node but only 2 GPU(s)" in result.output
    assert "Traceback" not in result.output
    assert calls == [] and not out.exists()
