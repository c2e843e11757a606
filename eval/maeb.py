"""``ced-eval maeb``: mteb's audio tasks (the MAEB benchmark) on a hear_ced model.

mteb runs each task, its own code and scoring, on :class:`CEDSceneEncoder`: the
HEAR scene embedding (``hear_ced.hear``) of every clip as mteb's encoder
protocol asks, one (N, D) array per ``encode`` call. Clips are embedded each
by itself (equal lengths share a batch), so a clip's embedding does not depend
on its batch mates.

Audio is decoded here, not by mteb or ``datasets``: ``datasets``' ``Audio``
feature decodes with torchcodec, which needs FFmpeg and has no build for this
project's torch. While a run works, the feature decodes with this project's
reader instead (:func:`hear_ced.audio.read_clip`: soundfile, down-mixed, soxr
to 16 kHz), in ``datasets``' own shape (``{"array", "sampling_rate"}``), so the
tasks' own filters on audio run as well.

The run folder: ``run.json`` (the run's identity, checked on every resume,
:func:`hear_ced.eval.hear_run.identity.claim`), ``results/<task>.json`` (each
task's status, score or one-line error), ``report.md``/``report.csv``, and
mteb's own files under ``mteb/results/<org>__<model>/<revision>/``
(``<Task>.json``, ``model_meta.json``, ``run_settings.jsonl``), the folder a
pull request to the results repository copies. A finished task is not run
again; a failing one fails alone.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mteb.models import ModelMeta
from mteb.models.abs_encoder import AbsEncoder

from hear_ced.audio import read_clip, resampled
from hear_ced.checkpoints import weights_sha256
from hear_ced.common.files import remove_tree, write_json, write_text
from hear_ced.common.tables import csv_text, markdown_table
from hear_ced.eval.hear_run.identity import claim, lock_kind, restart, version_of
from hear_ced.eval.hear_run.settings import RunError, ced_module
from hear_ced.eval.hear_run.task_state import read_result
from hear_ced.eval.tasks import size_of_module
from hear_ced.frontend import SAMPLE_RATE
from hear_ced.hear import get_scene_embeddings, load

log = logging.getLogger(__name__)

BENCHMARK = "MAEB(v1, audio-only)"
PUBLISHED_REPO = "mispeech/ced-{size}"
VERSIONED = ("mteb", "datasets", "hear-ced", "torch", "numpy", "scikit-learn", "soxr")
CITATION = """@inproceedings{dinkel2024ced,
  title = {CED: Consistent Ensemble Distillation for Audio Tagging},
  author = {Dinkel, Heinrich and Wang, Yongqing and Yan, Zhiyong and Zhang, Junbo and Wang, Yujun},
  booktitle = {ICASSP 2024},
  year = {2024},
}"""


@dataclass
class MaebSettings:
    module: str  # hear_ced.<size>, a bare size, or hear_ced.custom (needs ``model``)
    model: str | None
    out: Path
    tasks: tuple[str, ...] = ()  # mteb task names; none: the whole ``benchmark``
    benchmark: str | None = None  # None: BENCHMARK
    model_options: dict = field(default_factory=dict)  # hear_ced.hear.load's options
    name: str | None = None  # mteb's model name, organisation/model
    revision: str | None = None
    batch_size: int = 16
    restart: bool = False

    def __post_init__(self) -> None:
        self.module = ced_module(self.module, self.model)
        if self.model and not Path(self.model).exists():
            raise RunError(f"model file or folder {self.model} does not exist")
        if self.name is not None and "/" not in self.name:
            raise RunError(
                f"--name {self.name!r} must read organisation/model, as mteb names models"
            )
        self.model = str(Path(self.model).resolve()) if self.model else None
        self.out = Path(self.out).resolve()

    @property
    def size(self) -> str | None:
        """The published size this run loads (None: whatever the checkpoint holds)."""
        return size_of_module(self.module)

    def result_path(self, task: str) -> Path:
        return self.out / "results" / f"{task}.json"


class UndecodableAudio(ValueError):
    """A row of a task whose audio cannot be read."""


def decode_audio(value: dict) -> dict:
    """One ``datasets`` audio cell (``{"bytes", "path"}``) -> ``{"array", "sampling_rate", "path"}``.

    The array is 16 kHz mono float32, as the model reads it: a task's filter
    sees the clip's true duration at the rate named beside it.
    """
    path, data = value.get("path"), value.get("bytes")
    if data is None and path is None:
        raise UndecodableAudio("audio cell holds neither bytes nor a path")
    try:
        array = read_clip(path if data is None else io.BytesIO(data))
    except ValueError as exc:
        reason = getattr(exc.__cause__, "error_string", None) or exc  # soundfile's own words
        raise UndecodableAudio(f"cannot decode audio {path or '(bytes)'}: {reason}") from exc
    return {"array": array, "sampling_rate": SAMPLE_RATE, "path": path}


@contextmanager
def project_audio_decoding() -> Iterator[None]:
    """``datasets``' ``Audio`` feature decodes with :func:`decode_audio` inside the block."""
    from datasets.features.audio import Audio

    original = Audio.decode_example

    def decode_example(self, value, token_per_repo_id=None):
        if not self.decode:
            raise RuntimeError("decoding is disabled for this Audio feature")
        return decode_audio(value) if isinstance(value, dict) and "array" not in value else value

    Audio.decode_example = decode_example
    try:
        yield
    finally:
        Audio.decode_example = original


def row_clip(rows, index: int, split: str) -> np.ndarray:
    """Row ``index``'s audio (``{"array", "sampling_rate"}``) as 16 kHz mono float32."""
    where = f"split {split} row {index}"
    try:
        item = rows[index]["audio"]
        array = np.asarray(item["array"], dtype=np.float32)
        rate = int(item["sampling_rate"])
    except UndecodableAudio as exc:
        raise UndecodableAudio(f"{where}: {exc}") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise UndecodableAudio(f"{where}: no audio array and sampling rate ({exc})") from exc
    if array.ndim > 1:
        array = array.mean(axis=0)  # (channels, samples), as datasets holds them
    if array.size == 0 or not np.isfinite(array).all():
        raise UndecodableAudio(f"{where}: empty, NaN or infinite audio")
    return np.concatenate([np.zeros(0, np.float32), *resampled([array], rate)])


class CEDSceneEncoder(AbsEncoder):
    """mteb's encoder protocol over a hear_ced model's HEAR scene embedding."""

    def __init__(self, settings: MaebSettings) -> None:
        self.embedder = load(settings.model or "", variant=settings.size, **settings.model_options)
        self.embedder.to("cuda" if torch.cuda.is_available() else "cpu")
        self.weights_sha256 = weights_sha256(self.embedder.model)
        self.mteb_model_meta = model_meta(self.embedder.model, settings, self.weights_sha256)

    def encode(self, inputs, *, task_metadata, hf_split: str, hf_subset: str,
               prompt_type=None, **kwargs: Any) -> np.ndarray:  # fmt: skip
        """Every clip of ``inputs`` (mteb's DataLoader of ``{"audio": [...]}`` rows) -> (N, D).

        The rows are read from the loader's dataset one by one, in its order,
        so an undecodable one is named by its position.
        """
        rows, size = inputs.dataset, inputs.batch_size or 1
        vectors = [np.zeros((0, self.embedder.scene_embedding_size), np.float32)]
        for first in range(0, len(rows), size):
            last = min(first + size, len(rows))
            vectors.append(self.embed([row_clip(rows, i, hf_split) for i in range(first, last)]))
        return np.concatenate(vectors)

    def embed(self, clips: list[np.ndarray]) -> np.ndarray:
        """Scene embeddings of clips of any lengths, each as if embedded alone."""
        out = np.empty((len(clips), self.embedder.scene_embedding_size), np.float32)
        by_length: dict[int, list[int]] = {}
        for index, clip in enumerate(clips):
            by_length.setdefault(len(clip), []).append(index)
        for indices in by_length.values():
            audio = torch.from_numpy(np.stack([clips[i] for i in indices]))
            out[indices] = get_scene_embeddings(audio, self.embedder).float().cpu().numpy()
        return out


def model_meta(model: torch.nn.Module, settings: MaebSettings, sha256: str) -> ModelMeta:
    """mteb's description of the model; a published size gets its repository's facts."""
    published = settings.size is not None and settings.model is None
    parameters = sum(p.numel() for p in model.parameters())
    default_name = (PUBLISHED_REPO.format(size=settings.size) if published
                    else f"hear-ced/{Path(settings.model).stem}")  # fmt: skip
    name = settings.name or default_name
    return ModelMeta(
        loader=None,
        name=name,
        revision=settings.revision or sha256[:12],
        release_date=None,
        languages=None,
        n_parameters=parameters,
        n_embedding_parameters=0,
        memory_usage_mb=round(parameters * 4 / 2**20),
        max_tokens=float("inf"),
        embed_dim=model.embed_dim,
        license="apache-2.0" if published else None,
        open_weights=True if published else None,
        public_training_code=None,
        public_training_data=None,
        framework=["PyTorch"],
        reference=f"https://huggingface.co/{name}" if published else None,
        similarity_fn_name="cosine",
        use_instructions=False,
        training_datasets={"AudioSet"} if published else None,
        modalities=["audio"],
        citation=CITATION,
    )


def run_identity(settings: MaebSettings, encoder: CEDSceneEncoder) -> dict:
    """What makes two MAEB runs comparable; one output folder holds one."""
    meta = encoder.mteb_model_meta
    return {
        "benchmark": "mteb",
        "module": settings.module,
        "model": settings.model,
        "model_options": settings.model_options,
        "weights_sha256": encoder.weights_sha256,
        "mteb_name": meta.name,
        "mteb_revision": meta.revision,
        "versions": {name: version_of(name) for name in VERSIONED},
    }


def selected_tasks(settings: MaebSettings) -> list:
    """mteb's task objects: ``--tasks`` by name, else the benchmark's."""
    import mteb

    try:
        if settings.tasks:
            return list(mteb.get_tasks(tasks=list(settings.tasks)))
        return list(mteb.get_benchmark(settings.benchmark or BENCHMARK).tasks)
    except (KeyError, ValueError) as exc:
        raise RunError(f"unknown mteb task or benchmark: {exc}") from exc


def run_maeb(settings: MaebSettings, tasks: list | None = None) -> list[dict]:
    """Evaluate each task (``tasks``: mteb task objects; default :func:`selected_tasks`)."""
    tasks = selected_tasks(settings) if tasks is None else tasks
    encoder = CEDSceneEncoder(settings)
    locks = lock_kind(settings.out, "auto")
    if settings.restart:
        restart(settings.out, locks)
        remove_tree(settings.out / "mteb")
    started = {"started": _now()}
    claim(settings.out, locks, run_identity(settings, encoder), first=started)
    results = []
    for task in tasks:
        name = task.metadata.name
        result = read_result(settings.result_path(name))
        if result.get("status") == "ok":
            log.info("%s: %s (finished earlier)", name, summary_line(result))
        else:
            result = run_task(task, encoder, settings)
            level = logging.INFO if result["status"] == "ok" else logging.WARNING
            log.log(level, "%s: %s (%.1f s)", name, summary_line(result), result["seconds"])
        results.append(result)
    return results


def run_task(task, encoder: CEDSceneEncoder, settings: MaebSettings) -> dict:
    """One mteb task: its scores in mteb's files, its status in ``results/<task>.json``."""
    import mteb

    name = task.metadata.name
    result = {"task": name, "type": task.metadata.type, "metric": task.metadata.main_score,
              "started": _now(), "error": None}  # fmt: skip
    start = time.time()
    try:
        with project_audio_decoding():
            outcome = mteb.evaluate(
                encoder, task, cache=mteb.ResultCache(settings.out / "mteb"),
                encode_kwargs={"batch_size": settings.batch_size}, show_progress_bar=False,
                overwrite_strategy="only-missing",
            )  # fmt: skip
        result["score"] = float(outcome.task_results[0].get_score())
    except Exception as exc:  # noqa: BLE001 -- mteb and datasets raise anything; the task fails alone
        log.debug("%s failed", name, exc_info=True)
        result["error"] = f"task {name}: {task_error(task, exc)}"
    finally:
        if task.data_loaded:
            task.unload_data()
    result["seconds"] = round(time.time() - start, 2)
    result["status"] = "failed" if result["error"] else "ok"
    result["finished"] = _now()
    write_json(settings.result_path(name), result)
    return result


def task_error(task, exc: Exception) -> str:
    """One line on what stopped a task; a dataset missing offline says how to fetch it."""
    import datasets

    text = " ".join(str(exc).split()) or type(exc).__name__
    if datasets.config.HF_HUB_OFFLINE and isinstance(exc, OSError):  # ConnectionError among them
        dataset = task.metadata.dataset
        return (f"dataset {dataset['path']} (revision {dataset.get('revision')}) is not in the "
                f"Hugging Face cache and HF_HUB_OFFLINE is set: fetch it with the network on, "
                f"ced-eval maeb --download-only --tasks {task.metadata.name} ({text})")  # fmt: skip
    return text if isinstance(exc, UndecodableAudio) else f"{type(exc).__name__}: {text}"


def download(settings: MaebSettings) -> list[dict]:
    """Load (and so cache) each task's dataset; embeds nothing."""
    results = []
    for task in selected_tasks(settings):
        name, start = task.metadata.name, time.time()
        result = {"task": name, "type": task.metadata.type, "error": None}
        try:
            with project_audio_decoding():
                task.load_data()
        except Exception as exc:  # noqa: BLE001 -- as run_task: one task's failure alone
            result["error"] = f"task {name}: {task_error(task, exc)}"
        finally:
            if task.data_loaded:
                task.unload_data()
        result["status"] = "failed" if result["error"] else "ok"
        log.info("%s: %s (%.1f s)", name, result["error"] or "cached", time.time() - start)
        results.append(result)
    return results


COLUMNS = ("task", "type", "metric", "score", "status")


def write_report(out: Path, results: list[dict]) -> dict[str, Path]:
    """``report.md`` and ``report.csv`` in ``out``: one row per task, mteb's main score."""
    table = [(r["task"], r.get("type") or "", r.get("metric") or "",
              "" if r.get("score") is None else f"{r['score']:.4f}", r["status"])
             for r in results]  # fmt: skip
    markdown = "\n\n".join([
        "# MAEB (mteb)", markdown_table(COLUMNS, table, align="lllrl"),
        "Scores are mteb's main score of each task (its own evaluation); not HEAR scores.",
    ])  # fmt: skip
    failed = [r for r in results if r["status"] != "ok"]
    if failed:
        markdown += "\n\nFailed tasks:\n\n" + "\n".join(f"- {r['error']}" for r in failed)
    return {
        "markdown": write_text(out / "report.md", markdown + "\n"),
        "csv": write_text(out / "report.csv", csv_text(COLUMNS, table)),
    }


def summary_line(result: dict) -> str:
    if result.get("status") != "ok":
        return f"FAILED: {result.get('error')}"
    return f"ok  {result.get('metric')}={result['score']:.4f}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
