"""The plain user line, python -m heareval.embeddings.runner hear_ced.<size>, with an option."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

import hear_ced.tiny
from hear_ced.eval.make_tasks import make_tasks


@pytest.mark.slow
def test_runner_embeds_scene_and_event_tasks(tmp_path, published_weights, monkeypatch):
    tasks = tmp_path / "tasks"
    make_tasks(tasks, tasks=["synth_scene_multiclass", "synth_event"], sample_rates=[16000])
    # hear_ced.tiny finds its published file name in the folder.
    monkeypatch.setenv("HEAR_CED_WEIGHTS", str(published_weights))
    command = [sys.executable, "-m", "heareval.embeddings.runner", "hear_ced.tiny"]
    command += ["--model-options", json.dumps({"published": True})]
    command += ["--tasks-dir", str(tasks), "--embeddings-dir", str(tmp_path / "emb")]
    done = subprocess.run(
        command, env=dict(os.environ), cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (out,) = (tmp_path / "emb").glob("hear_ced.tiny*published*")  # named after the options
    scene = out / "synth_scene_multiclass"
    assert (scene / ".done.embeddings").exists()
    first = np.load(sorted(scene.glob("*/*.embedding.npy"))[0])
    assert first.shape == (192,) and np.isfinite(first).all()

    emb_file = sorted((out / "synth_event").glob("*/*.embedding.npy"))[0]
    split, name = emb_file.parent.name, emb_file.name.removesuffix(".embedding.npy")
    audio, _ = sf.read(tasks / "synth_event" / "16000" / split / name, dtype="float32")
    expected, times = hear_ced.tiny.get_timestamp_embeddings(
        torch.from_numpy(audio)[None], hear_ced.tiny.load_model(published=True)
    )
    np.testing.assert_allclose(np.load(emb_file), expected[0].numpy(), rtol=0, atol=1e-5)
    timestamps = json.loads(emb_file.with_name(f"{name}.timestamps.json").read_text())
    assert timestamps == times[0].tolist()
    assert np.allclose(np.diff(timestamps), 50.0) and max(timestamps) <= 3000.0
