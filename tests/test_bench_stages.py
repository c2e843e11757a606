"""Where the time goes: every stage timed by forward hooks, the report."""

import pytest
import torch

from bench import stages
from bench.report import _profile
from hear_ced.fast import CpuFeatures, optimize_for_inference
from hear_ced.model import CED, CEDConfig


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return CED(CEDConfig(embed_dim=32, depth=2, num_heads=2)).eval()


def _check(table: dict) -> dict[str, float]:
    ms = {row["stage"]: row["ms"] for row in table["stages"]}
    assert list(ms) == list(stages.STAGES)
    assert sum(ms.values()) == pytest.approx(table["total_ms"])
    assert sum(row["share"] for row in table["stages"]) == pytest.approx(1.0)
    return ms


@pytest.mark.parametrize("mode", [None, "bf16", "int8"])
def test_every_stage_is_timed_and_no_hooks_are_left(model, mode):
    bf16_cpu = CpuFeatures("AVX512", frozenset({"avx512_bf16"}))  # emulated where not native
    net = model if mode is None else optimize_for_inference(model, mode, features=bf16_cpu)
    ms = _check(stages.breakdown(net))
    # Every stage, the rest included: no time is counted twice.
    for stage in stages.STAGES:
        assert ms[stage] > 0, stage
    hooked = [m for m in net.modules() if m._forward_hooks or m._forward_pre_hooks]
    assert hooked == []


def test_report_names_the_path_and_gives_the_stage_table():
    stages_table = {
        "calls": 10,
        "total_ms": 20.0,
        "stages": [{"stage": s, "ms": 20.0 / 6, "share": 1 / 6} for s in stages.STAGES],
    }
    cell = {"cell": "tiny", "threads": 1, "batch": 1, "valid": True}
    inf = {
        "profiles": [
            {"mode": "bf16+compile", "max_abs_prob_diff": 0.007, "stages": stages_table},
            {"mode": "int8", "max_abs_prob_diff": 0.03, "stages": stages_table},
        ],
        "matmul_gflops": [{"model": "tiny", "threads": 1, "batch": 1, "valid": True}],
        "rows": [
            {**cell, "model": "tiny", "mode": "bf16+compile", "ms_per_clip": 20.0,
             "time_ratio_to_peer": {"fp32": 0.5}},
            {**cell, "model": "mn10", "mode": "fp32", "ms_per_clip": 40.0},
        ],
    }  # fmt: skip
    text = "\n".join(_profile(inf))
    assert "`bf16+compile` is CED-Tiny's fastest accurate torch path" in text
    assert "| attention core | 3.33 | 17% |" in text and "its eager twin is timed" in text
    assert "`int8` is CED-Tiny's fastest torch path, 3.0e-02 from float32 (not accurate)" in text


def test_matmul_stages_are_set_against_the_matmul_of_their_precision(model):
    int8 = optimize_for_inference(model, "int8")
    rows = {r["stage"]: r for r in stages.breakdown(int8, model)["stages"]}
    assert rows["MLP GEMMs"]["precision"] == rows["attention GEMMs"]["precision"] == "int8"
    assert rows["attention core"]["precision"] == "fp32"
    assert all(rows[s]["of_matmul"] > 0 for s in ("patch embed", "MLP GEMMs", "attention core"))
    assert "of_matmul" not in rows["frontend"] and "of_matmul" not in rows["rest"]
    # fc1 + fc2 of 2 blocks: 2 x (2 x tokens x 32 x 128) x 2 operations; tokens of 10 s: 4 x 62
    assert rows["MLP GEMMs"]["gflops"] * rows["MLP GEMMs"]["ms"] * 1e6 == pytest.approx(
        2 * 2 * 2 * 248 * 32 * 128
    )
