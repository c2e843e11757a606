"""Model sizes, the forward pass against an independent reference, chunking."""

import math

import pytest
import torch
import torch.nn.functional as F

from hear_ced.model import CED, CEDConfig, chunk_spans, variant_config

from .layouts import original_state, randomize_batchnorm

SMALL = dict(embed_dim=48, depth=2, num_heads=3)


@pytest.mark.parametrize(
    "variant,count",
    [("tiny", 5_503_183), ("mini", 9_696_655), ("small", 21_622_543), ("base", 85_711_759)],
)
def test_parameter_counts_match_published(published_models, variant, count):
    model = published_models[variant]  # build_model(variant), built once per session
    assert sum(p.numel() for p in model.parameters()) == count
    # 159 weights + the two frontend constants of the original files = 161 keys.
    assert len(original_state(model)) == 161


def test_large_teacher_size():
    cfg = variant_config("large")
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads) == (1024, 24, 16)


@pytest.mark.parametrize(
    "bad",
    [dict(embed_dim=50, num_heads=3), dict(depth=0), dict(drop_path_rate=1.0), dict(n_mels=60)],
)
def test_invalid_config_rejected(bad):
    with pytest.raises(ValueError):
        CEDConfig(**bad)


def test_unknown_config_key_named():
    with pytest.raises(ValueError, match="widht"):
        CEDConfig.from_dict({"widht": 3})


def reference_logits(state: dict, mel: torch.Tensor, heads: int) -> torch.Tensor:
    """The published forward pass written from the spec, on original-layout keys."""
    bn = {k: state[f"init_bn.1.{k}"] for k in ("weight", "bias", "running_mean", "running_var")}
    x = (mel - bn["running_mean"][:, None]) / torch.sqrt(bn["running_var"][:, None] + 1e-5)
    x = x * bn["weight"][:, None] + bn["bias"][:, None]
    x = F.conv2d(
        x[:, None], state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=16
    )
    b, d, f, t = x.shape
    x = x + state["time_pos_embed"][..., :t] + state["freq_pos_embed"]
    x = x.permute(0, 2, 3, 1).reshape(b, f * t, d)  # b c f t -> b (f t) c
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    hd = d // heads
    for i in range(depth):
        block = {
            k.removeprefix(f"blocks.{i}."): v
            for k, v in state.items()
            if k.startswith(f"blocks.{i}.")
        }
        p = block.__getitem__
        h = F.layer_norm(x, (d,), p("norm1.weight"), p("norm1.bias"), 1e-6)
        q, k, v = (
            (h @ p("attn.qkv.weight").T + p("attn.qkv.bias")).view(b, -1, 3, heads, hd).unbind(2)
        )
        att = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd), dim=-1)
        o = torch.einsum("bhqk,bkhd->bqhd", att, v).reshape(b, -1, d)
        x = x + o @ p("attn.proj.weight").T + p("attn.proj.bias")
        h = F.layer_norm(x, (d,), p("norm2.weight"), p("norm2.bias"), 1e-6)
        h = F.gelu(h @ p("mlp.fc1.weight").T + p("mlp.fc1.bias"))
        x = x + h @ p("mlp.fc2.weight").T + p("mlp.fc2.bias")
    x = F.layer_norm(x, (d,), state["norm.weight"], state["norm.bias"], 1e-6).mean(1)
    x = F.layer_norm(x, (d,), state["outputlayer.0.weight"], state["outputlayer.0.bias"], 1e-5)
    return x @ state["outputlayer.1.weight"].T + state["outputlayer.1.bias"]


@pytest.mark.parametrize("frames", [16, 500, 1001, 1012])
def test_forward_matches_reference(frames):
    torch.manual_seed(0)
    model = randomize_batchnorm(CED(CEDConfig(**SMALL)))
    mel = torch.randn(2, 64, frames) * 10 - 30
    expected = reference_logits(original_state(model), mel, heads=3)
    torch.testing.assert_close(model.forward_mel(mel), expected, atol=2e-5, rtol=1e-4)


def test_chunk_spans_keep_every_chunk():
    # An exact multiple of 1012 frames keeps its last chunk.
    assert chunk_spans(2024, 1012, 16) == [(0, 1012), (1012, 2024)]
    # The remainder runs at its real length; one shorter than a patch holds nothing.
    assert chunk_spans(2100, 1012, 16) == [(0, 1012), (1012, 2024), (2024, 2100)]
    assert chunk_spans(2030, 1012, 16) == [(0, 1012), (1012, 2024)]
    with pytest.raises(ValueError, match="fewer than one"):
        chunk_spans(10, 1012, 16)


def test_stacked_clips_never_mix():
    torch.manual_seed(2)
    model = randomize_batchnorm(CED(CEDConfig(**SMALL)))
    mel = torch.randn(3, 64, 1012) * 10 - 30
    together = model.forward_mel(mel)
    for i in range(3):
        torch.testing.assert_close(
            model.forward_mel(mel[i : i + 1]), together[i : i + 1], atol=1e-6, rtol=0
        )


def test_one_pass_refuses_overlong_input():
    """Longer clips have one prediction, the tagger's; forward never averages chunks itself."""
    model = CED(CEDConfig(**SMALL))
    with pytest.raises(ValueError, match="at most 1012 frames, got 1013: .*tagging.predict"):
        model.forward_mel(torch.zeros(1, 64, 1013))
    with pytest.raises(ValueError, match="at most 1012"):
        model(torch.zeros(1, 1012 * 160))


def test_drop_path_only_in_training():
    torch.manual_seed(3)
    model = CED(CEDConfig(**SMALL, drop_path_rate=0.5)).eval()
    wave = torch.randn(2, 16000) * 0.1
    assert torch.equal(model(wave), model(wave))
    model.train()
    torch.manual_seed(4)
    a = model(wave)
    torch.manual_seed(5)
    assert not torch.allclose(a, model(wave))


def test_shortest_input_is_one_patch_of_frames():
    model = CED(CEDConfig(**SMALL)).eval()
    shortest = model.config.min_input_samples
    assert model.mel(torch.zeros(1, shortest)).shape[-1] == 16
    with torch.no_grad():
        assert model(torch.zeros(1, shortest)).shape == (1, 527)
        with pytest.raises(ValueError, match="fewer than one 16-frame patch"):
            model(torch.zeros(1, shortest - 1))


def test_short_clips_are_tagged_padded_to_160_ms():
    from hear_ced.tagging import predict

    torch.manual_seed(0)
    model = randomize_batchnorm(CED(CEDConfig(**SMALL))).eval()
    assert model.config.patch_samples == 2_560  # 160 ms at 16 kHz
    # Long enough for one patch as it is, yet padded: its last frame sees the zeros.
    clip = torch.randn(2_450) * 0.1
    assert model.config.min_input_samples <= 2_450
    with torch.no_grad():
        padded = torch.sigmoid(model(F.pad(clip, (0, 2_560 - 2_450))[None]))[0]
        as_is = torch.sigmoid(model(clip[None]))[0]
    torch.testing.assert_close(predict(model, clip), padded, rtol=0, atol=1e-6)
    assert (as_is - padded).abs().max() > 1e-4  # so the padding length is part of the result
