"""``make bench-gpu``: the CPU smoke run measures every figure, a batch that does not fit is
halved, a size that does not fit at batch 1 is refused; the report never shows smoke figures."""

import dataclasses
import json

import pytest
import torch
from click.testing import CliRunner

from bench import gpu
from bench.report import _gpu_bench


@pytest.fixture(scope="module")
def smoke():
    return gpu.run(gpu.SMOKE_PLAN, device="cpu")


@pytest.mark.slow
def test_smoke_run_measures_every_figure(smoke):
    result = json.loads(json.dumps(smoke))  # well-formed JSON
    assert result["smoke"] is True and result["device"] == "cpu" and result["torch"]
    for key in ("train", "save_logits", "hear"):
        assert [row["model"] for row in result[key]] == ["tiny"]
        for row in result[key]:
            assert row["clips_per_s"] > 0 and row["peak_memory_mb"] > 0
            assert row["batch"] == 2 and "halved_from" not in row


def test_a_batch_that_does_not_fit_is_halved_and_the_halving_recorded():
    tried = []

    def measure(batch: int) -> float:
        tried.append(batch)
        if batch > 2:
            raise torch.OutOfMemoryError(f"batch {batch}")
        return 10.0 * batch

    plan = dataclasses.replace(gpu.SMOKE_PLAN, batch=8)
    row = gpu.fitting("tiny", measure, plan, torch.device("cpu"))
    assert tried == [8, 4, 2]
    assert row["batch"] == 2 and row["halved_from"] == 8 and row["clips_per_s"] == 20.0


@pytest.mark.slow
def test_report_never_publishes_smoke_figures(smoke):
    section = "\n".join(_gpu_bench(smoke))
    assert "Not measured: no GPU" in section and "smoke" in section
    assert "clips / s" not in section  # no GPU table
    assert "Not measured: no GPU." in "\n".join(_gpu_bench(None))
    halved = dict(smoke["train"][0], batch=1, halved_from=2)
    measured = dict(smoke, smoke=False, device="NVIDIA H200", train=[halved])
    table = "\n".join(_gpu_bench(measured))
    assert "Device: NVIDIA H200" in table and "| training | tiny | 1 (halved from 2) |" in table


def test_a_size_that_does_not_fit_at_batch_1_is_an_error(tmp_path, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("out of memory")

    monkeypatch.setattr(gpu.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu, "train_rate", out_of_memory)
    args = ["--out", str(tmp_path), "--report", str(tmp_path / "B.md")]
    result = CliRunner().invoke(gpu.main, args)
    assert result.exit_code == 1
    assert "Error: tiny does not fit in memory even at batch 1" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_make_bench_keeps_the_gpu_figures(tmp_path, monkeypatch):
    from bench import report, run

    (tmp_path / "results.json").write_text(
        json.dumps({"gpu_bench": {"smoke": True}, "measured_at": {"gpu_bench": "then"}, "old": 1})
    )
    monkeypatch.setattr(run, "sections", lambda quick, models, mn10_src: {"pipeline": dict})
    monkeypatch.setattr(report, "write_report", lambda results, path: path.write_text("report"))
    args = ["--out", str(tmp_path), "--report", str(tmp_path / "B.md")]
    assert CliRunner().invoke(run.main, args).exit_code == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["gpu_bench"] == {"smoke": True} and "old" not in results
    assert results["measured_at"]["gpu_bench"] == "then" and "pipeline" in results["measured_at"]
