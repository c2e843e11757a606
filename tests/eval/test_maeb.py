"""``ced-eval maeb`` offline, on mteb tasks built here: a classification task whose audio is
encoded files (8 and 16 kHz WAV, as Hub datasets hold them) and a clustering task whose
audio is in-memory arrays (22.05 and 16 kHz)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from datasets import Audio, Dataset, DatasetDict
from mteb.abstasks.classification import AbsTaskClassification
from mteb.abstasks.clustering import AbsTaskClustering
from mteb.abstasks.task_metadata import TaskMetadata

from hear_ced.eval.cli import main

pytestmark = pytest.mark.filterwarnings("ignore")  # mteb's deprecation notes
RATES = (8000, 16000)


def tone(frequency: float, rate: int, seconds: float, seed: int) -> np.ndarray:
    """A noisy tone: classes differ by pitch, clips by length and noise."""
    t = np.arange(int(rate * seconds)) / rate
    noise = np.random.default_rng(seed).normal(0, 0.05, t.size)
    return (0.5 * np.sin(2 * np.pi * frequency * t) + noise).astype(np.float32)


def wav_cell(audio: np.ndarray, rate: int) -> dict:
    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, format="WAV")
    return {"bytes": buffer.getvalue(), "path": None}


def metadata(name: str, kind: str, category: str, score: str, split: str) -> TaskMetadata:
    return TaskMetadata(
        name=name, description="built in the tests", dataset={"path": f"local/{name}",
        "revision": "0"}, type=kind, category=category, eval_splits=[split],
        eval_langs=["zxx-Zxxx"], main_score=score, modalities=["audio"],
    )  # fmt: skip


class LocalTones(AbsTaskClassification):
    """Two pitches; encoded WAV bytes at two rates, decoded by the run (no torchcodec)."""

    metadata = metadata("LocalTones", "AudioClassification", "a2c", "accuracy", "test")
    input_column_name = "audio"
    n_experiments = 2
    samples_per_label = 4
    bad_row: int | None = None  # a test split row whose bytes are not audio

    def load_data(self, **kwargs) -> None:
        def split(count: int, seed: int) -> Dataset:
            rows = {"audio": [], "label": []}
            for i in range(count):
                label, rate = i % 2, RATES[i // 2 % 2]
                rows["audio"].append(wav_cell(tone(440 * (1 + 2 * label), rate, 0.5 + 0.1 * (i % 3), seed + i), rate))  # fmt: skip
                rows["label"].append(label)
            if seed and self.bad_row is not None:
                rows["audio"][self.bad_row] = {"bytes": b"not audio" * 10, "path": "broken.wav"}
            return Dataset.from_dict(rows).cast_column("audio", Audio())

        # a filter on the decoded audio, as some MAEB tasks' own dataset_transform has
        train = split(8, 0).filter(lambda row: len(row["audio"]["array"]) >= 4000)
        self.dataset = DatasetDict({"train": train, "test": split(6, 100)})
        self.data_loaded = True


class LocalClusters(AbsTaskClustering):
    """Two pitches as in-memory arrays at 22.05 and 16 kHz."""

    metadata = metadata("LocalClusters", "AudioClustering", "a2a", "v_measure", "test")
    input_column_name = "audio"
    label_column_name = "label"
    max_fraction_of_documents_to_embed = None
    n_clusters = 2

    def load_data(self, **kwargs) -> None:
        audio = [{"array": tone(300 * (1 + 3 * (i % 2)), rate, 0.4, i), "sampling_rate": rate}
                 for i, rate in enumerate([22050, 16000] * 4)]  # fmt: skip
        labels = [i % 2 for i in range(len(audio))]
        self.dataset = DatasetDict({"test": Dataset.from_dict({"audio": audio, "label": labels})})
        self.data_loaded = True


@pytest.fixture
def local_tasks(monkeypatch):
    """The local tasks in mteb's registry, so that --tasks names them."""
    registry = sys.modules["mteb.get_tasks"]._TASKS_REGISTRY
    for task in (LocalTones, LocalClusters):
        monkeypatch.setitem(registry, task.metadata.name, task)
    monkeypatch.setattr(LocalTones, "bad_row", None)


def run(out, checkpoint, *options):
    arguments = ["maeb", "--module", "hear_ced.custom", "--model", str(checkpoint),
                 "--name", "test/ced-small", "--revision", "r1", "--out", str(out), *options]  # fmt: skip
    return CliRunner().invoke(main, arguments)


@pytest.mark.slow  # mteb.evaluate imports sentence-transformers and transformers on first use
def test_end_to_end_a_failing_task_alone_mteb_files_and_resume(
    local_tasks, monkeypatch, small_checkpoint, tmp_path
):
    out = tmp_path / "run"
    revision = out / "mteb" / "results" / "test__ced-small" / "r1"
    monkeypatch.setattr(LocalTones, "bad_row", 3)
    first = run(out, small_checkpoint, "--tasks", "LocalTones,LocalClusters")
    assert first.exit_code == 1
    assert "1 task(s) failed: LocalTones" in first.output
    error = json.loads((out / "results" / "LocalTones.json").read_text())["error"]
    assert error.startswith("task LocalTones: split test row 3: cannot decode audio broken.wav")
    assert "\n" not in error and not (revision / "LocalTones.json").exists()
    clusters = (revision / "LocalClusters.json").stat().st_mtime_ns

    monkeypatch.setattr(LocalTones, "bad_row", None)
    second = run(out, small_checkpoint, "--tasks", "LocalTones,LocalClusters")
    assert second.exit_code == 0, second.output
    assert (revision / "LocalClusters.json").stat().st_mtime_ns == clusters  # skipped
    for task in ("LocalTones", "LocalClusters"):
        scores = json.loads((revision / f"{task}.json").read_text())
        assert scores["task_name"] == task
        assert 0.0 <= scores["scores"]["test"][0]["main_score"] <= 1.0
        assert json.loads((out / "results" / f"{task}.json").read_text())["status"] == "ok"
    meta = json.loads((revision / "model_meta.json").read_text())
    assert (meta["name"], meta["embed_dim"], meta["n_parameters"]) == ("test/ced-small", 32, 40_719)
    assert meta["modalities"] == ["audio"] and meta["revision"] == "r1"
    assert (revision / "run_settings.jsonl").is_file()
    assert "| LocalTones | AudioClassification | accuracy |" in second.output
    run_record = json.loads((out / "run.json").read_text())
    assert len(run_record["weights_sha256"]) == 64 and run_record["versions"]["mteb"]

    other = run(out, small_checkpoint, "--tasks", "LocalTones", "--revision", "r2")
    assert other.exit_code == 1
    assert "mteb_revision" in other.output and "--restart" in other.output


def test_clips_embed_as_if_alone_from_a_file_or_an_exported_folder(small_checkpoint, tmp_path):
    from hear_ced.checkpoints import load_model_file, save_huggingface
    from hear_ced.eval.maeb import CEDSceneEncoder, MaebSettings

    folder = save_huggingface(load_model_file(small_checkpoint), tmp_path / "hf")
    clips = [tone(440, 16000, seconds, 0) for seconds in (0.3, 1.2, 0.3)]
    embedded = []
    for model in (small_checkpoint, folder):
        settings = MaebSettings(module="hear_ced.custom", model=str(model), out=tmp_path / "o")
        encoder = CEDSceneEncoder(settings)
        together = encoder.embed(clips)
        alone = np.concatenate([encoder.embed([clip]) for clip in clips])
        np.testing.assert_allclose(together, alone, atol=1e-6)
        embedded.append(together)
        assert encoder.mteb_model_meta.name == f"hear-ced/{Path(model).stem}"
    np.testing.assert_allclose(*embedded, atol=1e-6)


def test_a_dataset_missing_offline_names_the_task_and_the_fetch(monkeypatch, small_checkpoint,
                                                                tmp_path):  # fmt: skip
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "empty-cache")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    result = run(tmp_path / "run", small_checkpoint, "--tasks", "BeijingOpera")
    assert result.exit_code == 1
    error = json.loads((tmp_path / "run" / "results" / "BeijingOpera.json").read_text())["error"]
    assert error.startswith("task BeijingOpera: dataset mteb/beijing-opera (revision fed432f")
    assert "--download-only" in error and "\n" not in error
    fetch = CliRunner().invoke(main, ["maeb", "--download-only", "--tasks", "BeijingOpera"])
    assert fetch.exit_code == 1 and "1 task(s) failed: BeijingOpera" in fetch.output


def test_download_only_loads_the_data_and_embeds_nothing(local_tasks, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["maeb", "--download-only", "--tasks", "LocalTones"])
    assert result.exit_code == 0, result.output
    assert list(tmp_path.iterdir()) == []


def test_published_sizes_model_meta_matches_the_docs(tmp_path):
    """The docs' ModelMeta table holds what ced-eval maeb writes for each published size."""
    from hear_ced.eval.maeb import MaebSettings, model_meta
    from hear_ced.model import CED, PUBLISHED_SIZES, variant_config

    docs = (Path(__file__).parents[2] / "docs" / "maeb.md").read_text()
    cells = [[cell.strip(" `") for cell in line.split("|")[1:-1]] for line in docs.splitlines()]
    rows = {row[0]: row[1:] for row in cells if len(row) == 1 + len(PUBLISHED_SIZES)}
    for column, size in enumerate(PUBLISHED_SIZES):
        model = CED(variant_config(size), initialize=False)  # build_model(size), uninitialised
        meta = model_meta(model, MaebSettings(module=size, model=None, out=tmp_path), "0" * 64)
        shown = {field: rows[field][column].replace(",", "") for field in rows}
        assert shown["name"] == meta.name == f"mispeech/ced-{size}"
        assert int(shown["n_parameters"]) == meta.n_parameters
        assert int(shown["embed_dim"]) == meta.embed_dim
        assert int(shown["memory_usage_mb"]) == meta.memory_usage_mb
        assert (meta.license, meta.open_weights, meta.training_datasets) == (
            "apache-2.0", True, {"AudioSet"}
        )  # fmt: skip


def test_bad_options_are_one_line(small_checkpoint, tmp_path):
    unknown = run(tmp_path / "a", small_checkpoint, "--tasks", "NoSuchTask")
    assert unknown.exit_code == 1 and "unknown mteb task" in unknown.output
    assert "Traceback" not in unknown.output
    no_out = CliRunner().invoke(main, ["maeb", "--module", "tiny"])
    assert no_out.exit_code == 2 and "--out" in no_out.output
