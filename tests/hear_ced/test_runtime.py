"""Tagging with an exported graph on onnxruntime: the torch path's results, without torch."""

import json
import logging
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from hear_ced.checkpoints import save_model
from hear_ced.cli import main
from hear_ced.export import export_onnx
from hear_ced.frontend import LogMelFrontend
from hear_ced.model import CED, CEDConfig
from hear_ced.runtime import (
    OnnxTagger,
    average_passes,
    pass_inputs,
)
from hear_ced.specs import CONTEXT_FRAMES, CONTEXT_SAMPLES, SAMPLE_RATE, chunk_spans
from hear_ced.tagging import ModelTagger

LABELS = [f"sound {i}" for i in range(10)]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = CEDConfig(embed_dim=32, depth=2, num_heads=2, num_classes=10, labels=LABELS)
    model = CED(config).eval()
    return model


@pytest.fixture(scope="module")
def files(model, tmp_path_factory):
    """The model as a checkpoint and as a float32 graph (with its class names)."""
    folder = tmp_path_factory.mktemp("runtime")
    return save_model(model, folder / "m.safetensors"), export_onnx(model, folder / "m.onnx")


@pytest.fixture(scope="module")
def tagger(files):
    return OnnxTagger(files[1])


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(round(seconds * SAMPLE_RATE))).astype(np.float32)


def whole_clip_probabilities(model, wave: np.ndarray) -> np.ndarray:
    """The reference: the log-mel of the whole clip (one floor), its frames cut by chunk_spans."""
    with torch.no_grad():
        wave = torch.nn.functional.pad(torch.from_numpy(wave), (0, max(0, 2560 - wave.size)))
        mel = model.mel(wave[None])
        passes = []
        for start, end in chunk_spans(mel.shape[-1], 1012, 16):
            patches = (end - start) // 16
            tokens = model.tokens(mel[..., start : start + 16 * patches])
            passes.append((0, patches, torch.sigmoid(model.head(tokens.mean(dim=(1, 2))))[0]))
    return average_passes(1, passes, model.config.num_classes)[0]


def test_pass_inputs_give_the_whole_clips_frames():
    """Each pass's centred STFT, its context frames dropped, is the whole clip's, edges included."""
    wave = noise(25.0, seed=4)
    frontend = LogMelFrontend()
    whole = frontend.power_mel(torch.from_numpy(wave)[None])[0]
    inputs = list(pass_inputs([wave], 1012, 16))
    assert [patches for patches, _ in inputs] == [63, 63, 29]
    spans = chunk_spans(whole.shape[-1], 1012, 16)
    for (_, samples), (start, end) in zip(inputs, spans, strict=True):
        # The input's centred frames: the pass's and CONTEXT_FRAMES either side.
        assert 1 + samples.size // 160 == end - start + 2 * CONTEXT_FRAMES
        got = frontend.power_mel(torch.from_numpy(samples)[None])[0, :, 2:-2]
        torch.testing.assert_close(got, whole[:, start:end], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "n", [1, 200, 321, 2559, 2560, 161_759, 161_920, 162_400, 330_000, 400_017]
)
def test_streamed_pass_inputs_are_the_in_memory_ones(n):
    """Whatever the blocks, a clip's pass inputs are those cut from the whole clip, zero-padded
    to one patch, then reflected at each end."""
    wave = noise(n / SAMPLE_RATE, seed=n)
    padded = np.pad(np.pad(wave, (0, max(0, 2560 - n))), CONTEXT_SAMPLES, mode="reflect")
    spans = chunk_spans(1 + max(n, 2560) // 160, 1012, 16)
    want = [((e - s) // 16, padded[s * 160 : (e + 2 * CONTEXT_FRAMES - 1) * 160]) for s, e in spans]
    for block in (1, 300, 7_001, 160_000, n):
        if block == 1 and n > 3000:
            continue
        blocks = (wave[i : i + block] for i in range(0, n, block))
        got = list(pass_inputs(blocks, 1012, 16))
        assert [g[0] for g in got] == [w[0] for w in want]
        for (_, g), (_, w) in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)
    with pytest.raises(ValueError, match="no audio samples"):
        list(pass_inputs([np.zeros(0, np.float32)], 1012, 16))


def test_full_passes_are_handed_out_before_the_clip_ends():
    """Memory holds a pass, not the clip: a full pass leaves as soon as its samples are in."""
    arrived = []

    def blocks():
        for i in range(40):
            arrived.append(i)
            yield noise(1.0, seed=i)

    seen = [len(arrived) for _ in pass_inputs(blocks(), 1012, 16)]
    assert seen[:3] == [11, 21, 31]  # 10.14 s of samples complete the first pass's input
    assert len(seen) == 4


def test_average_passes_weights_by_patches():
    got = average_passes(2, [(0, 3, np.array([1.0])), (0, 1, np.array([0.0])), (1, 2, [0.5])], 1)
    np.testing.assert_allclose(got, [[0.75], [0.5]])


@pytest.mark.parametrize("seconds", [0.1, 0.16, 1.0, 10.11, 10.12, 12.0, 20.24, 30.0])
def test_onnx_equals_torch_and_the_whole_clip(model, tagger, seconds):
    """Graph and torch tag the same passes with the same features, short clip or long."""
    wave = noise(seconds)
    torch_probs = ModelTagger(model).probabilities([wave, noise(1.0)], batch_size=2)
    np.testing.assert_allclose(torch_probs[0], whole_clip_probabilities(model, wave), atol=1e-6)
    got = tagger.probabilities([wave, noise(1.0)], batch_size=2)
    np.testing.assert_allclose(got, torch_probs, rtol=0, atol=1e-5)


def test_a_pass_of_silence_has_its_own_floor(model, tagger):
    """The 120 dB floor is taken per pass, which streams (a whole-clip floor, which would lift
    the silent passes to 120 dB below the loud noise, needs the whole clip first): both
    runtimes and both readings agree."""
    wave = np.concatenate([5 * noise(12.0), np.zeros(14 * SAMPLE_RATE, np.float32)])
    torch_probs = ModelTagger(model).probabilities([wave])[0]
    blocks = np.array_split(wave, 37)
    for runtime in (ModelTagger(model), tagger):
        np.testing.assert_allclose(runtime.probabilities([wave])[0], torch_probs, atol=1e-5)
        np.testing.assert_allclose(runtime.stream_probabilities(blocks, 2), torch_probs, atol=1e-5)


def test_labels_from_the_metadata(tagger):
    assert tagger.labels == LABELS


def test_graph_without_labels_numbers_its_classes_in_the_library(tmp_path, caplog):
    from hear_ced.labels import class_names

    torch.manual_seed(1)
    bare = CED(CEDConfig(embed_dim=32, depth=1, num_heads=2, num_classes=3)).eval()
    with caplog.at_level(logging.WARNING):
        tagger = OnnxTagger(export_onnx(bare, tmp_path / "bare.onnx"))
        assert tagger.labels is None
        assert class_names(tagger.labels, 3) == ["class 0", "class 1", "class 2"]
    assert len([r for r in caplog.records if "class names" in r.getMessage()]) == 1


def test_tag_needs_names_for_a_graph_without_them_and_takes_them_from_labels(tmp_path, clips):
    """hear-ced tag --onnx refuses a nameless graph in one line; --labels names any model."""
    torch.manual_seed(1)
    bare = CED(CEDConfig(embed_dim=32, depth=1, num_heads=2, num_classes=3)).eval()
    graph = str(export_onnx(bare, tmp_path / "bare.onnx"))
    checkpoint = str(save_model(bare, tmp_path / "bare.safetensors"))
    clip = str(clips / "01.00.wav")
    refused = CliRunner().invoke(main, ["tag", clip, "--onnx", graph])
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert "carries no class names" in refused.stderr and "--labels FILE" in refused.stderr
    (tmp_path / "names.txt").write_text("dog\ncat\n\nbird\n")
    (tmp_path / "names.csv").write_text(
        'index,mid,display_name\n2,/m/c,bird\n0,/m/a,dog\n1,/m/b,"cat, domestic"\n'
    )
    expected = {"names.txt": ["dog", "cat", "bird"], "names.csv": ["dog", "cat, domestic", "bird"]}
    for name, names in expected.items():
        for model in (["--onnx", graph], ["--model", checkpoint, "--exact"]):
            args = ["tag", clip, *model, "--labels", str(tmp_path / name), "--json", "--top", "3"]
            done = CliRunner().invoke(main, args)
            assert done.exit_code == 0, done.output
            tags = json.loads(done.stdout)["tags"]
            assert sorted((t["index"], t["label"]) for t in tags) == list(enumerate(names))
    (tmp_path / "two.txt").write_text("dog\ncat\n")
    wrong = CliRunner().invoke(
        main, ["tag", clip, "--onnx", graph, "--labels", f"{tmp_path}/two.txt"]
    )
    assert wrong.exit_code == 2 and "holds 2 classes; the model has 3 outputs" in wrong.stderr


def test_not_a_hear_ced_export(model, tmp_path):
    embeddings = export_onnx(model, tmp_path / "e.onnx", output="embeddings")
    with pytest.raises(ValueError, match="is a graph of embeddings .*hear-ced embed --onnx"):
        OnnxTagger(embeddings)
    graph = onnx.load(str(tmp_path / "e.onnx"))
    graph.graph.output[0].name = "probabilities"
    graph.graph.node[-1].output[0] = "probabilities"
    del graph.metadata_props[:]
    onnx.save(graph, str(tmp_path / "plain.onnx"))
    with pytest.raises(ValueError, match="not a hear-ced export: .*metadata lacks sample_rate"):
        OnnxTagger(tmp_path / "plain.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a graph")
    with pytest.raises(ValueError, match="cannot load ONNX graph"):
        OnnxTagger(tmp_path / "junk.onnx")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Noise at 44.1 kHz stereo, 0.16 s to 30 s."""
    folder = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(3)
    for seconds in (0.16, 1, 10.11, 12, 30):
        audio = 0.1 * rng.standard_normal((round(seconds * 44100), 2))
        sf.write(folder / f"{seconds:05.2f}.wav", audio, 44100, subtype="FLOAT")
    return folder


def _records(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines()]


def test_tag_onnx_json_equals_torch(files, clips):
    checkpoint, graph = files
    runs = {
        name: CliRunner().invoke(main, ["tag", str(clips), "--json", "--top", "10", *options])
        for name, options in {
            "torch": ["--model", str(checkpoint), "--exact"],
            "onnx": ["--onnx", str(graph)],
        }.items()
    }
    for result in runs.values():
        assert result.exit_code == 0, result.output
    torch_records, onnx_records = (_records(r.stdout) for r in runs.values())
    assert [r["file"] for r in onnx_records] == [r["file"] for r in torch_records]
    assert len(onnx_records) == 5
    for got, want in zip(onnx_records, torch_records, strict=True):
        probs = {t["label"]: t["probability"] for t in got["tags"]}
        assert set(probs) == set(LABELS)
        for t in want["tags"]:
            assert abs(probs[t["label"]] - t["probability"]) < 1e-5, got["file"]


def test_tag_onnx_timeline_and_csv(files, clips):
    checkpoint, graph = files
    clip = str(clips / "12.00.wav")
    common = ["tag", clip, "--timeline", "--window", "2", "--hop", "1.5", "--top", "2"]
    onnx_run = CliRunner().invoke(main, [*common, "--json", "--onnx", str(graph)])
    torch_run = CliRunner().invoke(main, [*common, "--json", "--model", str(checkpoint), "--exact"])
    assert onnx_run.exit_code == 0 and torch_run.exit_code == 0, onnx_run.output
    got, want = _records(onnx_run.stdout)[0]["windows"], _records(torch_run.stdout)[0]["windows"]
    assert len(got) == len(want) == 8
    for g, w in zip(got, want, strict=True):
        assert (g["start"], g["end"]) == (w["start"], w["end"])
        assert [t["label"] for t in g["tags"]] == [t["label"] for t in w["tags"]]
        for gt, wt in zip(g["tags"], w["tags"], strict=True):
            assert abs(gt["probability"] - wt["probability"]) < 1e-5
    csv_run = CliRunner().invoke(main, [*common, "--csv", "--threshold", "0", "--onnx", str(graph)])
    assert csv_run.exit_code == 0, csv_run.output
    assert csv_run.stdout.splitlines()[0] == "file,start,end,rank,index,label,probability"
    assert len(csv_run.stdout.splitlines()) == 1 + 8 * 2


@pytest.mark.parametrize(
    "options",
    [["--model", "CHECKPOINT"], ["-m", "tiny"], ["--exact"]],
)
def test_onnx_refuses_torch_options(files, clips, options):
    checkpoint, graph = files
    options = [str(checkpoint) if o == "CHECKPOINT" else o for o in options]
    clip = str(clips / "01.00.wav")
    result = CliRunner().invoke(main, ["tag", clip, "--onnx", str(graph), *options])
    assert result.exit_code == 2
    assert "--onnx tags with an exported graph" in result.output
    assert options[0] in result.output


def _cli_in_process(args: list[str], prelude: str = "", stdin: bytes | None = None):
    """Run ``hear-ced ARGS`` in a fresh interpreter; the last stdout line says if torch loaded."""
    code = (
        f"{prelude}\nimport sys\nfrom hear_ced.cli import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit as exc:\n    status = exc.code\n"
        "print('torch loaded:', 'torch' in sys.modules, 'status:', status)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run(
        [sys.executable, "-c", code], input=stdin, capture_output=True, env=env, timeout=120
    )


def test_tag_onnx_never_imports_torch(files, clips):
    graph = files[1]
    done = _cli_in_process(
        ["tag", str(clips / "12.00.wav"), "--onnx", str(graph), "--json", "--timeline"]
    )
    lines = done.stdout.decode().splitlines()
    assert lines[-1] == "torch loaded: False status: 0", done.stderr.decode()
    assert len(json.loads(lines[0])["windows"]) == 11


def test_listen_onnx_never_imports_torch(files):
    pcm = (noise(3.0) * 32767).astype("<i2").tobytes()
    done = _cli_in_process(["listen", "--onnx", str(files[1]), "--json"], stdin=pcm)
    lines = done.stdout.decode().splitlines()
    assert lines[-1] == "torch loaded: False status: 0", done.stderr.decode()
    assert [json.loads(line)["start"] for line in lines[:-1]] == [0.0, 1.0]


def test_torch_model_without_torch_says_what_to_install(files, clips):
    prelude = "import sys\nsys.modules['torch'] = None"
    done = _cli_in_process(
        ["tag", str(clips / "01.00.wav"), "--model", str(files[0])], prelude=prelude
    )
    assert done.stdout.decode().splitlines()[-1].endswith("status: 1")
    stderr = done.stderr.decode()
    assert stderr.startswith("Error: torch is not installed: pip install 'hear-ced[torch]'")
    assert stderr.count("\n") == 1
    assert "--onnx" in stderr and "Traceback" not in stderr


def test_blocks_and_streamed_timelines_equal_the_whole_clip(
    model, tagger, long_stereo, monkeypatch
):
    """Blocks of the file give read_clip's samples; --timeline results do not move."""
    from hear_ced import audio
    from hear_ced.timeline import file_timelines, timeline

    monkeypatch.setattr(audio, "BLOCK_FRAMES", 44100)  # a block edge every second
    whole = audio.read_clip(long_stereo)
    blocks = list(audio.read_blocks(long_stereo))
    assert len(blocks) >= 40
    np.testing.assert_allclose(np.concatenate(blocks), whole, rtol=0, atol=1e-5)
    for runtime in (tagger, ModelTagger(model)):
        [line] = file_timelines(runtime, [str(long_stereo)], 10.0, 10.0, batch_size=8)
        want = timeline(runtime, [whole], 10.0, 10.0, batch_size=8)
        assert len(line.result.starts) == 4
        np.testing.assert_array_equal(line.result.ends, want.ends)
        np.testing.assert_allclose(line.result.probabilities, want.probabilities, atol=1e-5)


def test_streamed_files_report_what_is_wrong(tagger, model, tmp_path):
    """Errors found while reading block by block are the file's, the other files go on."""
    from hear_ced.runtime import tag_files
    from hear_ced.timeline import file_timelines

    late_nan = np.zeros(SAMPLE_RATE * 12, np.float32)
    late_nan[-5] = np.nan
    sf.write(tmp_path / "nan.wav", late_nan, SAMPLE_RATE, subtype="FLOAT")
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), SAMPLE_RATE)
    sf.write(tmp_path / "good.wav", noise(11.0), SAMPLE_RATE, subtype="FLOAT")
    (tmp_path / "bad.wav").write_bytes(b"RIFF not audio")
    paths = [str(tmp_path / n) for n in ("nan.wav", "empty.wav", "bad.wav", "good.wav")]
    for outcomes in (
        tag_files(tagger, paths),
        file_timelines(tagger, paths, 2.0, 2.0),
        file_timelines(ModelTagger(model), paths, 2.0, 2.0),
    ):
        errors = [o.error for o in outcomes]
        assert "NaN or infinite" in errors[0]
        assert "holds no audio samples" in errors[1]
        assert "cannot read audio file" in errors[2]
        assert errors[3] is None


def test_long_files_are_never_read_whole(tagger, model, tmp_path, monkeypatch):
    """tag and --timeline, on either runtime, read a long file block by block."""
    from hear_ced.runtime import tag_files
    from hear_ced.timeline import file_timelines

    path = tmp_path / "long.wav"
    sf.write(path, 0.1 * np.random.default_rng(7).standard_normal((44100 * 12, 2)), 44100)

    def read_whole(path):
        raise AssertionError(f"{path} was read whole")

    monkeypatch.setattr("hear_ced.audio.read_clip", read_whole)
    for runtime in (tagger, ModelTagger(model)):
        [tagged] = tag_files(runtime, [str(path)])
        assert tagged.error is None and tagged.result.shape == (10,)
    for runtime in (tagger, ModelTagger(model)):
        [line] = file_timelines(runtime, [str(path)], 4.0, 4.0)
        assert line.error is None and len(line.result.starts) == 3


@pytest.fixture(scope="module")
def long_stereo(tmp_path_factory):
    """40 s of 44.1 kHz stereo 16-bit FLAC: noise whose loudness changes every second."""
    path = tmp_path_factory.mktemp("long_stereo") / "forty.flac"
    rng = np.random.default_rng(11)
    loudness = np.repeat(10 ** rng.uniform(-3, -0.5, 40), 44100)[:, None]
    sf.write(path, loudness * rng.standard_normal((40 * 44100, 2)), 44100, subtype="PCM_16")
    return path


def test_plain_tag_streams_and_equals_the_whole_clip(files, model, long_stereo, monkeypatch):
    """tag on torch and --onnx: read block by block, the whole clip's log-mel cut into passes."""
    from hear_ced.audio import read_clip

    want = whole_clip_probabilities(model, read_clip(long_stereo))
    monkeypatch.setattr("hear_ced.audio.read_clip", lambda path: pytest.fail(f"{path} read whole"))
    checkpoint, graph = files
    for options in (["--model", str(checkpoint), "--exact"], ["--onnx", str(graph)]):
        args = ["tag", str(long_stereo), "--json", "--top", "10", "--batch-size", "2", *options]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        [record] = _records(result.stdout)
        got = {t["index"]: t["probability"] for t in record["tags"]}
        np.testing.assert_allclose([got[i] for i in range(10)], want, rtol=0, atol=1e-5)


def test_graphs_that_cannot_tag_are_refused_in_one_line(model, clips, tmp_path):
    """A graph of embeddings, or not a graph at all (torch never loaded)."""
    embeddings = export_onnx(model, tmp_path / "e.onnx", output="embeddings")
    (tmp_path / "junk.onnx").write_bytes(b"not a graph")
    expected = {
        embeddings: "is a graph of embeddings (export-onnx --output embeddings), not of "
        "probabilities: use it with hear-ced embed --onnx",
        tmp_path / "junk.onnx": "cannot load ONNX graph",
    }
    clip = str(clips / "01.00.wav")
    for graph, message in expected.items():
        done = _cli_in_process(["tag", clip, "--onnx", str(graph)])
        stderr = done.stderr.decode()
        assert stderr.startswith("Error: ") and stderr.count("\n") == 1, stderr
        assert message in stderr and "Traceback" not in stderr
        assert done.stdout.decode().splitlines()[-1] == "torch loaded: False status: 1"


MAPPED_BLOCKS = """
import ctypes, sys
import numpy as np
fields = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in fields.split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
def mapped_while_held(size):
    block = np.ones(size, np.uint8)
    return libc.mallinfo2().hblks
if sys.argv[1] == "fixed":
    from hear_ced.tagging import fix_mmap_threshold
    fix_mmap_threshold()
mapped_while_held(8 << 20)  # freeing it raises glibc's own threshold past 1 MB
print(mapped_while_held(1 << 20) - libc.mallinfo2().hblks)
"""


def test_the_torch_tagger_keeps_large_temporaries_out_of_the_heap():
    """After hear-ced tag's fix_mmap_threshold, a freed 8 MB block no longer sends 1 MB
    temporaries to the heap, where a long file's passes fragmented it (glibc only)."""
    import ctypes

    if not hasattr(ctypes.CDLL(None), "mallinfo2"):
        pytest.skip("the C library is not glibc 2.33 or later")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    held = {
        mode: subprocess.run(
            [sys.executable, "-c", MAPPED_BLOCKS, mode], capture_output=True, text=True, env=env
        ).stdout.strip()
        for mode in ("default", "fixed")
    }
    assert held == {"default": "0", "fixed": "1"}
