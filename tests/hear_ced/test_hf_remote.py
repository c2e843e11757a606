"""An exported folder in transformers alone: its own code, offline, with hear-ced's results.

``hear-ced convert --to hf`` writes transformers code beside the weights; the
folder loads with ``trust_remote_code`` and no network (every socket refused
here), and gives ``hear-ced tag``'s probabilities and class names and the HEAR
scene embedding for clips of any length, whatever their batch mates.
"""

import ast
import re
import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from hear_ced.audio import resampled
from hear_ced.checkpoints import HF_CODE_FILES, HF_CODE_FOLDER, load_model_file, save_huggingface
from hear_ced.cli import main
from hear_ced.frontend import LogMelFrontend
from hear_ced.hear import CEDEmbedder, get_scene_embeddings
from hear_ced.labels import audioset_labels
from hear_ced.model import CED, CEDConfig
from hear_ced.tagging import ModelTagger

from .layouts import randomize_batchnorm
from .test_hf_export import NAMED

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-5
RATE = 16000
# A student of no published size with its own five names and 5.12 s passes, so that the
# 10 s and 25 s clips take several passes each.
STUDENT = NAMED
# The 527-class model: CED-tiny's width, heads and 10.11 s passes with one block instead of
# twelve; config.json states the depth, so it describes the model as the published keys do.
AUDIOSET = CEDConfig(embed_dim=192, depth=1, num_heads=3)


def _model(config: CEDConfig) -> CED:
    torch.manual_seed(0)
    return randomize_batchnorm(CED(config)).eval()


def _clip(seconds: float, seed: int, quiet_seconds: float = 0.0) -> np.ndarray:
    """Noise, optionally after a near-silent start: passes with peaks far apart, so the
    120 dB floor of a pass and that of the whole clip differ."""
    rng = np.random.default_rng(seed)
    clip = 0.5 * rng.standard_normal(int(seconds * RATE)).astype(np.float32)
    clip[: int(quiet_seconds * RATE)] *= 1e-6
    return clip


CLIPS = {"3 s": _clip(3, 1), "10 s": _clip(10, 2), "25 s": _clip(25, 3, quiet_seconds=11)}


@pytest.fixture(scope="module")
def offline():
    """No network for anything in this module: HF_HUB_OFFLINE=1 and every connection refused."""

    def refuse(*args, **kwargs):
        raise OSError("this test must not use the network")

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(socket.socket, "connect", refuse)
        yield


@pytest.fixture(scope="module")
def student(tmp_path_factory, offline):
    model = _model(STUDENT)
    return model, save_huggingface(model, tmp_path_factory.mktemp("student") / "ced-student")


@pytest.fixture(scope="module")
def audioset(tmp_path_factory, offline):
    model = _model(AUDIOSET)
    return model, save_huggingface(model, tmp_path_factory.mktemp("audioset") / "ced-audioset")


def _scores(results: list[dict]) -> dict[str, float]:
    return {result["label"]: result["score"] for result in results}


def _tag(model: CED, clips: list[np.ndarray]) -> list[dict[str, float]]:
    names = model.config.labels or audioset_labels()
    return [
        dict(zip(names, probs.tolist(), strict=True))
        for probs in ModelTagger(model).probabilities(clips)
    ]


def _close(got: dict[str, float], expected: dict[str, float]) -> None:
    assert got.keys() == expected.keys()
    assert max(abs(got[name] - expected[name]) for name in got) < TOLERANCE


# slow: the first use of transformers' pipelines imports them (seconds), not the clips
@pytest.mark.slow
def test_pipeline_gives_the_students_names_and_tag_probabilities(student, offline):
    model, folder = student
    pipe = transformers.pipeline("audio-classification", model=str(folder), trust_remote_code=True)
    assert pipe.model.config.problem_type == "multi_label_classification"
    inputs = [{"raw": clip, "sampling_rate": RATE} for clip in CLIPS.values()]
    expected = _tag(model, list(CLIPS.values()))
    for results, tags in zip(pipe(inputs, top_k=None), expected, strict=True):
        _close(_scores(results), tags)
    # Batched, the two long clips are padded to one length: each keeps its own result.
    batched = pipe(inputs[1:], top_k=None, batch_size=2)
    for results, tags in zip(batched, expected[1:], strict=True):
        _close(_scores(results), tags)


def test_a_batch_of_long_clips_gives_each_clip_its_result_alone(student, offline):
    model, folder = student
    features = transformers.AutoFeatureExtractor.from_pretrained(folder, trust_remote_code=True)
    classifier = transformers.AutoModelForAudioClassification.from_pretrained(
        folder, trust_remote_code=True
    )
    clips = [CLIPS["25 s"], _clip(17, 4)]
    with torch.no_grad():
        alone = [
            classifier(**features(c, sampling_rate=RATE, return_tensors="pt")).logits for c in clips
        ]
        together = classifier(**features(clips, sampling_rate=RATE, return_tensors="pt")).logits
    assert torch.allclose(together, torch.cat(alone), atol=TOLERANCE)
    expected = ModelTagger(model).probabilities(clips)
    assert np.abs(torch.sigmoid(together).numpy() - expected).max() < TOLERANCE


def test_audioset_model_names_its_527_classes_offline(audioset, offline):
    model, folder = audioset
    pipe = transformers.pipeline("audio-classification", model=str(folder), trust_remote_code=True)
    assert list(pipe.model.config.id2label.values()) == audioset_labels()
    [expected] = _tag(model, [CLIPS["10 s"]])
    results = pipe({"raw": CLIPS["10 s"], "sampling_rate": RATE}, top_k=5)
    top = sorted(expected, key=expected.get, reverse=True)[:5]
    assert [result["label"] for result in results] == top
    _close(_scores(results), {name: expected[name] for name in top})


def test_automodel_gives_the_hear_scene_embedding(audioset, offline):
    model, folder = audioset
    features = transformers.AutoFeatureExtractor.from_pretrained(folder, trust_remote_code=True)
    encoder = transformers.AutoModel.from_pretrained(folder, trust_remote_code=True)
    embedder = CEDEmbedder(model)
    # A clip shorter than one 160 ms patch is padded as the HEAR modules pad it.
    for clip in [*CLIPS.values(), _clip(0.1, 5)]:
        with torch.no_grad():
            got = encoder(**features(clip, sampling_rate=RATE, return_tensors="pt")).pooler_output
            expected = get_scene_embeddings(torch.from_numpy(clip)[None], embedder)
        assert torch.allclose(got, expected, atol=TOLERANCE)
    # In a batch: one vector per time patch, the HEAR grid of one pass, zero past a clip's end.
    long, short = CLIPS["25 s"], CLIPS["3 s"]
    with torch.no_grad():
        hidden = encoder(**features([long, short], sampling_rate=RATE, return_tensors="pt"))
        grid, _ = embedder.time_tokens(model.mel(torch.from_numpy(long)[None]), 0)
    assert torch.allclose(hidden.last_hidden_state[:1], grid, atol=TOLERANCE)
    patches = (1 + len(short) // 160) // 16
    assert hidden.last_hidden_state[1, patches:].abs().max() == 0
    real = hidden.last_hidden_state[1, :patches]
    assert torch.allclose(hidden.pooler_output[1], real.mean(0), atol=TOLERANCE)


def test_features_are_the_frontends_log_mel_and_each_pass_has_its_own_floor(student, offline):
    features = transformers.AutoFeatureExtractor.from_pretrained(student[1], trust_remote_code=True)
    frontend = LogMelFrontend()
    clip = CLIPS["3 s"]
    got = features(clip, sampling_rate=RATE)["input_values"][0]
    with torch.no_grad():
        expected = frontend(torch.from_numpy(clip)[None])[0].T.numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-3)
    # The quiet first pass keeps values its own floor allows and the whole clip's would not.
    long = features(CLIPS["25 s"], sampling_rate=RATE)["input_values"][0]
    assert long[:512].min() < long.max() - 120
    # Other rates: resampled as hear-ced resamples a file it reads.
    at_44k = _clip(2, 6)
    at_16k = np.concatenate(list(resampled([at_44k], 44100)))
    with torch.no_grad():
        expected = frontend(torch.from_numpy(at_16k)[None])[0].T.numpy()
    np.testing.assert_allclose(
        features(at_44k, sampling_rate=44100)["input_values"][0], expected, atol=1e-3
    )


def test_rates_and_audio_it_cannot_take_are_refused_by_name(student, offline, monkeypatch):
    features = transformers.AutoFeatureExtractor.from_pretrained(student[1], trust_remote_code=True)
    with pytest.raises(ValueError, match="positive number of Hz, got -8000"):
        features(CLIPS["3 s"], sampling_rate=-8000)
    with pytest.raises(ValueError, match="pass the audio's sampling_rate"):
        features(CLIPS["3 s"])
    with pytest.raises(ValueError, match="floating point.*got int16"):
        features((CLIPS["3 s"] * 32767).astype(np.int16), sampling_rate=RATE)
    monkeypatch.setitem(sys.modules, "soxr", None)  # a plain transformers install
    with pytest.raises(ValueError, match="audio at 22050 Hz must be resampled.*soxr") as error:
        features(CLIPS["3 s"], sampling_rate=22050)
    assert "\n" not in str(error.value)


def test_the_folder_is_still_read_by_hear_ced(student):
    model, folder = student
    assert {name for name in HF_CODE_FILES} <= {p.name for p in folder.iterdir()}
    loaded = load_model_file(folder)
    assert loaded.config == model.config
    assert all(
        torch.equal(a, b)
        for a, b in zip(loaded.state_dict().values(), model.state_dict().values(), strict=True)
    )


@pytest.mark.parametrize("name", HF_CODE_FILES)
def test_the_code_needs_only_torch_numpy_and_transformers(name):
    tree = ast.parse((HF_CODE_FOLDER / name).read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and not node.level
    }
    # soxr only where installed, to resample (test_rates_and_audio_it_cannot_take_are_refused_by_name)
    assert imported - set(sys.stdlib_module_names) <= {"torch", "numpy", "transformers", "soxr"}


def test_a_folder_that_is_not_an_export_is_named(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "config.json").write_text("{}")
    result = CliRunner().invoke(
        main, ["convert", str(tmp_path / "notes"), str(tmp_path / "out"), "--to", "hf"]
    )
    assert result.exit_code == 1
    [line] = result.output.strip().splitlines()
    assert f"{tmp_path / 'notes'} is not a CED model folder" in line
    assert not (tmp_path / "out").exists()


def _python_blocks(path: Path, needle: str) -> list[str]:
    blocks = re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.M | re.S)
    return [block for block in blocks if needle in block]


@pytest.mark.parametrize("doc", ["README.md", "docs/deploy.md"])
def test_the_documented_transformers_examples_run(
    doc, student, offline, tmp_path, monkeypatch, capsys
):
    blocks = _python_blocks(ROOT / doc, "trust_remote_code=True")
    assert blocks
    shutil.copytree(student[1], tmp_path / "my-ced")
    sf.write(tmp_path / "clip.wav", CLIPS["3 s"], RATE)
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, f"{doc} example", "exec"), {})
        printed = capsys.readouterr().out
        assert any(name in printed for name in STUDENT.labels), printed
