"""The synthetic tasks through ``ced-eval hear`` on a CUDA device (skipped without one)."""

import json

import pytest
import torch
from click.testing import CliRunner

from hear_ced.eval.cli import main

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_hear_runs_embeddings_and_mlp_on_the_gpu(synthetic_tasks, tiny_checkpoint, tmp_path):
    out = tmp_path / "run"
    done = CliRunner().invoke(
        main, ["hear", "--module", "hear_ced.custom", "--model", str(tiny_checkpoint),
               "--tasks-dir", str(synthetic_tasks), "--grid", "faster", "--grid-points", "1",
               "--out", str(out)],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    name = torch.cuda.get_device_name(0)
    run = json.loads((out / "run.json").read_text())
    assert run["provenance"]["device"] == f"cuda: {name}"
    for task in ("synth_scene_multiclass", "synth_scene_multilabel", "synth_event"):
        result = json.loads((out / "results" / f"{task}.json").read_text())
        assert result["status"] == "ok" and result["device"] == f"cuda: {name}"
        embed = out / "embeddings" / "hear_ced.custom" / task
        profile = json.loads((embed / "profile.embeddings.json").read_text())
        assert profile["gpu_device_name"] == name  # heareval's own record, past the pynvml shim
        predictions = json.loads((embed / "prediction-done.json").read_text())
        assert predictions["gpus"] == [0]  # heareval's MLP trained on the GPU
