"""The HEAR 2021 API: shapes, timestamps, bad input, long clips, determinism."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import hear_ced.custom
import hear_ced.hear
import hear_ced.mini
from hear_ced.checkpoints import CheckpointError, save_model
from hear_ced.hear import CEDEmbedder, interpolate
from hear_ced.model import CED, CEDConfig, build_model
from hear_ced.xares import CEDEncoder

from .layouts import randomize_batchnorm


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = randomize_batchnorm(CED(CEDConfig(embed_dim=64, depth=2, num_heads=2)))
    return save_model(model, tmp_path_factory.mktemp("ckpt") / "small.safetensors")


@pytest.fixture(scope="module")
def embedder(small_ckpt):
    return hear_ced.custom.load_model(str(small_ckpt))


def test_attributes(embedder):
    assert embedder.sample_rate == 16000
    assert embedder.scene_embedding_size == embedder.timestamp_embedding_size == 64


@pytest.mark.parametrize("seconds", [0.05, 0.5, 3.74, 12.3])
def test_shapes_and_timestamps(embedder, seconds):
    audio = torch.rand(3, int(seconds * 16000)) * 2 - 1
    scene = hear_ced.custom.get_scene_embeddings(audio, embedder)
    assert scene.shape == (3, 64) and scene.dtype == torch.float32
    emb, ts = hear_ced.custom.get_timestamp_embeddings(audio, embedder)
    assert emb.shape[:2] == ts.shape and emb.shape[0] == 3 and emb.shape[2] == 64
    assert emb.dtype == ts.dtype == torch.float32
    assert ts[0, 0] == 0.0
    assert ts.max() <= 1000 * seconds + 1e-3
    steps = torch.diff(ts, dim=1)
    if steps.numel():
        assert torch.allclose(steps, torch.full_like(steps, 50.0))
    assert torch.isfinite(emb).all() and torch.isfinite(scene).all()


def test_clip_alone_equals_clip_in_batch(embedder):
    torch.manual_seed(1)
    batch = torch.randn(4, 40_000) * torch.tensor([[0.01], [0.5], [0.1], [0.9]])
    scene = hear_ced.custom.get_scene_embeddings(batch, embedder)
    emb, _ = hear_ced.custom.get_timestamp_embeddings(batch, embedder)
    for i in range(4):
        alone = batch[i : i + 1]
        assert torch.equal(hear_ced.custom.get_scene_embeddings(alone, embedder), scene[i : i + 1])
        assert torch.equal(
            hear_ced.custom.get_timestamp_embeddings(alone, embedder)[0], emb[i : i + 1]
        )


# Embeds the clips of an .npy file in a fresh interpreter.
# argv: checkpoint, audio .npy, output .npz, torch threads, torch seed.
_EMBED_IN_A_NEW_PROCESS = """
import sys
import numpy as np
import torch
import hear_ced.custom

checkpoint, audio_path, out_path, threads, seed = sys.argv[1:]
torch.set_num_threads(int(threads))
torch.manual_seed(int(seed))
embedder = hear_ced.custom.load_model(checkpoint)
audio = torch.from_numpy(np.load(audio_path))
scene = hear_ced.custom.get_scene_embeddings(audio, embedder)
emb, ts = hear_ced.custom.get_timestamp_embeddings(audio, embedder)
np.savez(out_path, scene=scene.numpy(), emb=emb.numpy(), ts=ts.numpy())
"""


def test_deterministic_across_runs(small_ckpt, tmp_path):
    """Another process (fresh interpreter, other RNG state) gives bit-identical embeddings."""
    rng = np.random.default_rng(0)
    # One clip longer than a single pass (1012 frames), so chunking runs too.
    audio = (rng.standard_normal((2, 12 * 16000)) * 0.2).astype(np.float32)
    audio[1, 30_000:] = 0.0
    np.save(tmp_path / "audio.npy", audio)
    command = [sys.executable, "-c", _EMBED_IN_A_NEW_PROCESS, str(small_ckpt)]
    command += [str(tmp_path / "audio.npy"), str(tmp_path / "other.npz")]
    command += [str(torch.get_num_threads()), "12345"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    other_process = subprocess.Popen(command, env=env)
    # Meanwhile this process, after other work and with its own RNG state, embeds the same.
    torch.manual_seed(1)
    embedder = hear_ced.custom.load_model(str(small_ckpt))
    hear_ced.custom.get_scene_embeddings(torch.rand(3, 20_000) - 0.5, embedder)
    clips = torch.from_numpy(audio)
    here = {"scene": hear_ced.custom.get_scene_embeddings(clips, embedder)}
    here["emb"], here["ts"] = hear_ced.custom.get_timestamp_embeddings(clips, embedder)
    assert other_process.wait(timeout=300) == 0
    other = np.load(tmp_path / "other.npz")
    for key, value in here.items():
        assert other[key].shape == value.shape, key
        assert np.array_equal(other[key], value.numpy()), key
    assert not np.array_equal(other["scene"][0], other["scene"][1])  # not a constant output


def test_scene_is_token_mean(embedder):
    audio = torch.randn(2, 50_000) * 0.2
    with torch.no_grad():
        tokens = embedder.model.tokens(embedder.model.mel(audio))
    expected = tokens.mean(dim=(1, 2))
    torch.testing.assert_close(hear_ced.custom.get_scene_embeddings(audio, embedder), expected)


def test_timestamps_follow_the_sound(embedder):
    """A burst in the second half changes only the later timestamp embeddings."""
    torch.manual_seed(2)
    quiet = torch.randn(1, 64_000) * 0.01
    burst = quiet.clone()
    burst[0, 40_000:48_000] += torch.sin(torch.arange(8000) * 0.3) * 0.8
    a, ts = hear_ced.custom.get_timestamp_embeddings(quiet, embedder)
    b, _ = hear_ced.custom.get_timestamp_embeddings(burst, embedder)
    change = (a - b).norm(dim=-1)[0]
    inside = (ts[0] >= 2500) & (ts[0] <= 3000)
    before = ts[0] <= 1000
    assert change[inside].mean() > 5 * change[before].mean()


def test_interpolation_hits_centres_and_midpoints():
    vectors = torch.tensor([[[0.0], [10.0], [20.0]]])
    centres = torch.tensor([75.0, 235.0, 395.0], dtype=torch.float64)
    times = torch.tensor([0.0, 75.0, 155.0, 395.0, 500.0], dtype=torch.float64)
    out = interpolate(vectors, centres, times)[0, :, 0]
    assert out.tolist() == [0.0, 0.0, 5.0, 20.0, 20.0]


@pytest.mark.parametrize("passes", [1, 2, 4])
def test_passes_refine_the_grid(small_ckpt, passes):
    model = hear_ced.custom.load_model(str(small_ckpt)).model
    emb = CEDEmbedder(model, passes=passes)
    audio = torch.randn(1, 32_000) * 0.1
    with torch.no_grad():
        mel = model.mel(audio)
        centres = torch.cat([emb.time_tokens(mel, p * 16 // passes)[1] for p in range(passes)])
    spacing = torch.diff(torch.sort(centres).values)
    assert torch.allclose(spacing, torch.full_like(spacing, 160.0 / passes))


def test_two_minute_clip_runs_in_chunks(embedder):
    audio = torch.randn(1, 120 * 16000) * 0.1
    scene = hear_ced.custom.get_scene_embeddings(audio, embedder)
    emb, ts = hear_ced.custom.get_timestamp_embeddings(audio, embedder)
    assert scene.shape == (1, 64)
    assert emb.shape == (1, 2401, 64) and ts[0, -1] == 120_000.0


@pytest.mark.parametrize(
    "audio,error,match",
    [
        (torch.zeros(16000), ValueError, r"\(n_sounds, n_samples\)"),
        (torch.zeros(1, 1, 16000), ValueError, r"\(n_sounds, n_samples\)"),
        (torch.zeros(1, 16000, dtype=torch.int16), TypeError, "int16: divide by 32768"),
        (torch.zeros(1, 0), ValueError, "empty"),
        (torch.tensor([[0.0, float("nan")] * 4000]), ValueError, "NaN"),
        (torch.tensor([[0.0, float("inf")] * 4000]), ValueError, "Inf"),
        ([[0.0] * 100], TypeError, "torch.Tensor"),
    ],
)
def test_bad_input_is_refused(embedder, audio, error, match):
    with pytest.raises(error, match=match):
        hear_ced.custom.get_scene_embeddings(audio, embedder)
    with pytest.raises(error, match=match):
        hear_ced.custom.get_timestamp_embeddings(audio, embedder)


@pytest.mark.parametrize("module", [hear_ced.hear, hear_ced.custom])
@pytest.mark.parametrize("n_samples", [1000, 16_000, 200_000])
def test_empty_batch(embedder, module, n_samples):
    """No sounds: empty float32 outputs on the model's device, T as a clip of n_samples gets."""
    scene = module.get_scene_embeddings(torch.zeros(0, n_samples), embedder)
    emb, ts = module.get_timestamp_embeddings(torch.zeros(0, n_samples), embedder)
    count = module.get_timestamp_embeddings(torch.zeros(1, n_samples), embedder)[1].shape[1]
    assert scene.shape == (0, 64) and emb.shape == (0, count, 64) and ts.shape == (0, count)
    assert scene.dtype == emb.dtype == ts.dtype == torch.float32
    assert scene.device == emb.device == ts.device == next(embedder.parameters()).device


def test_xares_encoder_empty_batch(small_ckpt):
    encoder = CEDEncoder(variant=None, model_file_path=str(small_ckpt), passes=2)
    frames = encoder(torch.zeros(0, 50_000))
    assert frames.shape == (0, encoder.frame_count(50_000), 64)
    assert frames.dtype == torch.float32


def test_float64_and_numpy_are_converted(embedder):
    audio = np.random.default_rng(0).standard_normal((2, 20_000)) * 0.1
    as_f32 = hear_ced.custom.get_scene_embeddings(
        torch.tensor(audio, dtype=torch.float32), embedder
    )
    assert torch.equal(hear_ced.custom.get_scene_embeddings(torch.tensor(audio), embedder), as_f32)
    assert torch.equal(
        hear_ced.custom.get_scene_embeddings(audio.astype(np.float32), embedder), as_f32
    )


def test_sized_module_refuses_other_size(tmp_path, small_ckpt):
    with pytest.raises(CheckpointError, match="not the requested CED-mini"):
        hear_ced.mini.load_model(str(small_ckpt))


def test_sized_module_loads_its_size(tmp_path):
    path = save_model(build_model("mini"), tmp_path / "mini.safetensors")
    model = hear_ced.mini.load_model(str(path))
    assert model.scene_embedding_size == 256


def test_custom_needs_a_file():
    with pytest.raises(ValueError, match="model_file_path"):
        hear_ced.custom.load_model()


def test_fast_path_option_stays_close(small_ckpt):
    audio = torch.randn(2, 32_000) * 0.2
    exact = hear_ced.custom.get_scene_embeddings(audio, hear_ced.custom.load_model(str(small_ckpt)))
    fast_model = hear_ced.custom.load_model(str(small_ckpt), fast="int8")
    fast = hear_ced.custom.get_scene_embeddings(audio, fast_model)
    assert torch.nn.functional.cosine_similarity(exact, fast).min() > 0.999
    from hear_ced.fast import native_bf16

    if not native_bf16():  # no silent emulation behind the HEAR option either
        with pytest.raises(ValueError, match="bf16 needs native bf16"):
            hear_ced.custom.load_model(str(small_ckpt), fast="bf16")
    with pytest.raises(ValueError, match="unknown inference mode"):
        hear_ced.custom.load_model(str(small_ckpt), fast="fp8")
