"""``make bench-gpu``: the CPU smoke run measures every figure, halves a batch that does not fit
and refuses a size that does not fit at batch 1; the report never shows smoke figures."""

import dataclasses
import json
import math

import pytest
from click.testing import CliRunner

from bench import gpu
from bench.report import _gpu_bench

# One 10 s float32 clip is 0.61 MiB: a 1 MiB cap fits batch 1, not the smoke plan's batch 2.
ONE_CLIP_CAP_MB = 1.0


@pytest.fixture(scope="module")
def smoke():
    plan = dataclasses.replace(gpu.SMOKE_PLAN, memory_cap_mb=ONE_CLIP_CAP_MB, data_clips=8)
    return gpu.run(plan, device="cpu")


@pytest.mark.slow
def test_smoke_run_measures_every_figure(smoke):
    result = json.loads(json.dumps(smoke))  # well-formed JSON
    assert result["smoke"] is True and result["device"] == "cpu" and result["torch"]
    for key in ("train", "save_logits", "hear"):
        assert [row["model"] for row in result[key]] == ["tiny"]
        for row in result[key]:
            assert row["clips_per_s"] > 0 and row["peak_memory_mb"] > 0
            # Batch 2 exceeded the cap, so it was halved and the halving recorded.
            assert row["batch"] == 1 and row["halved_from"] == 2
    data = result["data_path"]
    assert data["clips"] == 8 and data["clips_per_s_per_worker"] > 0
    assert data["workers_for_target"] == math.ceil(gpu.FEED_TARGET / data["clips_per_s_per_worker"])
    assert len(data["load_average"]) == 3


@pytest.mark.slow
def test_report_never_publishes_smoke_figures(smoke):
    section = "\n".join(_gpu_bench(smoke))
    assert "Not measured: no GPU" in section and "smoke" in section
    assert "clips / s" not in section  # no GPU table
    assert "workers would feed 2,000 clips/s (computed" in section
    assert "Not measured: no GPU." in "\n".join(_gpu_bench(None))
    measured = dict(smoke, smoke=False, device="NVIDIA H200")
    table = "\n".join(_gpu_bench(measured))
    assert "Device: NVIDIA H200" in table and "| training | tiny | 1 (halved from 2) |" in table


def test_a_size_that_does_not_fit_at_batch_1_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu.torch.cuda, "is_available", lambda: False)
    args = ["--out", str(tmp_path), "--report", str(tmp_path / "B.md"), "--memory-cap-mb", "0.1"]
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
