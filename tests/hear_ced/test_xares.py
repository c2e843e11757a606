"""`hear_ced.xares.CEDEncoder` against the X-ARES encoder contract."""

import pytest
import torch
from torch import nn

import hear_ced.weights as weights
from hear_ced.checkpoints import save_model
from hear_ced.hear import get_timestamp_embeddings, load
from hear_ced.model import build_model
from hear_ced.xares import CEDEncoder


@pytest.mark.parametrize(("passes", "hop_ms"), [(1, 160.0), (2, 80.0), (4, 40.0)])
def test_contract_attributes_and_shape(small_checkpoint, passes, hop_ms):
    encoder = CEDEncoder(variant=None, model_file_path=small_checkpoint, passes=passes)
    assert isinstance(encoder, nn.Module) and type(encoder).__name__.endswith("Encoder")
    assert encoder.sampling_rate == 16000
    assert encoder.output_dim == 32
    assert encoder.hop_size_in_ms == hop_ms
    frames = encoder(torch.randn(2, 50000))  # what X-ARES's own check feeds
    assert frames.shape == (2, 50000 * 1000 // (16000 * hop_ms), 32)
    assert frames.dtype == torch.float32 and torch.isfinite(frames).all()


@pytest.mark.parametrize("n_samples", [100, 2559, 2560, 16000, 163_841])
def test_frame_count_follows_the_hop(small_checkpoint, n_samples):
    encoder = CEDEncoder(variant=None, model_file_path=small_checkpoint, passes=2)
    hop_samples = 16000 * encoder.hop_size_in_ms / 1000
    frames = encoder(torch.randn(1, n_samples) * 0.1)
    assert frames.shape[1] == max(1, int(n_samples // hop_samples))


def test_frames_sit_at_their_hop_centres(small_checkpoint):
    """Frame k is the token grid at (k + 0.5) * hop ms, as the HEAR timestamp embeddings."""
    encoder = CEDEncoder(variant=None, model_file_path=small_checkpoint, passes=4)  # 40 ms frames
    audio = torch.randn(2, 40000) * 0.1
    frames = encoder(audio)
    hear_model = load(small_checkpoint, passes=4, hop_ms=10.0)
    embeddings, timestamps = get_timestamp_embeddings(audio, hear_model)
    centres = ((torch.arange(frames.shape[1]) + 0.5) * 40).long()
    index = [int((timestamps[0] == c).nonzero()) for c in centres]
    torch.testing.assert_close(frames, embeddings[:, index], rtol=0, atol=1e-6)


def test_two_minutes(small_checkpoint):
    encoder = CEDEncoder(variant=None, model_file_path=small_checkpoint, passes=2)
    audio = torch.randn(1, 16000 * 120) * 0.1
    frames = encoder(audio)
    assert frames.shape == (1, 1500, 32)
    assert torch.isfinite(frames).all()
    # Frames from the last chunks are as informative as the first ones (not padding).
    assert frames[0, -10:].std() > 0.1 * frames[0, :10].std()


def test_batch_independence(small_checkpoint):
    encoder = CEDEncoder(variant=None, model_file_path=small_checkpoint, passes=2)
    gen = torch.Generator().manual_seed(1)
    batch = torch.randn(3, 48000, generator=gen) * torch.tensor([[0.01], [0.3], [1.0]])
    together = encoder(batch)
    for i in range(3):
        torch.testing.assert_close(
            encoder(batch[i : i + 1]), together[i : i + 1], rtol=0, atol=1e-5
        )


def test_published_size_from_the_usual_weights(monkeypatch, tmp_path):
    torch.manual_seed(0)
    path = save_model(build_model("tiny"), tmp_path / "tiny.safetensors")
    monkeypatch.setenv(weights.ENV_WEIGHTS, str(path))
    encoder = CEDEncoder("tiny", passes=1)
    assert encoder.output_dim == 192 and encoder.hop_size_in_ms == 160.0


def test_x_ares_own_encoder_check_passes(small_checkpoint):
    from xares.audio_encoder_checker import check_audio_encoder

    assert check_audio_encoder(CEDEncoder(variant=None, model_file_path=small_checkpoint, passes=2))
