"""Shared fixtures: synthetic tasks and one hear_ced / hearbaseline run per test session.

heareval and tensorflow imports are slow, so each module runs the pipeline once
and the tests assert on that run. A test that asks for one of these runs is in the
slow tier whatever its module says: ``make test-fast`` never runs the pipeline.
"""

import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from hear_ced.eval.hear_run.schedule import run_hear
from hear_ced.eval.hear_run.settings import RunSettings
from hear_ced.eval.make_tasks import make_tasks

# Fixtures that run hear-eval-kit end to end (seconds to minutes each).
HEAREVAL_RUNS = frozenset({"ced_run", "baseline_run"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that needs a hear-eval-kit run is slow, wherever it lives."""
    for item in items:
        if HEAREVAL_RUNS.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@dataclass
class FinishedRun:
    settings: RunSettings
    results: dict  # task -> result record
    lines: list[str]  # what the run logged (progress), in order


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextmanager
def logged_lines() -> Iterator[list[str]]:
    """The messages the ``hear_ced.eval`` loggers log at INFO and above inside the block.

    (pytest's caplog is per test; the pipeline runs once per session.)
    """
    logger, handler = logging.getLogger("hear_ced.eval"), _Collect()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def evaluate(settings: RunSettings) -> FinishedRun:
    with logged_lines() as lines:
        results = run_hear(settings)
    return FinishedRun(settings, {r["task"]: r for r in results}, lines)


@pytest.fixture(scope="session")
def synthetic_tasks(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tasks")
    make_tasks(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from hear_ced.checkpoints import save_model
    from hear_ced.model import build_model

    path = tmp_path_factory.mktemp("model") / "student.safetensors"
    torch.manual_seed(0)  # torch seeds itself differently in every process
    save_model(build_model("tiny", embed_dim=32, depth=1, num_heads=2), path)
    return path


@pytest.fixture(scope="session")
def ced_run(synthetic_tasks, tiny_checkpoint, tmp_path_factory) -> FinishedRun:
    """hear_ced.custom on all three synthetic tasks, both probes, heareval's fastest grid."""
    settings = RunSettings(
        module="hear_ced.custom", model=str(tiny_checkpoint), tasks_dir=synthetic_tasks,
        out=tmp_path_factory.mktemp("ced_run"), grid="faster", grid_points=1, probe="both",
    )  # fmt: skip
    return evaluate(settings)


@pytest.fixture(scope="session")
def baseline_run(synthetic_tasks, tmp_path_factory) -> FinishedRun:
    """hearbaseline's naive model on one good scene task and three broken ones, heareval's MLP."""
    tasks = tmp_path_factory.mktemp("mixed_tasks")
    good = synthetic_tasks / "synth_scene_multiclass"
    shutil.copytree(good, tasks / "synth_scene_multiclass")
    shutil.copytree(good, tasks / "bad_no_metadata")
    (tasks / "bad_no_metadata" / "task_metadata.json").unlink()
    shutil.copytree(good, tasks / "bad_sample_rate", ignore=shutil.ignore_patterns("44100"))
    shutil.copytree(good, tasks / "bad_wav")
    (tasks / "bad_wav" / "44100" / "valid" / "0012.wav").write_bytes(b"RIFF not really a wav")
    out = tmp_path_factory.mktemp("baseline_run")
    # leftovers of an interrupted earlier run: half-written embeddings and predictions
    stale = out / "embeddings" / "hearbaseline" / "synth_scene_multiclass"
    (stale / "lightning_logs" / "version_3").mkdir(parents=True)
    (stale / "test.predicted-scores.json").write_text("{ half written")
    (stale / "train.embeddings.npy").write_bytes(b"truncated")
    settings = RunSettings(
        module="hearbaseline", model=None, tasks_dir=tasks, out=out,
        grid="faster", grid_points=1, probe="mlp",
    )  # fmt: skip
    return evaluate(settings)
