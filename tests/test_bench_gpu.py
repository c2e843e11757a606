"""``make bench-gpu``: a small plan on the CPU measures every figure, a batch that does not fit
is halved, a size that does not fit at batch 1 is refused, no CUDA device is refused."""

import json

import pytest
import torch
from click.testing import CliRunner

import bench.run
from bench import gpu
from bench.report import _gpu_bench

SMALL = gpu.Plan(
    students=("tiny",), teachers=("tiny",), hear_models=("tiny",), batch=2, steps=2, hear_batch=2
)


@pytest.fixture(scope="module")
def small():
    return gpu.run(SMALL, device="cpu")


@pytest.mark.slow
def test_a_small_plan_measures_every_figure(small):
    result = json.loads(json.dumps(small))  # well-formed JSON
    assert result["device"] == "cpu" and result["torch"]
    for key in ("train", "save_logits", "hear"):
        assert [row["model"] for row in result[key]] == ["tiny"]
        for row in result[key]:
            assert row["clips_per_s"] > 0 and row["batch"] == 2 and "halved_from" not in row


def test_a_batch_that_does_not_fit_is_halved_and_the_halving_recorded():
    tried = []

    def measure(batch: int) -> float:
        tried.append(batch)
        if batch > 2:
            raise torch.OutOfMemoryError(f"batch {batch}")
        return 10.0 * batch

    row = gpu.fitting("tiny", measure, 8, torch.device("cpu"))
    assert tried == [8, 4, 2]
    assert row["batch"] == 2 and row["halved_from"] == 8 and row["clips_per_s"] == 20.0


def test_report_shows_gpu_figures_and_the_halving():
    row = {"model": "tiny", "batch": 1, "halved_from": 2, "clips_per_s": 50.0}
    measured = {"device": "NVIDIA H200", "torch": "2", "plan": {"steps": 20}, "save_logits": []}
    measured.update(train=[{**row, "peak_memory_mb": 100.0}], hear=[])
    table = "\n".join(_gpu_bench(measured))
    assert "Device: NVIDIA H200" in table and "| training | tiny | 1 (halved from 2) |" in table


def test_a_size_that_does_not_fit_at_batch_1_is_an_error(tmp_path, monkeypatch):
    def out_of_memory(batch: int) -> float:
        raise torch.OutOfMemoryError("out of memory")

    def run(plan: gpu.Plan) -> dict:
        return {"train": [gpu.fitting("tiny", out_of_memory, plan.batch, torch.device("cpu"))]}

    monkeypatch.setattr(gpu.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu, "run", run)
    args = ["--out", str(tmp_path), "--report", str(tmp_path / "B.md")]
    result = CliRunner().invoke(gpu.main, args)
    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == "Error: tiny does not fit in memory even at batch 1"


def test_without_cuda_nothing_is_measured(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu.torch.cuda, "is_available", lambda: False)
    args = ["--out", str(tmp_path / "out"), "--report", str(tmp_path / "B.md")]
    result = CliRunner().invoke(gpu.main, args)
    assert result.exit_code == 1
    assert result.output == "Error: no CUDA device: make bench-gpu measures a GPU\n"
    assert not (tmp_path / "out").exists()


def test_make_bench_keeps_the_gpu_figures(tmp_path, monkeypatch):
    (tmp_path / "results.json").write_text(
        json.dumps({"gpu_bench": {"smoke": True}, "measured": {"gpu_bench": "then"}})
    )
    monkeypatch.setattr(bench.run, "sections", lambda quick, models, mn10_src: {"pipeline": dict})
    monkeypatch.setattr(bench.run, "render", lambda results, headlines: "report")
    args = ["--out", str(tmp_path), "--report", str(tmp_path / "B.md")]
    assert CliRunner().invoke(bench.run.main, args).exit_code == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["gpu_bench"] == {"smoke": True} and results["pipeline"] == {}
    assert results["measured"]["gpu_bench"] == "then" and "pipeline" in results["measured"]
