"""Benchmark helpers: timing bookkeeping, the interference guard, the report."""

import pytest

from bench.common import InterferenceGuard, Timing, interleaved, paired_ratio
from bench.report import _grid, _invalid_note, render


def test_interleaved_times_every_callable_each_round():
    calls = {"a": 0, "b": 0}

    def bump(name):
        calls[name] += 1

    timings = interleaved({n: (lambda n=n: bump(n)) for n in calls}, budget_s=0.0)
    assert calls == {"a": 4, "b": 4}  # one warm-up round + three timed rounds
    assert all(len(t.times) == 3 for t in timings.values())


def test_a_slow_first_call_does_not_cut_the_rounds_short():
    """One-time costs (first calls, kernel set-up) fall in the warm-up, not in the round count."""
    import time

    calls = []

    def slow_once():
        calls.append(1)
        if len(calls) == 1:
            time.sleep(0.3)

    timings = interleaved({"a": slow_once}, budget_s=0.2, max_rounds=15)
    assert len(timings["a"].times) == 15


def test_paired_ratio_is_median_of_per_round_ratios():
    slow = Timing((2.0, 9.0, 3.0))
    fast = Timing((1.0, 3.0, 3.0))
    assert paired_ratio(slow, fast) == 2.0


def _partial_results() -> dict:
    machine = {
        "date_utc": "2026-01-01 00:00 UTC",
        "cpu_model": "test cpu",
        "nproc": 2,
        "mem_total_gb": 1.0,
        "cpu_flags": [],
        "cpu_capability": "DEFAULT",
        "torch": "2",
        "python": "3",
        "cuda_device": None,
    }
    pipeline = {
        "threads": 1,
        "batch": 8,
        "train": [{"model": "tiny", "samples_per_s": 8.0}],
        "extract": [{"model": "tiny", "samples_per_s": 20.0}],
    }
    return {"machine": machine, "pipeline": pipeline}


def test_report_renders_partial_results():
    text = render(_partial_results())
    assert "| logit extraction | tiny | 20.00 |" in text
    assert "## inference" in text and "Not measured in this run." in text


def test_device_rates_run_on_cpu():
    """The training and extraction rates that ``make bench-gpu`` takes, on the CPU."""
    from bench.pipeline import extraction_rate, train_rate

    sizes = dict(embed_dim=32, depth=1, num_heads=2)
    assert train_rate("tiny", batch=2, steps=1, device="cpu", **sizes) > 0
    assert extraction_rate("tiny", batch=2, batches=1, device="cpu", **sizes) > 0


def _cell(matmul_s: float, model_s: float = 0.01) -> dict:
    """Fake timings of one cell: an fp32 matmul reference and one model."""
    return {
        "matmul:fp32": Timing((matmul_s,) * 3),
        "ced:fp32": Timing((model_s,) * 3),
    }


def _sequence(*cells):
    """A measurement returning the given fake timings, one per call, counting calls."""
    calls = []

    def measure():
        calls.append(1)
        return cells[len(calls) - 1]

    return measure, calls


def test_guard_keeps_undisturbed_cells_and_measures_each_once():
    guard = InterferenceGuard(attempts=3)
    a, calls_a = _sequence(_cell(0.010))
    b, calls_b = _sequence(_cell(0.011))  # 91 % of the best rate: not disturbed
    guard.measure("a", 1, a)
    guard.measure("b", 1, b)
    cells = guard.finish()
    assert len(calls_a) == len(calls_b) == 1
    assert cells["a"].valid and cells["b"].valid and cells["b"].attempts == 1


def test_guard_remeasures_disturbed_cell_and_keeps_the_clean_attempt():
    guard = InterferenceGuard(attempts=3)
    good, _ = _sequence(_cell(0.010))
    # First attempt: matmul 2x slower than the run's best (50 %); the retry is clean.
    noisy, calls = _sequence(_cell(0.020, model_s=0.09), _cell(0.0105, model_s=0.03))
    guard.measure("good", 1, good)
    guard.measure("noisy", 1, noisy)
    cells = guard.finish()
    assert len(calls) == 2
    assert cells["noisy"].valid and cells["noisy"].attempts == 2
    assert cells["noisy"].timings["ced:fp32"].median == 0.03


def test_guard_marks_cell_invalid_when_it_stays_disturbed():
    guard = InterferenceGuard(attempts=3)
    good, _ = _sequence(_cell(0.010))
    bad, calls = _sequence(_cell(0.05), _cell(0.04), _cell(0.03))
    guard.measure("good", 1, good)
    guard.measure("bad", 1, bad)
    cells = guard.finish()
    assert len(calls) == 3  # the first measurement and two more, then it gives up
    assert not cells["bad"].valid and cells["good"].valid
    # The least disturbed attempt is kept for the record.
    assert cells["bad"].references["fp32"] == pytest.approx(2 * 1024**3 / 0.03 / 1e9)


def test_guard_compares_only_within_a_group():
    """Two-thread references are not held to the one-thread best (groups = thread counts)."""
    guard = InterferenceGuard(attempts=2)
    one, _ = _sequence(_cell(0.010))
    two, calls = _sequence(_cell(0.030))
    guard.measure("one", 1, one)
    guard.measure("two", 2, two)
    cells = guard.finish()
    assert len(calls) == 1 and cells["two"].valid


def test_guard_judges_early_cells_by_the_final_best():
    """A cell measured before a faster reference appeared is re-measured at the end."""
    guard = InterferenceGuard(attempts=2)
    early, calls = _sequence(_cell(0.020), _cell(0.020))
    late, _ = _sequence(_cell(0.010))
    guard.measure("early", 1, early)
    guard.measure("late", 1, late)
    cells = guard.finish()
    assert len(calls) == 2 and not cells["early"].valid


def test_an_invalid_cell_says_how_disturbed_it_was():
    cell = {"attempts": 3, "valid": False, "matmul_gflops": {"fp32": 20.0}}
    cell["run_best_matmul_gflops"] = {"fp32": 100.0}
    note = _invalid_note(cell)
    assert "measured 3 times" in note and "20%" in note


def test_grid_sets_each_rows_batches_side_by_side_and_marks_invalid_cells():
    def row(batch, ms, valid=True, model="tiny"):
        return {"cell": "tiny", "model": model, "mode": "fp32", "threads": 1, "batch": batch,
                "ms_per_clip": ms, "ratio_to_matmul": 0.5, "matmul_precision": "fp32",
                "time_ratio_to_peer": {"fp32": 0.7}, "valid": valid}  # fmt: skip

    def reference(batch, gflops, valid=True):
        return {"model": "tiny", "threads": 1, "batch": batch, "valid": valid, "attempts": 3,
                "matmul_gflops": {"fp32": gflops}, "run_best_matmul_gflops": {"fp32": 100.0}}  # fmt: skip

    inference = {
        "peer": {"name": "EfficientAT MN10 (commit a425fdc)"},
        "rows": [row(1, 40.0), row(8, 30.0, valid=False), row(1, 57.0, model="mn10")],
        "matmul_gflops": [reference(1, 100.0), reference(8, 20.0, valid=False)],
    }
    text = "\n".join(_grid(inference, 1))
    assert "| tiny | fp32 | 40.0 | 0.50 (fp32) | 0.70 | invalid |  |  |" in text
    assert "*tiny, batch 8*: invalid (measured 3 times)" in text
    assert "(tiny cell): batch 1: fp32 100.0; batch 8: fp32 20.0" in text
    # Without MN10 (no EfficientAT checkout) the grid has no MN10 column.
    alone = {**inference, "peer": None, "rows": inference["rows"][:2]}
    text = "\n".join(_grid(alone, 1))
    assert "| tiny | fp32 | 40.0 | 0.50 (fp32) | invalid |  |" in text
    assert "MN10" not in text


@pytest.mark.parametrize(
    ("flags", "capability", "isa", "expected"),
    [
        ({"avx2", "fma"}, "AVX2", "", "AVX2 without VNNI"),
        ({"avx2", "avx_vnni"}, "AVX2", "", "AVX2 with VNNI"),
        ({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}, "AVX512", "", "AVX512 with BF16/VNNI"),
        ({"avx512f", "amx_bf16", "amx_int8"}, "AVX512", "", "AMX"),
        # ATEN_CPU_CAPABILITY=avx2 and ONEDNN_MAX_CPU_ISA=AVX2 on a Zen 4
        ({"avx512f", "avx512_bf16", "avx_vnni"}, "AVX2", "AVX2", "AVX2 without VNNI"),
    ],
)
def test_cpu_class_names_what_the_kernels_may_use(flags, capability, isa, expected):
    from bench.common import cpu_class

    assert cpu_class(frozenset(flags), capability, isa) == expected


def _inference_results(peer: bool = True) -> dict:
    """A headline cell: CED-Tiny fp32 and int8 beside MN10 at 1 and 2 threads."""
    rows = []
    for n, (fp32, int8, mn10) in {1: (50.0, 30.0, 45.0), 2: (30.0, 20.0, 40.0)}.items():
        cell = dict(cell="tiny", threads=n, batch=1, valid=True)
        for mode, ms in (("fp32", fp32), ("int8", int8)):
            ratio = {"fp32": ms / mn10} if peer else {}
            rows.append({**cell, "model": "tiny", "mode": mode, "ms_per_clip": ms,
                         "time_ratio_to_peer": ratio})  # fmt: skip
        if peer:
            rows.append({**cell, "model": "mn10", "mode": "fp32", "ms_per_clip": mn10})
    accuracy = {"tiny": {"fp32": {"max_abs_prob_diff": 1e-7}, "int8": {"max_abs_prob_diff": 2e-3}}}
    return {"rows": rows, "accuracy": accuracy, "auto_mode": "int8",
            "peer": {"name": "EfficientAT MN10"} if peer else None}  # fmt: skip


def test_headline_per_cpu_class_with_goals_and_unmeasured_classes():
    from bench.inference import headline

    machine = {"date_utc": "2026-01-01 00:00 UTC", "cpu_model": "test cpu", "cpu_flags": ["avx2"],
               "cpu_capability": "AVX2", "torch": "2", "emulation": {}}  # fmt: skip
    entry = headline(_inference_results(), machine)
    assert entry["mn10_ms"] == {"1": 45.0, "2": 40.0} and entry["auto"] == "int8"
    text = render({}, {"AVX2 without VNNI": entry})
    assert "| int8 | 30.0 | 0.67 | 20.0 | 0.50 | 2.0e-03 | yes |" in text
    # 0.67 of MN10 at one thread against the goal 0.6; 0.50 at two against 0.5
    assert (
        "best accurate path `int8`, 30.0 ms, 0.67 of MN10's time (goal at most 0.6: not met)"
        in text
    )
    assert "(goal at most 0.5: met)" in text
    assert "chose `int8`: +0% against `int8`" in text
    section = text.split("### AVX512 with BF16/VNNI")[1].split("###")[0]
    assert "Not measured" in section


def test_headline_without_mn10_has_no_ratio_and_no_verdict():
    from bench.inference import headline

    machine = {"date_utc": "d", "cpu_model": "c", "cpu_flags": [], "cpu_capability": "AVX2"}
    text = render({}, {"AVX2 without VNNI": headline(_inference_results(peer=False), machine)})
    assert "| fp32 | 50.0 |  | 30.0 |  |" in text and "not timed in that run" in text
    assert "goal" not in text.split("### AVX2 without VNNI")[1].split("###")[0]
