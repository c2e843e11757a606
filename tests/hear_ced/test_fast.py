"""Inference fast paths: each mode stays within its stated distance of float32."""

import logging

import pytest
import torch
import torch.nn.functional as F

from bench.models import calibrated_model, synthetic_audio
from hear_ced import fast as fast_module
from hear_ced.fast import (
    AUTO_TOLERANCE,
    MODES,
    CpuFeatures,
    FastLogMelFrontend,
    auto_candidates,
    native_bf16,
    optimize_for_inference,
)
from hear_ced.frontend import LogMelFrontend

BF16_CPU = CpuFeatures("AVX512", frozenset({"avx512f", "avx512_bf16", "avx512_vnni"}))
AMX_CPU = CpuFeatures("AVX512", frozenset({"avx512f", "amx_bf16", "amx_int8"}))
VNNI_CPU = CpuFeatures("AVX2", frozenset({"avx2", "avx_vnni"}))
PLAIN_CPU = CpuFeatures("DEFAULT", frozenset())

SMALL = dict(embed_dim=48, depth=2, num_heads=3)
# Documented tolerances (docs/performance.md): max |p - p_fp32|, min embedding cosine.
TOLERANCE = {
    "fp32": (1e-5, 0.99999),
    "bf16": (AUTO_TOLERANCE, 0.999),
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


@pytest.mark.parametrize(
    ("features", "expected"),
    [
        (BF16_CPU, ("bf16", "fp32")),
        (AMX_CPU, ("bf16", "fp32")),
        (VNNI_CPU, ("int8", "fp32")),
        (PLAIN_CPU, ("fp32",)),
    ],
)
def test_auto_candidates_follow_cpu_features(features, expected):
    assert auto_candidates(features) == expected


def test_cpuinfo_flags_read_from_file(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nflags : other\n")
    assert fast_module._cpuinfo_flags(str(cpuinfo)) == {"fpu", "avx2", "avx512_bf16"}
    assert fast_module._cpuinfo_flags(str(tmp_path / "missing")) == frozenset()


@pytest.mark.parametrize("features", [BF16_CPU, VNNI_CPU, PLAIN_CPU])
def test_auto_stays_within_tolerance_whatever_it_picks(model, audio, features):
    """auto's result is accurate for any CPU profile (emulated bf16 is still correct)."""
    probs, _ = outputs(model, audio)
    chosen = optimize_for_inference(model, "auto", features=features)
    assert chosen.fast_mode in auto_candidates(features)
    fast_probs, _ = outputs(chosen, audio)
    assert (fast_probs - probs).abs().max() <= AUTO_TOLERANCE


def test_auto_without_features_is_fp32(model):
    assert optimize_for_inference(model, "auto", features=PLAIN_CPU).fast_mode == "fp32"


def test_auto_falls_back_with_warning_when_bound_fails(model, monkeypatch, caplog):
    monkeypatch.setattr(fast_module, "AUTO_TOLERANCE", 1e-9)
    with caplog.at_level(logging.WARNING, logger="hear_ced.fast"):
        chosen = optimize_for_inference(model, "auto", features=BF16_CPU)
    assert chosen.fast_mode == "fp32"
    assert "bf16" in caplog.text and "using fp32" in caplog.text


def test_auto_keeps_reduced_precision_when_it_verifies(model, caplog):
    with caplog.at_level(logging.WARNING, logger="hear_ced.fast"):
        chosen = optimize_for_inference(model, "auto", features=BF16_CPU)
    assert chosen.fast_mode == "bf16" and not caplog.text


@pytest.mark.skipif(not native_bf16(), reason="this CPU has no native bf16 (AVX512-BF16 / AMX)")
def test_auto_picks_bf16_on_this_cpu(model, audio):
    probs, _ = outputs(model, audio)
    chosen = optimize_for_inference(model, "auto")
    assert chosen.fast_mode == "bf16"
    assert (outputs(chosen, audio)[0] - probs).abs().max() <= AUTO_TOLERANCE


def test_auto_leaves_training_flag_alone(model):
    model.train()
    try:
        optimize_for_inference(model, "auto", features=BF16_CPU)
        assert model.training
    finally:
        model.eval()


def test_tag_uses_auto_unless_exact(model, tmp_path):
    """``hear-ced tag`` runs fast=auto by default (within 0.01), float32 with --exact."""
    import json

    import soundfile as sf
    from click.testing import CliRunner

    from hear_ced.checkpoints import load_model_file, save_model
    from hear_ced.cli import main
    from hear_ced.labels import audioset_labels
    from hear_ced.tagging import predict

    checkpoint = save_model(model, tmp_path / "m.safetensors", labels=audioset_labels())
    wav = tmp_path / "clip.wav"
    clip = synthetic_audio(1, seconds=3.0, seed=5)[0]
    sf.write(wav, clip.numpy(), 16_000, subtype="FLOAT")
    expected = predict(load_model_file(checkpoint), clip)
    for flags, bound in (([], AUTO_TOLERANCE), (["--exact"], 1e-6)):
        args = ["tag", str(wav), "--model", str(checkpoint), "--json", "--top", "5", *flags]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        tags = json.loads(result.output)["tags"]
        got = torch.tensor([t["probability"] for t in tags])
        assert (got - expected[[t["index"] for t in tags]]).abs().max() <= bound


def test_compile_wraps_the_token_pass_with_frozen_weights(model, audio, monkeypatch):
    """compile=True hands the whole token pass to torch.compile with freezing.

    The real compile takes minutes on a loaded 2-core machine, so it is
    replaced by a recorder here; the benchmark's headline measures the compiled
    paths' accuracy against float32 (BENCHMARKS.md).
    """
    calls = []

    def fake_compile(fn, **kwargs):
        calls.append(kwargs)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    compiled = optimize_for_inference(model, "fp32", compile=True)
    assert calls == [{"options": {"freezing": True}}]
    reference = optimize_for_inference(model, "fp32")
    assert torch.equal(outputs(compiled, audio)[0], outputs(reference, audio)[0])
