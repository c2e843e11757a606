"""Inference fast paths: each mode stays within its stated distance of float32."""

import pytest
import torch
import torch.nn.functional as F

from bench.models import calibrated_model, synthetic_audio
from hear_ced.fast import MODES, FastLogMelFrontend, optimize_for_inference
from hear_ced.frontend import LogMelFrontend

SMALL = dict(embed_dim=48, depth=2, num_heads=3)
# Documented tolerances (docs/performance.md): max |p - p_fp32|, min embedding cosine.
TOLERANCE = {
    "fp32": (1e-5, 0.99999),
    "bf16": (0.02, 0.999),
    "int8": (0.05, 0.999),
    "int8-bf16": (0.05, 0.999),
}


@pytest.fixture(scope="module")
def model():
    return calibrated_model("tiny", seed=3, **SMALL)


@pytest.fixture(scope="module")
def audio():
    return synthetic_audio(3, seconds=4.0, seed=7)


def outputs(model, audio):
    with torch.inference_mode():
        probs = torch.sigmoid(model(audio).float())
        embedding = model.tokens(model.mel(audio)).float().mean(dim=(1, 2))
    return probs, embedding


def test_fast_frontend_matches_reference(audio):
    reference = LogMelFrontend()(audio)
    fast = FastLogMelFrontend()(audio)
    assert fast.shape == reference.shape
    assert (fast - reference).abs().max() < 1e-3


@pytest.mark.parametrize("mode", MODES)
def test_mode_close_to_float32(model, audio, mode):
    probs, embedding = outputs(model, audio)
    # The calibrated model's probabilities spread over (0, 1): a broken path cannot hide.
    assert probs.max() > 0.5 and probs.min() < 0.05
    fast_probs, fast_embedding = outputs(optimize_for_inference(model, mode), audio)
    max_diff, min_cosine = TOLERANCE[mode]
    assert (fast_probs - probs).abs().max() < max_diff
    assert F.cosine_similarity(fast_embedding, embedding, dim=-1).min() > min_cosine


def test_original_model_untouched(model, audio):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probs, _ = outputs(model, audio)
    optimize_for_inference(model, "int8")
    optimize_for_inference(model, "bf16")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(outputs(model, audio)[0], probs)
    assert type(model.front_end) is LogMelFrontend


def test_long_clip_and_interface_kept(model):
    """Chunked long input and the token API work in reduced precision, returning float32."""
    long_clip = synthetic_audio(2, seconds=10.5, seed=1)
    fast = optimize_for_inference(model, "bf16")
    with torch.inference_mode():
        logits = fast(long_clip)
        reference = model(long_clip)
        chunks = list(fast.encode(fast.mel(long_clip)))
    assert logits.dtype == torch.float32 and logits.shape == (2, 527)
    assert len(chunks) == 2 and chunks[0][1].dtype == torch.float32
    assert (torch.sigmoid(logits) - torch.sigmoid(reference)).abs().max() < 0.05


def test_bad_arguments_rejected(model):
    with pytest.raises(ValueError, match="fp16"):
        optimize_for_inference(model, "fp16")
    with pytest.raises(TypeError, match="CED"):
        optimize_for_inference(torch.nn.Linear(2, 2))
