"""Benchmark helpers: the MobileNet peer matches its published size, timing bookkeeping, report."""

import torch

from bench.common import Timing, interleaved, paired_ratio
from bench.mobilenet import N_FRAMES, N_MELS, mn10
from bench.models import count_macs, param_count
from bench.report import render


def test_mn10_stand_in_matches_published_size():
    model = mn10()
    macs = count_macs(model, torch.zeros(1, 1, N_MELS, N_FRAMES))
    assert abs(param_count(model) - 4.88e6) / 4.88e6 < 0.01
    assert abs(macs - 0.54e9) / 0.54e9 < 0.02
    assert model(torch.zeros(2, 1, N_MELS, N_FRAMES)).shape == (2, 527)


def test_interleaved_times_every_callable_each_round():
    calls = {"a": 0, "b": 0}

    def bump(name):
        calls[name] += 1

    timings = interleaved({n: (lambda n=n: bump(n)) for n in calls}, budget_s=0.0)
    assert {t.repeats for t in timings.values()} == {3}
    assert calls == {"a": 4, "b": 4}  # one warm-up round + three timed rounds
    assert all(len(t.times) == 3 for t in timings.values())


def test_paired_ratio_is_median_of_per_round_ratios():
    slow = Timing(0.0, 0.0, 3, (2.0, 9.0, 3.0))
    fast = Timing(0.0, 0.0, 3, (1.0, 3.0, 3.0))
    assert paired_ratio(slow, fast) == 2.0


def test_report_renders_partial_results():
    machine = {
        "date_utc": "2026-01-01 00:00 UTC",
        "cpu_model": "test cpu",
        "vendor": "x",
        "nproc": 2,
        "l3_cache": "",
        "mem_total_gb": 1.0,
        "cpu_flags": [],
        "cpu_capability": "DEFAULT",
        "torch": "2",
        "python": "3",
        "cuda_device": None,
    }
    storage = {
        "paper_bytes_k20": 84,
        "num_classes": 527,
        "rows": [
            {
                "k": 20,
                "n_rows": 10,
                "raw_bytes_per_row": 84,
                "plain_bytes_per_row": 50.0,
                "plain_read_rows_per_s": 1e6,
                "compact_bytes_per_row": 55.0,
                "compact_decode_rows_per_s": 1e5,
                "compact_lossless": True,
            }
        ],
    }
    text = render({"machine": machine, "storage": storage})
    assert "| 20 | 10 | 84 | 50.0 | 55.0 |" in text
    assert "## inference" in text and "Not measured in this run." in text


def test_device_rates_run_on_cpu_and_render():
    """The GPU measurement code, exercised on the CPU with a tiny model."""
    from bench.pipeline import device_train_rate, extraction_rate
    from bench.report import _gpu_pipeline

    sizes = dict(embed_dim=32, depth=1, num_heads=2)
    train = device_train_rate("tiny", batch=2, steps=1, device="cpu", **sizes)
    rate = extraction_rate("tiny", batch=2, batches=1, device="cpu", **sizes)
    extract = {"model": "tiny", "batch": 2, "samples_per_s": rate}
    assert train["samples_per_s"] > 0 and train["tflops"] > 0 and rate > 0
    empty = "\n".join(_gpu_pipeline({"device": None, "train": [], "extract": []}))
    assert "No GPU was available" in empty
    filled = {
        "device": "X",
        "bf16_matmul_tflops": 2 * train["tflops"],
        "train": [train],
        "extract": [extract],
    }
    text = "\n".join(_gpu_pipeline(filled))
    assert "| student training | tiny | 2 |" in text and "| 0.50 |" in text
