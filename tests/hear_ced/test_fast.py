"""Inference fast paths: each mode stays within its stated distance of float32."""

import copy
import json
import logging

import pytest
import torch
import torch.nn.functional as F

from hear_ced import fast as fast_module
from hear_ced.checkpoints import weights_sha256
from hear_ced.fast import (
    AUTO_CACHE_FORMAT,
    AUTO_TIMING_ROUNDS,
    AUTO_TOLERANCE,
    MODES,
    CpuFeatures,
    auto_cache_path,
    auto_candidates,
    calibrated_model,
    cpu_features,
    measure_latency,
    native_bf16,
    optimize_for_inference,
    synthetic_audio,
)
from hear_ced.model import build_model

BF16_CPU = CpuFeatures("AVX512", frozenset({"avx512f", "avx512_bf16", "avx512_vnni"}), "Zen 4")
BF16_ONLY_CPU = CpuFeatures("AVX512", frozenset({"avx512f", "avx512_bf16"}))
AMX_CPU = CpuFeatures("AVX512", frozenset({"avx512f", "amx_bf16", "amx_int8"}))
VNNI_CPU = CpuFeatures("AVX2", frozenset({"avx2", "avx_vnni"}))
PLAIN_CPU = CpuFeatures("DEFAULT", frozenset())
ALL_MODES = ("fp32", "bf16", "int8", "int8-bf16")

SMALL = dict(embed_dim=48, depth=2, num_heads=3)
# Documented tolerances (docs/performance.md): max |p - p_fp32|, min embedding cosine.
TOLERANCE = {
    "fp32": (1e-5, 0.99999),
    "bf16": (AUTO_TOLERANCE, 0.999),
    "int8": (0.05, 0.999),
    "int8-bf16": (0.05, 0.999),
}


@pytest.fixture(autouse=True)
def auto_cache(tmp_path, monkeypatch):
    """Each test decides afresh: its own file of auto's decisions."""
    path = tmp_path / "cache" / "fast-auto.json"
    monkeypatch.setenv("HEAR_CED_FAST_CACHE", str(path))
    return path


@pytest.fixture(scope="module")
def model():
    return calibrated_model("tiny", seed=3, **SMALL)


@pytest.fixture(scope="module")
def small():
    """A small CED with the published initialisation: every mode passes the bound on it."""
    torch.manual_seed(0)
    return build_model("tiny", **SMALL).eval()


@pytest.fixture(scope="module")
def published_tiny():
    """CED-Tiny built as published (its own initialisation), random weights, and its outputs."""
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    audio = synthetic_audio(2, seconds=3.0, seed=3)
    return model, audio, outputs(model, audio)


@pytest.fixture(scope="module")
def audio():
    return synthetic_audio(3, seconds=4.0, seed=7)


def outputs(model, audio):
    with torch.inference_mode():
        probs = torch.sigmoid(model(audio).float())
        embedding = model.tokens(model.mel(audio)).float().mean(dim=(1, 2))
    return probs, embedding


@pytest.mark.parametrize("mode", MODES)
def test_mode_close_to_float32(model, audio, mode):
    probs, embedding = outputs(model, audio)
    # The calibrated model's probabilities spread over (0, 1): a broken path cannot hide.
    assert probs.max() > 0.5 and probs.min() < 0.05
    fast_probs, fast_embedding = outputs(optimize_for_inference(model, mode, **native(mode)), audio)
    max_diff, min_cosine = TOLERANCE[mode]
    assert (fast_probs - probs).abs().max() < max_diff
    assert F.cosine_similarity(fast_embedding, embedding, dim=-1).min() > min_cosine


def native(mode):
    """Arguments that let a bf16 mode run emulated where this CPU lacks native bf16.

    Its arithmetic is checked on every CPU; its speed matters only where it is native.
    """
    return {"features": BF16_CPU} if "bf16" in mode and not native_bf16() else {}


def _needs(mode):
    """A skip reason where this CPU cannot run ``mode`` natively (int8 runs on every CPU)."""
    return "this CPU has no native bf16 (AVX512-BF16 / AMX)" if native(mode) else None


@pytest.mark.parametrize("mode", [*MODES, "auto"])
def test_mode_close_to_float32_as_published(published_tiny, mode):
    """Every mode, on weights built like the published CED-Tiny, within 0.01 of float32."""
    if mode != "auto" and _needs(mode):
        pytest.skip(_needs(mode))
    model, audio, (probs, embedding) = published_tiny
    assert probs.max() - probs.min() > 0.2  # spread out: a broken path cannot hide
    fast_probs, fast_embedding = outputs(optimize_for_inference(model, mode), audio)
    assert (fast_probs - probs).abs().max() <= AUTO_TOLERANCE
    assert F.cosine_similarity(fast_embedding, embedding, dim=-1).min() > 0.999


def test_original_model_untouched(model, audio):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probs, _ = outputs(model, audio)
    optimize_for_inference(model, "int8")
    optimize_for_inference(model, "bf16", features=BF16_CPU)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(outputs(model, audio)[0], probs)
    assert model.front_end.arithmetic == "default"


def test_long_clip_and_interface_kept(model):
    """A long clip's passes and the token API work in reduced precision, returning float32."""
    from hear_ced.tagging import predict

    long_clip = synthetic_audio(2, seconds=10.5, seed=1)
    fast = optimize_for_inference(model, "bf16", features=BF16_CPU)
    with torch.inference_mode():
        logits = fast(long_clip[:, :16000])
        probs, reference = predict(fast, long_clip[0]), predict(model, long_clip[0])
        chunks = list(fast.encode(fast.mel(long_clip)))
    assert logits.dtype == probs.dtype == torch.float32 and logits.shape == (2, 527)
    assert len(chunks) == 2 and chunks[0][1].dtype == torch.float32
    assert (probs - reference).abs().max() < 0.05


def test_bad_arguments_rejected(model):
    with pytest.raises(ValueError, match="fp16"):
        optimize_for_inference(model, "fp16")
    with pytest.raises(TypeError, match="CED"):
        optimize_for_inference(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("mode", ["bf16", "int8-bf16"])
def test_bf16_by_name_without_native_bf16_is_refused(model, mode):
    """No silent emulation: the error names the mode, what the CPU lacks and what runs."""
    plain = CpuFeatures("AVX2", frozenset({"avx2"}), "Some AVX2 CPU")
    with pytest.raises(ValueError, match=rf"mode {mode} needs native bf16 .*Some AVX2 CPU.*int8"):
        optimize_for_inference(model, mode, features=plain)


@pytest.mark.parametrize(
    ("features", "expected"),
    [
        (BF16_CPU, ALL_MODES),
        (AMX_CPU, ALL_MODES),
        (BF16_ONLY_CPU, ALL_MODES),
        (VNNI_CPU, ("fp32", "int8")),
        (PLAIN_CPU, ("fp32", "int8")),  # int8 runs on every CPU; bf16 needs native bf16
    ],
)
def test_auto_candidates_follow_cpu_features(features, expected):
    assert auto_candidates(features) == expected


def test_cpuinfo_read_from_file(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 avx512_bf16\n\n"
        "processor\t: 1\nmodel name\t: Other\nflags : other\n"
    )
    features = cpu_features(str(cpuinfo))
    assert features.flags == {"avx2", "avx512_bf16"}  # the flags that matter, of processor 0
    assert features.model == "Some CPU" and features.native_bf16
    missing = cpu_features(str(tmp_path / "missing"))
    assert (missing.flags, missing.model) == (frozenset(), "")


@pytest.mark.parametrize("features", [BF16_CPU, VNNI_CPU, PLAIN_CPU])
def test_auto_stays_within_tolerance_whatever_it_picks(model, audio, features):
    """auto's result is accurate for any CPU profile (emulated bf16 is still correct)."""
    probs, _ = outputs(model, audio)
    chosen = optimize_for_inference(model, "auto", features=features)
    assert chosen.config.fast_mode in auto_candidates(features)
    fast_probs, _ = outputs(chosen, audio)
    assert (fast_probs - probs).abs().max() <= AUTO_TOLERANCE


def test_auto_tries_int8_without_int8_dot_products(small, monkeypatch):
    """On a CPU without VNNI or AMX int8 is still checked and timed, and wins when faster."""
    timer = Recorder(monkeypatch, {"fp32": 4.0, "int8": 1.0})
    assert optimize_for_inference(small, "auto", features=PLAIN_CPU).config.fast_mode == "int8"
    assert timer.timed == [("fp32", "int8")]


class Recorder:
    """Counts auto's probe runs and replaces its timing with fixed per-mode latencies."""

    def __init__(self, monkeypatch, latency):
        self.latency = latency
        self.probes = 0
        self.timed = []
        synthetic_audio = fast_module.synthetic_audio

        def counted_probe(*args, **kwargs):
            self.probes += 1
            return synthetic_audio(*args, **kwargs)

        monkeypatch.setattr(fast_module, "synthetic_audio", counted_probe)
        monkeypatch.setattr(fast_module, "measure_latency", self.measure)

    def measure(self, models, audio):
        self.timed.append(tuple(models))
        return {mode: self.latency[mode] for mode in models}


@pytest.mark.parametrize(
    ("latency", "expected"),
    [
        ({"fp32": 4.0, "bf16": 2.0, "int8": 1.0, "int8-bf16": 1.5}, "int8"),
        ({"fp32": 4.0, "bf16": 1.0, "int8": 2.0, "int8-bf16": 1.5}, "bf16"),
        ({"fp32": 4.0, "bf16": 2.0, "int8": 1.5, "int8-bf16": 1.0}, "int8-bf16"),
        ({"fp32": 1.0, "bf16": 2.0, "int8": 1.5, "int8-bf16": 1.2}, "fp32"),
        ({"fp32": 1.0, "bf16": 1.0, "int8": 1.0, "int8-bf16": 1.0}, "fp32"),  # ties: most exact
    ],
)
def test_auto_picks_the_fastest_accurate_candidate(small, monkeypatch, latency, expected):
    timer = Recorder(monkeypatch, latency)
    chosen = optimize_for_inference(small, "auto", features=BF16_CPU)
    assert chosen.config.fast_mode == expected
    assert timer.timed == [ALL_MODES]  # every candidate passed the bound and was timed


def test_auto_rejects_a_candidate_outside_the_bound(small, monkeypatch, caplog):
    """A candidate 0.01 or more from float32 is dropped even when it is the fastest."""
    convert = fast_module._convert

    def off_int8(model, mode):
        fast = convert(model, mode)
        if mode == "int8":
            fast.outputlayer[1].bias.data += 0.5  # probabilities move by about 0.1
        return fast

    monkeypatch.setattr(fast_module, "_convert", off_int8)
    timer = Recorder(monkeypatch, {"fp32": 4.0, "bf16": 2.0, "int8": 1.0, "int8-bf16": 1.5})
    with caplog.at_level(logging.DEBUG, logger="hear_ced.fast"):
        chosen = optimize_for_inference(small, "auto", features=BF16_CPU)
    assert chosen.config.fast_mode == "int8-bf16"
    assert timer.timed == [("fp32", "bf16", "int8-bf16")]
    assert "int8 is" in caplog.text and "not used" in caplog.text


def test_auto_falls_back_to_fp32_when_all_fail(small, monkeypatch, caplog):
    monkeypatch.setattr(fast_module, "AUTO_TOLERANCE", 1e-9)
    timer = Recorder(monkeypatch, {})
    with caplog.at_level(logging.DEBUG, logger="hear_ced.fast"):
        chosen = optimize_for_inference(small, "auto", features=BF16_CPU)
    assert chosen.config.fast_mode == "fp32"
    assert timer.timed == []  # nothing left to time
    assert all(f"{mode} is" in caplog.text for mode in ("bf16", "int8", "int8-bf16"))


def test_measure_latency_times_every_model_round_robin(small, monkeypatch):
    """Each round predicts the clip once with every model, through the one clip prediction."""
    calls = []
    predict = fast_module.predict

    def recorded(model, audio):
        calls.append(model)
        return predict(model, audio)

    monkeypatch.setattr(fast_module, "predict", recorded)
    other = copy.deepcopy(small)
    latency = measure_latency({"a": small, "b": other}, synthetic_audio(1, seconds=1.0)[0])
    assert calls == [small, other] * AUTO_TIMING_ROUNDS
    assert set(latency) == {"a", "b"} and all(s > 0 for s in latency.values())


def test_auto_decision_is_cached(small, monkeypatch, auto_cache):
    """A second call with the same weights reads the decision: no probe, no timing."""
    latency = {"fp32": 4.0, "bf16": 2.0, "int8": 1.0, "int8-bf16": 1.5}
    timer = Recorder(monkeypatch, latency)
    first = optimize_for_inference(small, "auto", features=BF16_CPU)
    assert (timer.probes, len(timer.timed)) == (1, 1)
    stored = json.loads(auto_cache.read_text())
    assert stored["format"] == AUTO_CACHE_FORMAT
    (decision,) = stored["decisions"].values()
    assert decision["mode"] == "int8" and decision["weights"] == weights_sha256(small)
    assert decision["cpu"] == BF16_CPU.key() and decision["torch"] == torch.__version__
    assert set(decision["max_prob_diff"]) == set(ALL_MODES)
    timer.latency = {"fp32": 4.0, "bf16": 1.0, "int8": 2.0, "int8-bf16": 1.5}  # would pick bf16
    again = optimize_for_inference(small, "auto", features=BF16_CPU)
    assert (timer.probes, len(timer.timed)) == (1, 1)
    assert again.config.fast_mode == first.config.fast_mode == "int8"
    assert auto_cache_path() == auto_cache


def test_auto_cache_misses_for_other_weights_torch_or_cpu(small, monkeypatch, auto_cache):
    zen4 = CpuFeatures("AVX2", VNNI_CPU.flags, "Zen 4")
    timer = Recorder(monkeypatch, {"fp32": 4.0, "int8": 1.0})
    optimize_for_inference(small, "auto", features=zen4)
    other = copy.deepcopy(small)
    with torch.no_grad():
        other.blocks[0].mlp.fc1.weight[0, 0] += 1e-3
    assert weights_sha256(other) != weights_sha256(small)
    assert weights_sha256(copy.deepcopy(small)) == weights_sha256(small)
    optimize_for_inference(other, "auto", features=zen4)
    assert timer.probes == 2
    optimize_for_inference(small, "auto", features=CpuFeatures("AVX2", VNNI_CPU.flags, "Zen 5"))
    assert timer.probes == 3
    version = torch.__version__
    monkeypatch.setattr(torch, "__version__", "9.9.9+other")
    optimize_for_inference(small, "auto", features=zen4)
    assert timer.probes == 4
    assert len(json.loads(auto_cache.read_text())["decisions"]) == 4
    monkeypatch.setattr(torch, "__version__", version)  # the first decision still holds
    assert optimize_for_inference(small, "auto", features=zen4).config.fast_mode == "int8"
    assert timer.probes == 4


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        b"\xff\xfe\x00binary",
        '["a list"]',
        '{"format": "someone else\'s", "decisions": {}}',
        json.dumps({"format": AUTO_CACHE_FORMAT, "decisions": []}),
    ],
)
def test_bad_auto_cache_is_ignored_with_one_warning(
    small, monkeypatch, caplog, auto_cache, content
):
    auto_cache.parent.mkdir(parents=True)
    if isinstance(content, bytes):
        auto_cache.write_bytes(content)
    else:
        auto_cache.write_text(content)
    timer = Recorder(monkeypatch, {"fp32": 4.0, "bf16": 2.0, "int8": 1.0, "int8-bf16": 1.5})
    with caplog.at_level(logging.WARNING, logger="hear_ced.fast"):
        chosen = optimize_for_inference(small, "auto", features=BF16_CPU)
        again = optimize_for_inference(small, "auto", features=BF16_CPU)
    assert chosen.config.fast_mode == again.config.fast_mode == "int8"
    assert timer.probes == 1  # the bad file was replaced by a good one
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "ignoring its cache" in warnings[0].getMessage()
    assert str(auto_cache) in warnings[0].getMessage()


def test_cached_mode_this_cpu_cannot_run_is_decided_again(small, monkeypatch, auto_cache, caplog):
    timer = Recorder(monkeypatch, {"fp32": 4.0, "bf16": 2.0, "int8": 1.0, "int8-bf16": 1.5})
    optimize_for_inference(small, "auto", features=BF16_CPU)
    stored = json.loads(auto_cache.read_text())
    (decision,) = stored["decisions"].values()
    decision["mode"] = "fp8"
    auto_cache.write_text(json.dumps(stored))
    with caplog.at_level(logging.WARNING, logger="hear_ced.fast"):
        assert optimize_for_inference(small, "auto", features=BF16_CPU).config.fast_mode == "int8"
        assert optimize_for_inference(small, "auto", features=BF16_CPU).config.fast_mode == "int8"
    assert timer.probes == 2  # decided again once, then read back
    assert len(caplog.records) == 1 and "cannot run" in caplog.text


def test_unwritable_auto_cache_only_warns(small, monkeypatch, tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("HEAR_CED_FAST_CACHE", str(blocker / "fast-auto.json"))
    Recorder(monkeypatch, {"fp32": 1.0, "int8": 4.0})
    with caplog.at_level(logging.WARNING, logger="hear_ced.fast"):
        chosen = optimize_for_inference(small, "auto", features=PLAIN_CPU)
    assert chosen.config.fast_mode == "fp32"
    assert "could not keep the decision" in caplog.text


def test_auto_cache_lives_in_the_cache_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("HEAR_CED_FAST_CACHE")
    monkeypatch.setenv("HEAR_CED_CACHE", str(tmp_path))
    assert auto_cache_path() == tmp_path / "fast-auto.json"


def test_auto_on_this_cpu_picks_a_native_accurate_mode(model, audio):
    probs, _ = outputs(model, audio)
    chosen = optimize_for_inference(model, "auto")
    assert chosen.config.fast_mode in auto_candidates(cpu_features())
    assert (outputs(chosen, audio)[0] - probs).abs().max() <= AUTO_TOLERANCE


def test_auto_leaves_training_flag_alone(small):
    small.train()
    try:
        optimize_for_inference(small, "auto", features=BF16_CPU)
        assert small.training
    finally:
        small.eval()


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


_AUTO_IN_A_NEW_PROCESS = """
import sys

import torch

from hear_ced import fast
from hear_ced.checkpoints import load_model_file

if sys.argv[2] == "no-probe":
    def refuse(*args, **kwargs):
        raise AssertionError("the probe clip ran")

    fast.synthetic_audio = refuse
print(fast.optimize_for_inference(load_model_file(sys.argv[1]), "auto").config.fast_mode)
"""


@pytest.mark.slow
def test_auto_decision_carries_to_another_process(small, tmp_path, auto_cache):
    """This CPU's own decision: the fastest accurate mode; a second process with the same
    weights converts from the cache, its probe clip never runs."""
    import os
    import subprocess
    import sys

    from hear_ced.checkpoints import save_model

    checkpoint = save_model(small, tmp_path / "small.safetensors")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1")

    def run(probe):
        command = [sys.executable, "-c", _AUTO_IN_A_NEW_PROCESS, str(checkpoint), probe]
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    first = run("probe")
    (decision,) = json.loads(auto_cache.read_text())["decisions"].values()
    assert first == decision["mode"] and decision["weights"] == weights_sha256(small)
    assert decision["cpu"] == cpu_features().key()
    accurate = [m for m, d in decision["max_prob_diff"].items() if d <= AUTO_TOLERANCE]
    assert set(accurate) <= set(decision["ms"]) or accurate == ["fp32"]
    assert first == min(accurate, key=lambda m: decision["ms"].get(m, 0.0))
    assert run("no-probe") == first
