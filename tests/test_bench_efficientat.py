"""The real MN10 peer: loading an EfficientAT checkout under the shims, the path check, the report.

A fake checkout with EfficientAT's module paths and a tiny model stands in
for the real one; the test of the real checkout reads its path from
``HEAR_CED_MN10_SRC`` and skips without it.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from click import ClickException
from click.testing import CliRunner
from torch import nn

from bench import efficientat, inference
from bench.efficientat_shims import ConvNormActivation, get_mel_banks, shim_modules
from bench.report import _inference

MN10_SRC = os.environ.get("HEAR_CED_MN10_SRC")

FAKE_FILES = {
    "models/mn/model.py": """
        from torch import nn
        from torch.hub import load_state_dict_from_url
        from torchvision.ops.misc import ConvNormActivation

        from helpers.utils import NAME_TO_WIDTH

        print("importing the model module")


        class Tiny(nn.Module):
            def __init__(self, num_classes, width):
                super().__init__()
                self.features = nn.Sequential(
                    ConvNormActivation(1, 4, kernel_size=3, stride=2, activation_layer=nn.Hardswish),
                    ConvNormActivation(4, 8, kernel_size=1, activation_layer=None),
                )
                self.head = nn.Linear(8, num_classes)

            def forward(self, x):
                features = self.features(x).mean(dim=(2, 3))
                return self.head(features), features


        def get_model(num_classes=527, pretrained_name=None, width_mult=1.0):
            model = Tiny(num_classes, width_mult * NAME_TO_WIDTH("mn10"))
            if pretrained_name:
                model.load_state_dict(load_state_dict_from_url("https://example.invalid/w.pt"))
            print(model)
            return model
    """,
    "models/preprocess.py": """
        import torch
        import torchaudio
        from torch import nn


        class AugmentMelSTFT(nn.Module):
            def __init__(self, n_mels=128, sr=32000, win_length=800, hopsize=320, n_fft=1024,
                         freqm=48, timem=192, fmin=0.0, fmax=None):
                super().__init__()
                if fmax is None:
                    fmax = sr // 2 - 1000
                    print(f"Warning: FMAX is None setting to {fmax}")
                self.n_mels, self.sr, self.n_fft, self.hop = n_mels, sr, n_fft, hopsize
                self.fmin, self.fmax = fmin, fmax
                self.register_buffer("window", torch.hann_window(win_length), persistent=False)
                self.win_length = win_length
                self.freqm = torchaudio.transforms.FrequencyMasking(freqm, iid_masks=True)
                self.timem = torchaudio.transforms.TimeMasking(timem, iid_masks=True)

            def forward(self, x):
                spec = torch.stft(x, self.n_fft, self.hop, self.win_length, self.window,
                                  return_complex=True).abs() ** 2
                banks, _ = torchaudio.compliance.kaldi.get_mel_banks(
                    self.n_mels, self.n_fft, self.sr, self.fmin, self.fmax,
                    vtln_low=100.0, vtln_high=-500.0, vtln_warp_factor=1.0)
                mel = torch.matmul(nn.functional.pad(banks, (0, 1)), spec)
                mel = (mel + 1e-5).log()
                if self.training:
                    mel = self.timem(self.freqm(mel))
                return (mel + 4.5) / 5.0
    """,
    "helpers/utils.py": """
        # EfficientAT reads its label list relative to the working directory on import.
        with open("metadata/class_labels_indices.csv") as handle:
            LABELS = handle.read().splitlines()


        def NAME_TO_WIDTH(name):
            return 1.0
    """,
    "metadata/class_labels_indices.csv": "index,mid,display_name\n0,/m/0,Speech\n",
}


@pytest.fixture
def fake_checkout(tmp_path):
    root = tmp_path / "EfficientAT"
    for name, text in FAKE_FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    return root


def _commit_all(root):
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t.invalid"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "fake"], check=True)
    return subprocess.run(
        [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


def _owned_modules():
    return {
        n
        for n in sys.modules
        if n.split(".")[0] in ("models", "helpers", "torchvision", "torchaudio")
    }


def test_loads_the_checkout_under_the_shims_and_cleans_up(fake_checkout, capsys):
    before_path, before_cwd, before_modules = list(sys.path), os.getcwd(), _owned_modules()
    mn10 = efficientat.MN10(efficientat.find_checkout(fake_checkout))
    assert mn10.info()["name"] == "EfficientAT MN10 (commit unknown)"
    frontend, model = mn10.frontend, mn10.variants["fp32"][0]
    assert not frontend.training and not model.training
    # The checkout's own classes, built on the shims.
    assert type(model).__name__ == "Tiny"
    assert isinstance(model.features[0], ConvNormActivation)
    with torch.inference_mode():
        mel = frontend(torch.randn(2, 16_000))
        logits, features = model(mel[:, None])
    assert mel.shape == (2, 128, 51) and torch.isfinite(mel).all()
    assert logits.shape == (2, 527) and features.shape == (2, 8)
    # Nothing of the import stays behind: path, working directory, module names, chatter.
    assert sys.path == before_path and os.getcwd() == before_cwd
    assert _owned_modules() == before_modules
    assert capsys.readouterr().out == ""


def test_the_checkout_never_downloads_weights(fake_checkout):
    model = efficientat.MN10(efficientat.find_checkout(fake_checkout)).variants["fp32"][0]
    fetch = type(model).forward.__globals__["load_state_dict_from_url"]
    with pytest.raises(RuntimeError, match="refusing to download"):
        fetch("https://example.invalid/w.pt")


def test_checkout_commit_names_the_peer(fake_checkout):
    commit = _commit_all(fake_checkout)
    peer = efficientat.MN10(efficientat.find_checkout(fake_checkout))
    info = peer.info()
    assert info["name"] == f"EfficientAT MN10 (commit {commit[:7]})" and info["commit"] == commit
    assert info["params"] == sum(p.numel() for p in peer.variants["fp32"][0].parameters())
    fns = peer.fns(torch.randn(1, 8_000))
    assert {"mn10:fp32", "mn10:fp32-channels-last"} <= set(fns)
    logits, _ = fns["mn10:fp32"]()
    assert logits.shape == (1, 527)


def test_a_folder_that_is_not_a_checkout_is_refused(fake_checkout, tmp_path):
    with pytest.raises(ClickException, match="no such folder"):
        efficientat.find_checkout(tmp_path / "missing")
    (fake_checkout / "models" / "preprocess.py").unlink()
    with pytest.raises(
        ClickException, match=r"not an EfficientAT checkout: no models/preprocess\.py"
    ):
        efficientat.find_checkout(fake_checkout)


def test_bench_cli_refuses_a_bad_path_in_one_line(tmp_path):
    from bench.run import main

    result = CliRunner().invoke(main, ["--mn10-src", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: {tmp_path} is not an EfficientAT checkout: no models/mn/model.py "
        f"(clone {efficientat.URL})"
    ]
    assert not (tmp_path / "o").exists()  # refused before anything ran


def test_conv_norm_activation_follows_torchvision_defaults():
    block = ConvNormActivation(3, 8, kernel_size=5, dilation=2, activation_layer=nn.Hardswish)
    conv, norm, act = block
    assert conv.padding == (4, 4) and conv.bias is None  # same size; no bias before a norm
    assert isinstance(norm, nn.BatchNorm2d) and isinstance(act, nn.Hardswish) and act.inplace
    assert block(torch.randn(1, 3, 20, 20)).shape == (1, 8, 20, 20) and block.out_channels == 8
    bare = ConvNormActivation(3, 8, kernel_size=1, norm_layer=None, activation_layer=None)
    assert len(bare) == 1 and bare[0].bias is not None


def test_kaldi_mel_banks_are_triangles_on_the_mel_scale():
    banks, centres = get_mel_banks(64, 1024, 32_000, 0.0, 15_000.0, 100.0, -500.0, 1.0)
    assert banks.shape == (64, 512) and centres.shape == (64,)
    assert (banks >= 0).all() and banks.max() <= 1.0
    freqs = 32_000 / 1024 * torch.arange(512)
    # Adjacent triangles meet where one rises and the next falls: between the
    # first and the last centre every bin's weights add up to one.
    inside = (freqs >= centres[0]) & (freqs <= centres[-1])
    assert torch.allclose(banks[:, inside].sum(0), torch.ones(int(inside.sum())), atol=1e-4)
    assert (banks[:, freqs > 15_000.0] == 0).all()
    # Each filter peaks at the bin nearest its centre frequency.
    nearest = (freqs[None, :] - centres[:, None]).abs().argmin(1)
    assert torch.equal(banks.argmax(1)[10:], nearest[10:])
    # Kaldi's high_freq <= 0 counts back from Nyquist.
    same, _ = get_mel_banks(64, 1024, 32_000, 0.0, -1_000.0, 100.0, -500.0, 1.0)
    assert torch.equal(same, banks)


def test_shim_modules_link_parents_to_children():
    modules = shim_modules()
    assert modules["torchvision"].ops.misc is modules["torchvision.ops.misc"]
    assert modules["torchaudio"].compliance.kaldi.get_mel_banks is get_mel_banks
    # SpecAugment runs only in training: the eval-mode benchmark builds the masks, never applies them.
    mask = modules["torchaudio"].transforms.TimeMasking(20, iid_masks=True)
    with pytest.raises(NotImplementedError, match="training-only"):
        mask(torch.ones(1, 4, 4))


@pytest.mark.parametrize(
    ("mode", "precision"),
    [("fp32", "fp32"), ("bf16+compile", "bf16"), ("int8-bf16", "int8"), ("onnx-int8", "int8")],
)
def test_each_mode_is_compared_with_its_lowest_precision_matmul(mode, precision):
    assert inference.matmul_precision(mode) == precision


def _inference_results(peer: dict | None) -> dict:
    """CED-Tiny's fp32 path at one thread, batch 1, and MN10 beside it when ``peer`` is given."""
    cell = {"cell": "tiny", "threads": 1, "batch": 1, "matmul_precision": "fp32", "valid": True}
    rows = [{**cell, "model": "tiny", "mode": "fp32", "ms_per_clip": 20.0, "ratio_to_matmul": 0.5}]
    rows[0]["time_ratio_to_peer"] = {"fp32": 0.5} if peer else {}
    if peer:
        rows.append({**cell, "model": "mn10", "mode": "fp32", "ms_per_clip": 40.0})
        rows[-1]["ratio_to_matmul"] = 0.25
    reference = {"model": "tiny", "threads": 1, "batch": 1, "valid": True, "attempts": 1}
    reference["matmul_gflops"] = {"fp32": 100.0}
    return {
        "accuracy": {"tiny": {"fp32": {"max_abs_prob_diff": 1e-7, "min_embedding_cosine": 1.0}}},
        "compile_s": {"fp32+compile": 5.84},
        "peer": peer,
        "sizes": {"tiny": {"params": 5, "macs_10s": 1e9}},
        "rows": rows,
        "matmul_gflops": [reference],
        "profiles": [{"mode": "fp32", "max_abs_prob_diff": 0.0, "stages": None}],
    }


def test_report_names_the_checkouts_commit():
    real = {
        "name": "EfficientAT MN10 (commit a425fdc)",
        "commit": "a425fdce92572e602a1d5634799bd9f1f2efa806",
    }
    real.update(params=5, macs=1e9)
    text = "\n".join(_inference(_inference_results(real)))
    assert "`a425fdce92572e602a1d5634799bd9f1f2efa806`" in text
    assert "| tiny | fp32 | 20.0 | 0.50 (fp32) | 0.50 |" in text
    assert "| EfficientAT MN10 (commit a425fdc) | 5 | 1.000 (published" in text
    assert "`fp32+compile` 5.8 s" in text


def test_without_a_checkout_the_report_says_what_the_mn10_ratios_need():
    """``make bench`` without ``MN10_SRC`` times CED alone: no MN10 figure, one line saying why."""
    results = _inference_results(None)
    text = "\n".join(_inference(results))
    need = (
        "the ratios to EfficientAT's MN10 need an EfficientAT checkout (`make bench MN10_SRC=PATH`)"
    )
    assert need in text and "| tiny | fp32 | 20.0 | 0.50 (fp32) |" in text
    assert "time / MN10" not in text


@pytest.mark.skipif(not MN10_SRC, reason="set HEAR_CED_MN10_SRC to an EfficientAT checkout")
def test_real_efficientat_mn10_matches_its_published_size():
    mn10 = efficientat.MN10(efficientat.find_checkout(MN10_SRC))
    frontend, model = mn10.frontend, mn10.variants["fp32"][0]
    assert abs(sum(p.numel() for p in model.parameters()) - 4.88e6) / 4.88e6 < 0.01
    with torch.inference_mode():
        mel = frontend(torch.randn(1, 10 * efficientat.SAMPLE_RATE))
        logits, _ = model(mel[:, None])
    assert mel.shape == (1, 128, 1000) and logits.shape == (1, 527)
