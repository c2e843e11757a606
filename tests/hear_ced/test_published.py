"""``load_model(published=True)``: the original CED HEAR wrapper's embeddings.

The reference below is written from the wrapper's description (REFERENCE.md
sections 1 and 7): its own STFT and dB floor over the whole tensor the front
end is handed (a clip alone for the scene, all of a clip's windows as one
batch for the timestamps), then the model's submodules; it shares no code
with ``hear_ced.published`` or ``hear_ced.frontend``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import librosa
import numpy as np
import pytest
import torch

import hear_ced.base
import hear_ced.custom
import hear_ced.hear
import hear_ced.mini
import hear_ced.small
import hear_ced.tiny
from hear_ced.checkpoints import save_model
from hear_ced.model import CED, CEDConfig

from .layouts import randomize_batchnorm

SAMPLE_RATE = 16_000
CHUNK_FRAMES = 1012
TOLERANCE = 2e-3  # max abs difference to the reference
# Samples giving exactly 2 x 1012 frames (1 + n // 160 frames): 20.23 s.
TWO_CHUNKS = (2 * CHUNK_FRAMES - 1) * 160
CLIP_SAMPLES = {
    "0.81 s": 12_960,
    "1 s": 16_000,
    "4 s": 64_000,
    "11.26 s": 180_160,
    "2 x 1012 frames": TWO_CHUNKS,
    "25 s": 400_000,
}
DEFAULT_FIXTURE = Path(__file__).parent / "data" / "default_embeddings.npz"


def make_model() -> CED:
    """A small random model whose every part matters to the output.

    The position embeddings are scaled up from their 0.02 init so that using
    the wrong time positions shows far above the tolerance.
    """
    torch.manual_seed(0)
    model = randomize_batchnorm(CED(CEDConfig(embed_dim=64, depth=2, num_heads=2)))
    with torch.no_grad():
        model.time_pos_embed.normal_(0.0, 0.5)
        model.freq_pos_embed.normal_(0.0, 0.5)
        model.norm.weight.normal_(1.0, 0.3)
        model.norm.bias.normal_(0.0, 0.3)
    return model.eval()


def make_clip(n_samples: int, seed: int) -> torch.Tensor:
    """Quiet noise, a loud tone and a stretch of digital silence: a wide dB range."""
    gen = torch.Generator().manual_seed(seed)
    clip = torch.randn(n_samples, generator=gen) * 1e-3
    t = torch.arange(n_samples) / SAMPLE_RATE
    loud = (t > 0.3 * t[-1]) & (t < 0.45 * t[-1])
    clip[loud] += 0.9 * torch.sin(2 * torch.pi * 440.0 * t[loud])
    clip[(t > 0.6 * t[-1]) & (t < 0.7 * t[-1])] = 0.0
    return clip


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The reference runs thousands of tiny ops, fastest (and steadiest under load) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> CED:
    return make_model()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, model) -> Path:
    return save_model(model, tmp_path_factory.mktemp("ckpt") / "small.safetensors")


@pytest.fixture(scope="module")
def published(checkpoint):
    return hear_ced.custom.load_model(str(checkpoint), published=True)


# --- the reference, written from the description ---------------------------------

MEL_FILTERS = torch.from_numpy(
    librosa.filters.mel(sr=16000, n_fft=512, n_mels=64, fmin=0, fmax=8000, htk=True, norm=None)
)


def ref_front_end(waves: torch.Tensor, shared_floor: bool = True) -> torch.Tensor:
    """(B, samples) -> (B, 64, frames) log-mel in dB (REFERENCE.md section 1).

    ``shared_floor``: the floor is 120 dB below the maximum of the whole tensor
    handed over, as the original front end takes it; otherwise each item's own.
    """
    spec = torch.stft(
        waves,
        n_fft=512,
        hop_length=160,
        window=torch.hann_window(512, periodic=True),
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )
    db = 10.0 * torch.log10(torch.clamp(MEL_FILTERS @ spec.abs() ** 2, min=1e-10))
    peak = db.max() if shared_floor else db.amax(dim=(1, 2), keepdim=True)
    return torch.maximum(db, peak - 120.0)


def ref_tokens(model: CED, features: torch.Tensor) -> torch.Tensor:
    """(B, 64, frames) normalised features -> (B, tokens, D) final-norm tokens."""
    x = model.patch_embed.proj(features.unsqueeze(1))  # (B, D, 4, T)
    t = x.shape[-1]
    x = x + model.time_pos_embed[..., :t] + model.freq_pos_embed
    x = x.flatten(2).transpose(1, 2)  # frequency-major tokens
    for block in model.blocks:
        x = block(x)
    return model.norm(x)


@torch.no_grad()
def ref_scene(model: CED, clip: torch.Tensor) -> torch.Tensor:
    """The clip alone through the front end; chunks as section 7 describes."""
    features = model.init_bn(ref_front_end(clip[None]))[0]
    n = features.shape[-1]
    if n <= CHUNK_FRAMES:
        chunks = [features]
    else:
        chunks = []
        start = 0
        while start + CHUNK_FRAMES <= n:
            chunks.append(features[:, start : start + CHUNK_FRAMES])
            start += CHUNK_FRAMES
        if start == n:  # an exact multiple: the last full chunk is dropped
            chunks.pop()
        else:  # the short rest, zero-padded after the BatchNorm
            last = torch.zeros(features.shape[0], CHUNK_FRAMES)
            last[:, : n - start] = features[:, start:]
            chunks.append(last)
    tokens = ref_tokens(model, torch.stack(chunks))
    assert tokens.shape[1] == (4 * 63 if n > CHUNK_FRAMES else 4 * (n // 16))
    return tokens.mean(dim=(0, 1))


@torch.no_grad()
def ref_timestamps(
    model: CED, clip: torch.Tensor, shared_floor: bool = True
) -> tuple[torch.Tensor, list]:
    """One vector per 50 ms timestamp: all the clip's windows through the model as ONE batch.

    ``shared_floor=False`` is the per-window floor the implementation had before.
    """
    padded = torch.cat([torch.zeros(3838), clip, torch.zeros(3839)])
    count = len(clip) // 800 + 1
    windows = torch.stack([padded[k * 800 : k * 800 + 7677] for k in range(count)])
    assert windows.shape == (count, 7677)
    features = ref_front_end(windows, shared_floor)
    assert features.shape == (count, 64, 48)
    tokens = ref_tokens(model, model.init_bn(features))
    assert tokens.shape[1] == 12
    return tokens.mean(dim=1), [50.0 * k for k in range(count)]


@pytest.fixture(scope="module")
def compared(model, published) -> dict[str, dict]:
    """Per clip length: the published path's outputs and the references'."""
    out = {}
    for name, n_samples in CLIP_SAMPLES.items():
        clip = make_clip(n_samples, seed=n_samples)
        emb, ts = hear_ced.custom.get_timestamp_embeddings(clip[None], published)
        vectors, times = ref_timestamps(model, clip)
        out[name] = {
            "clip": clip,
            "scene": hear_ced.custom.get_scene_embeddings(clip[None], published),
            "emb": emb,
            "ts": ts,
            "ref_scene": ref_scene(model, clip),
            "ref_emb": vectors,
            "ref_ts": times,
            "per_window_emb": ref_timestamps(model, clip, shared_floor=False)[0],
        }
    return out


# --- the tests ---------------------------------------------------------------------


def test_two_chunk_length_is_an_exact_multiple(model):
    assert model.mel(torch.zeros(1, TWO_CHUNKS)).shape[-1] == 2 * CHUNK_FRAMES


@pytest.mark.parametrize("name", list(CLIP_SAMPLES))
def test_matches_the_reference(compared, name):
    c = compared[name]
    count = CLIP_SAMPLES[name] // 800 + 1
    assert c["scene"].shape == (1, 64) and c["scene"].dtype == torch.float32
    assert c["emb"].shape == (1, count, 64) and c["emb"].dtype == c["ts"].dtype == torch.float32
    assert (c["scene"][0] - c["ref_scene"]).abs().max() < TOLERANCE
    assert (c["emb"][0] - c["ref_emb"]).abs().max() < TOLERANCE
    assert c["ts"][0].tolist() == c["ref_ts"]


def test_windows_share_one_floor_per_clip(compared):
    """A floor per window is a different method, and the published path is not it.

    The zero padding at a clip's ends is floored at the clip's peak minus
    120 dB under one shared floor, but stays at the 1e-10 clamp when a quiet
    edge window takes its own floor.
    """
    shared_vs_per_window = {
        name: (c["ref_emb"] - c["per_window_emb"]).abs().max().item()
        for name, c in compared.items()
    }
    assert max(shared_vs_per_window.values()) > 10 * TOLERANCE
    for name, c in compared.items():
        if shared_vs_per_window[name] > TOLERANCE:
            assert (c["emb"][0] - c["per_window_emb"]).abs().max() > TOLERANCE, name
    # The edges, where the padding is: the first window differs on every clip.
    for name, c in compared.items():
        assert (c["ref_emb"][0] - c["per_window_emb"][0]).abs().max() > TOLERANCE, name


@pytest.mark.parametrize("window_batch", [1, 7, 256])
def test_window_groups_give_the_same_vectors(checkpoint, published, window_batch):
    """Groups of any size, also across clip boundaries, keep each clip's own floor."""
    batch = torch.stack([make_clip(12_960, 8), 0.01 * make_clip(12_960, 9)])  # 17 windows each
    grouped = hear_ced.custom.load_model(str(checkpoint), published=True, window_batch=window_batch)
    emb, ts = hear_ced.custom.get_timestamp_embeddings(batch, grouped)
    expected, expected_ts = hear_ced.custom.get_timestamp_embeddings(batch, published)
    torch.testing.assert_close(emb, expected, rtol=0, atol=1e-5)
    assert torch.equal(ts, expected_ts)
    alone, _ = hear_ced.custom.get_timestamp_embeddings(batch[1:], grouped)
    torch.testing.assert_close(alone, expected[1:], rtol=0, atol=1e-5)


def test_batches_give_what_clips_alone_give(checkpoint, published):
    """Per-clip floors: batch mates of another loudness change nothing."""
    batch = torch.stack([make_clip(40_000, 1), 1e-3 * make_clip(40_000, 2)])
    scene = hear_ced.custom.get_scene_embeddings(batch, published)
    emb, ts = hear_ced.custom.get_timestamp_embeddings(batch, published)
    few = hear_ced.custom.load_model(str(checkpoint), published=True, window_batch=7, batch_size=1)
    for i in range(2):
        alone = batch[i : i + 1]
        torch.testing.assert_close(
            hear_ced.custom.get_scene_embeddings(alone, few), scene[i : i + 1]
        )
        alone_emb, alone_ts = hear_ced.custom.get_timestamp_embeddings(alone, few)
        torch.testing.assert_close(alone_emb, emb[i : i + 1])
        assert torch.equal(alone_ts, ts[i : i + 1])


def test_long_clip_in_small_chunk_groups(checkpoint, published):
    clip = make_clip(int(35.2 * SAMPLE_RATE), 3)[None]  # 4 chunks, the last padded
    one_at_a_time = hear_ced.custom.load_model(str(checkpoint), published=True, chunks_per_pass=1)
    torch.testing.assert_close(
        hear_ced.custom.get_scene_embeddings(clip, one_at_a_time),
        hear_ced.custom.get_scene_embeddings(clip, published),
    )


def test_shorter_than_one_patch(published):
    clip = make_clip(1000, 4)[None]  # 62.5 ms
    scene = hear_ced.custom.get_scene_embeddings(clip, published)
    emb, ts = hear_ced.custom.get_timestamp_embeddings(clip, published)
    assert torch.isfinite(scene).all() and emb.shape == (1, 2, 64)
    assert ts[0].tolist() == [0.0, 50.0]


@pytest.mark.parametrize("module", [hear_ced.tiny, hear_ced.mini, hear_ced.small, hear_ced.base])
def test_every_module_takes_the_option(monkeypatch, model, module):
    # The sized modules load their default weights; stand a small model in for them.
    monkeypatch.setattr(hear_ced.hear, "resolve_weights", lambda variant: f"{variant}.pt")
    monkeypatch.setattr(hear_ced.hear, "load_model_file", lambda path, variant: model)
    default, like_published = module.load_model(), module.load_model(published=True)
    assert default.embedding_method == "default"
    assert like_published.embedding_method == "published"
    clip = make_clip(20_000, 5)[None]
    emb, ts = module.get_timestamp_embeddings(clip, like_published)
    assert ts[0].tolist() == [50.0 * k for k in range(26)]
    # Up to 10.11 s the scene methods agree; the timestamp methods never do.
    torch.testing.assert_close(
        module.get_scene_embeddings(clip, like_published),
        module.get_scene_embeddings(clip, default),
    )
    assert not torch.allclose(module.get_timestamp_embeddings(clip, default)[0], emb, atol=0.1)


@pytest.mark.parametrize(
    "options,match",
    [
        ({"foo": 1}, r"unknown option 'foo'; accepted: fast, published, hop_ms, passes"),
        ({"published": True, "passes": 2}, r"unknown option 'passes' with published=True"),
        ({"published": "yes"}, r"'published' must be true or false"),
    ],
)
def test_unknown_options_are_named(tmp_path, options, match):
    # Refused before the weights are looked for: the file does not exist.
    with pytest.raises(TypeError, match=match):
        hear_ced.custom.load_model(str(tmp_path / "missing.safetensors"), **options)


def test_bad_option_values(checkpoint):
    with pytest.raises(ValueError, match="window_batch must be a positive integer"):
        hear_ced.custom.load_model(str(checkpoint), published=True, window_batch=0)


def default_inputs() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return {
        "pair": torch.randn(2, 53_000, generator=gen) * torch.tensor([[0.3], [0.01]]),
        "long": torch.randn(1, 200_000, generator=gen) * 0.2,
        "short": torch.randn(1, 1_600, generator=gen) * 0.2,
    }


def test_default_method_is_unchanged(checkpoint):
    """Outputs equal those stored from the code before the option existed.

    ``data/default_embeddings.npz`` holds that code's scene and timestamp
    embeddings of ``default_inputs()`` under ``make_model()`` (every 5th
    timestamp of the long clip, to keep the file small).
    """
    stored = np.load(DEFAULT_FIXTURE)
    embedder = hear_ced.custom.load_model(str(checkpoint))
    explicit = hear_ced.custom.load_model(str(checkpoint), published=False)
    assert embedder.embedding_method == explicit.embedding_method == "default"
    for name, audio in default_inputs().items():
        scene = hear_ced.custom.get_scene_embeddings(audio, embedder)
        emb, ts = hear_ced.custom.get_timestamp_embeddings(audio, embedder)
        assert torch.equal(scene, hear_ced.custom.get_scene_embeddings(audio, explicit))
        if name == "long":
            emb, ts = emb[:, ::5], ts[:, ::5]
        np.testing.assert_allclose(scene.numpy(), stored[f"{name}_scene"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(emb.numpy(), stored[f"{name}_timestamp"], rtol=0, atol=1e-6)
        np.testing.assert_array_equal(ts.numpy(), stored[f"{name}_times"])


def test_default_method_is_bit_identical_to_the_per_clip_floor(checkpoint):
    """The default method's features are exactly the per-clip floor, computed here directly.

    Its embeddings are, bit for bit, its token grid of these features: the
    floor the published timestamps take over a clip's windows is not in this path.
    """
    embedder = hear_ced.custom.load_model(str(checkpoint))
    model = embedder.model
    audio = default_inputs()["pair"]  # two loudnesses in one batch
    audio[:, 20_000:30_000] = 0.0  # digital silence, below each clip's floor
    power = model.front_end.power_mel(audio)
    db = 10.0 * torch.log10(torch.clamp(power, min=1e-10))
    direct = torch.maximum(db, db.amax(dim=(-2, -1), keepdim=True) - 120.0)
    assert (direct > db).any()  # the floor is at work
    with torch.no_grad():
        assert torch.equal(model.mel(audio), direct)
        scene = hear_ced.custom.get_scene_embeddings(audio, embedder)
        assert torch.equal(scene, embedder.time_tokens(direct, 0)[0].mean(dim=1))
        emb, ts = hear_ced.custom.get_timestamp_embeddings(audio, embedder)
        vectors, centres = embedder.token_grid(direct)
        assert torch.equal(emb, hear_ced.hear.interpolate(vectors, centres, ts[0].double()))


@pytest.mark.parametrize("n_samples", [1000, 16_000, 180_160])
def test_empty_batch(published, n_samples):
    """No sounds: empty outputs shaped as for a batch of clips of ``n_samples``."""
    none = torch.zeros(0, n_samples)
    scene = hear_ced.custom.get_scene_embeddings(none, published)
    emb, ts = hear_ced.custom.get_timestamp_embeddings(none, published)
    count = n_samples // 800 + 1
    assert scene.shape == (0, 64) and emb.shape == (0, count, 64) and ts.shape == (0, count)
    assert scene.dtype == emb.dtype == ts.dtype == torch.float32
    assert scene.device == emb.device == ts.device == next(published.parameters()).device


def test_hear_validator_passes(monkeypatch, checkpoint):
    from hearvalidator import validate  # imports TensorFlow: only where it runs

    monkeypatch.setattr(
        hear_ced.custom,
        "load_model",
        lambda path: hear_ced.hear.load(path, published=True),
    )
    checker = validate.ValidateModel("hear_ced.custom", str(checkpoint), device="cpu")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="We suggest a interval")  # hop > 50 ms
        checker()  # raises validate.ModelError on any failed check
    assert checker.model.embedding_method == "published"
