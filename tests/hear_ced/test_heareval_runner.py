"""The plain user line: python -m heareval.embeddings.runner hear_ced.mini."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hear_ced.eval.make_tasks import make_tasks


@pytest.mark.slow
def test_runner_embeds_scene_and_event_tasks(tmp_path, published_weights):
    tasks = tmp_path / "tasks"
    make_tasks(tasks, tasks=["synth_scene_multiclass", "synth_event"], sample_rates=[16000])
    # hear_ced.mini finds audiotransformer_mini_mAP_4896.pt in the folder.
    env = {**os.environ, "HEAR_CED_WEIGHTS": str(published_weights)}
    command = [sys.executable, "-m", "heareval.embeddings.runner", "hear_ced.mini"]
    command += ["--tasks-dir", str(tasks), "--embeddings-dir", str(tmp_path / "emb")]
    done = subprocess.run(
        command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = tmp_path / "emb" / "hear_ced.mini"
    scene = out / "synth_scene_multiclass"
    assert (scene / ".done.embeddings").exists()
    first = np.load(sorted(scene.glob("*/*.embedding.npy"))[0])
    assert first.shape == (256,) and np.isfinite(first).all()
    event = out / "synth_event"
    emb_file = sorted(event.glob("*/*.embedding.npy"))[0]
    embeddings = np.load(emb_file)
    timestamps = json.loads(
        Path(str(emb_file).replace(".embedding.npy", ".timestamps.json")).read_text()
    )
    assert embeddings.shape == (len(timestamps), 256)
    assert np.allclose(np.diff(timestamps), 50.0) and max(timestamps) <= 3000.0
