"""End to end on the synthetic tasks: hear_ced and hearbaseline through hear-eval-kit."""

import hashlib
import json
import math
import pickle
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from hear_ced.eval import compat
from hear_ced.eval.hear_run.module_check import ced_size, gpu_problem
from hear_ced.eval.hear_run.schedule import run_hear, summary_table
from hear_ced.eval.hear_run.settings import RunError, RunSettings, TaskError
from hear_ced.eval.hear_run.task_state import (
    check_embeddings_finite,
    clean_predictions,
    heareval_scores,
)
from hear_ced.eval.leaderboard import LeaderboardError, leaderboard_row
from hear_ced.eval.report import write_report

from .conftest import evaluate

# The tests that use ced_run or baseline_run are in the slow tier (see conftest.py);
# the others check one step on hand-written files.


def test_every_task_of_the_ced_run_succeeds(ced_run):
    assert {task: r["status"] for task, r in ced_run.results.items()} == {
        "synth_event": "ok",
        "synth_scene_multiclass": "ok",
        "synth_scene_multilabel": "ok",
    }
    assert ced_run.lines[0].startswith("none of the 19 HEAR tasks")
    assert "32 Hz" not in ced_run.lines[1] and "16000 Hz, scene embedding 32" in ced_run.lines[1]
    progress = [line for line in ced_run.lines if line.startswith("[")]
    assert len(progress) == 3 and all(line.endswith(" s)") for line in progress)
    table = summary_table(list(ced_run.results.values())).splitlines()
    assert table[0] == "| task | metric | mlp % | linear % | status |" and len(table) == 2 + 3
    multilabel = ced_run.results["synth_scene_multilabel"]
    assert (f"| synth_scene_multilabel | mAP | {100 * multilabel['mlp']['score']:.2f} | "
            f"{100 * multilabel['linear']['score']:.2f} | ok |") in table  # fmt: skip
    module = json.loads((ced_run.settings.out / "module.json").read_text())
    assert module["sample_rate"] == 16000 and module["ced_size"] is None  # embed_dim 32


def _expected_random_ap(n: int, positives: int) -> float:
    """Expected average precision of a uniformly random ranking of n clips.

    The clip at rank i is positive with probability positives / n; given that, the
    other i - 1 clips above it hold (i - 1)(positives - 1) / (n - 1) positives on average.
    """
    return sum(1 / i + (positives - 1) / (n - 1) * (i - 1) / i for i in range(1, n + 1)) / n


def _random_ranking_map(task: Path, folds: list[str]) -> float:
    """Chance level of a k-fold multilabel task: random scores, mAP averaged over folds."""
    values = []
    for fold in folds:
        labels = list(json.loads((task / f"{fold}.json").read_text()).values())
        counts = Counter(label for clip in labels for label in clip)
        values.append(np.mean([_expected_random_ap(len(labels), k) for k in counts.values()]))
    return float(np.mean(values))


def _audio_blind_onset_f(task: Path) -> float:
    """Onset F-measure of giving each test clip the events of a training clip, unheard.

    Averaged over the rotations that give every test clip every training clip's events
    once: what knowing how this task's events look, without the audio, scores.
    """
    from heareval.score import available_scores

    test = json.loads((task / "test.json").read_text())
    train = list(json.loads((task / "train.json").read_text()).values())
    vocabulary = (task / "labelvocabulary.csv").read_text().splitlines()[1:]
    score = available_scores["event_onset_200ms_fms"](
        {line.split(",", 1)[1]: int(line.split(",", 1)[0]) for line in vocabulary}
    )
    values = []
    for shift in range(len(train)):
        given = {name: train[(i + shift) % len(train)] for i, name in enumerate(sorted(test))}
        values.append(dict(score(given, test))["f_measure"])
    return float(np.mean(values))


def _heareval_score_file(run, task: str) -> dict:
    folder = run.settings.out / "embeddings" / "hear_ced.custom" / task
    return json.loads((folder / "test.predicted-scores.json").read_text())


def test_scores_are_heareval_scores_and_beat_chance(ced_run):
    """heareval's MLP scores are its score files' numbers; the linear probe beats chance.

    heareval's MLP (its fastest grid, one point) learns next to nothing from these few
    clips, so only the linear probe is held to chance levels. The margins lie below what
    the probe scored with embeddings of several randomly initialised checkpoints (the
    session's checkpoint is one such) and well above the chance levels' noise.
    """
    tasks = ced_run.settings.tasks_dir
    multiclass = ced_run.results["synth_scene_multiclass"]
    assert multiclass["primary_metric"] == "top1_acc"
    scores = _heareval_score_file(ced_run, "synth_scene_multiclass")
    assert multiclass["mlp"]["score"] == scores["test"]["test_top1_acc"]
    assert multiclass["linear"]["score"] > 0.5  # 4 balanced classes: chance is 0.25
    kfold = ced_run.results["synth_scene_multilabel"]
    assert sorted(kfold["mlp"]["folds"]) == ["fold00", "fold01", "fold02"]
    fold_mean = sum(kfold["mlp"]["folds"].values()) / 3
    assert kfold["mlp"]["score"] == pytest.approx(fold_mean)  # heareval's aggregated mean
    scores = _heareval_score_file(ced_run, "synth_scene_multilabel")
    assert kfold["mlp"]["score"] == scores["aggregated_scores"]["test_mAP_mean"]
    assert sorted(kfold["linear"]["folds"]) == ["fold00", "fold01", "fold02"]
    chance = _random_ranking_map(tasks / "synth_scene_multilabel", sorted(kfold["linear"]["folds"]))
    assert kfold["linear"]["score"] > chance + 0.15, (kfold["linear"]["score"], chance)
    event = ced_run.results["synth_event"]
    assert event["primary_metric"] == "event_onset_200ms_fms"
    scores = _heareval_score_file(ced_run, "synth_event")
    assert event["mlp"]["score"] == scores["test"]["test_event_onset_200ms_fms"]
    assert event["linear"]["metric"] == "event_onset_200ms_fms"
    blind = _audio_blind_onset_f(tasks / "synth_event")
    assert event["linear"]["score"] > blind + 0.05, (event["linear"]["score"], blind)
    assert set(event["linear"]["folds"]["test"]["postprocessing"]) == {
        "median_filter_ms",
        "min_duration",
    }


def test_heareval_lightning_checkpoint_needs_the_allowlist(ced_run):
    embed = ced_run.settings.out / "embeddings" / "hear_ced.custom" / "synth_event"
    checkpoint = next(embed.glob("lightning_logs/version_*/checkpoints/*.ckpt"))
    torch.serialization.clear_safe_globals()
    with pytest.raises(pickle.UnpicklingError):
        torch.load(checkpoint, weights_only=True)
    compat.lightning_checkpoint_allowlist()
    assert "hyper_parameters" in torch.load(checkpoint, weights_only=True)


def test_rerun_resumes_without_redoing_anything(ced_run):
    before = {path.name: path.read_text() for path in (ced_run.settings.out / "results").iterdir()}
    start = time.time()
    again = evaluate(replace(ced_run.settings))
    assert time.time() - start < 5
    assert sum("(finished earlier)" in line for line in again.lines) == 3
    after = {path.name: path.read_text() for path in (ced_run.settings.out / "results").iterdir()}
    assert after == before


def test_output_folder_of_another_module_is_refused(ced_run):
    with pytest.raises(RunError, match="holds a run with other settings") as refused:
        run_hear(replace(ced_run.settings, module="hearbaseline", model=None))
    assert 'module: "hear_ced.custom" stored, "hearbaseline" wanted' in str(refused.value)
    assert "--restart" in str(refused.value)


def test_non_finite_heareval_score_fails_that_task_only(ced_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(ced_run.settings.out, copy)
    task = copy / "embeddings" / "hear_ced.custom" / "synth_scene_multiclass"
    scores = json.loads((task / "test.predicted-scores.json").read_text())
    scores["test"]["test_top1_acc"] = math.nan
    (task / "test.predicted-scores.json").write_text(json.dumps(scores))  # writes bare NaN
    (copy / "results" / "synth_scene_multiclass.json").unlink()
    rerun = evaluate(replace(ced_run.settings, out=copy, probe="mlp"))
    failed = rerun.results["synth_scene_multiclass"]
    assert failed["status"] == "failed" and "non-finite" in failed["errors"]["mlp"]
    assert rerun.results["synth_event"]["status"] == "ok"


def test_score_file_parsing_for_kfold_and_infinity(tmp_path):
    (tmp_path / "test.predicted-scores.json").write_text(
        '{"fold00": {"test_mAP": 0.5}, "fold01": {"test_mAP": 0.7},'
        ' "aggregated_scores": {"test_mAP_mean": 0.6}}'
    )
    assert heareval_scores(tmp_path, "mAP") == {
        "metric": "mAP", "score": 0.6, "folds": {"fold00": 0.5, "fold01": 0.7}
    }  # fmt: skip
    (tmp_path / "test.predicted-scores.json").write_text('{"test": {"test_aucroc": Infinity}}')
    with pytest.raises(TaskError, match="non-finite"):
        heareval_scores(tmp_path, "aucroc")


def test_bad_tasks_fail_alone_with_a_clear_message(baseline_run):
    results = baseline_run.results
    assert results["synth_scene_multiclass"]["status"] == "ok"
    errors = {task: r["errors"].get("embeddings", "") for task, r in results.items()}
    assert "missing task metadata" in errors["bad_no_metadata"]
    assert "no audio at the module's 44100 Hz" in errors["bad_sample_rate"]
    assert "(task has 16000)" in errors["bad_sample_rate"]
    assert "unreadable audio file" in errors["bad_wav"] and "0012.wav" in errors["bad_wav"]
    assert all(results[t]["status"] == "failed" for t in errors if t.startswith("bad_"))


def test_interrupted_run_restarts_from_a_clean_folder(baseline_run):
    task = baseline_run.settings.out / "embeddings" / "hearbaseline" / "synth_scene_multiclass"
    assert [p.name for p in (task / "lightning_logs").iterdir()] == ["version_0"]
    assert (task / "train.embeddings.npy").stat().st_size > 1000
    scores = json.loads((task / "test.predicted-scores.json").read_text())
    assert (
        scores["test"]["test_top1_acc"]
        == baseline_run.results["synth_scene_multiclass"]["mlp"]["score"]
    )


def test_report_compares_the_two_runs(ced_run, baseline_run, tmp_path):
    paths = write_report([ced_run.settings.out, baseline_run.settings.out], out_dir=tmp_path)
    markdown = paths["markdown"].read_text()
    assert "| hear_ced.custom (student, default) MLP |" in markdown
    assert "| hearbaseline (default) MLP |" in markdown
    multiclass = next(line for line in markdown.splitlines() if "synth_scene_multiclass" in line)
    baseline_score = baseline_run.results["synth_scene_multiclass"]["mlp"]["score"]
    assert f"{100 * baseline_score:.2f}" in multiclass
    assert "bad_wav" in markdown  # failed tasks are listed


def test_leaderboard_refuses_a_run_without_hear_tasks(ced_run):
    """Its tasks are synthetic: no HEAR task scored, no row to write, even a partial one."""
    for partial in (False, True):
        with pytest.raises(LeaderboardError, match="a score for none of the 19 tasks"):
            leaderboard_row(ced_run.settings.out, "m", "u", "2024-01-01", allow_partial=partial)


@pytest.mark.slow  # imports hear-eval-kit and hearvalidator
def test_a_module_without_the_hear_api_is_refused(synthetic_tasks, tmp_path):
    settings = RunSettings(module="json", model=None, tasks_dir=synthetic_tasks, out=tmp_path)
    with pytest.raises(RunError, match="module json does not work as a HEAR module") as refused:
        run_hear(settings)
    assert "must include a function: 'load_model'" in str(refused.value)  # hearvalidator's words
    assert not (tmp_path / "results").exists()


def test_clean_predictions_keeps_embeddings_and_drops_leftovers(tmp_path):
    (tmp_path / "lightning_logs" / "version_0").mkdir(parents=True)
    for name in ("test.predicted-scores.json", "prediction.log", "fold00.predictions.pkl"):
        (tmp_path / name).write_text("partial")
    (tmp_path / "train.embeddings.npy").write_bytes(b"kept")
    (tmp_path / ".done.embeddings").write_text("")
    clean_predictions(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".done.embeddings",
        "train.embeddings.npy",
    ]


def test_non_finite_embeddings_are_named_and_recomputed_next_time(tmp_path):
    (tmp_path / "train.embedding-dimensions.json").write_text("[3, 2]")
    values = np.memmap(tmp_path / "train.embeddings.npy", dtype=np.float32, mode="w+", shape=(3, 2))
    values[:] = 1.0
    values.flush()
    check_embeddings_finite(tmp_path, ["train"])  # finite: passes
    values[2, 1] = np.nan
    values.flush()
    (tmp_path / ".done.embeddings").write_text("")
    with pytest.raises(TaskError, match="NaN or Infinity embeddings \\(split train\\)"):
        check_embeddings_finite(tmp_path, ["train"])
    assert not (tmp_path / ".done.embeddings").exists()


def test_a_cuda_machine_without_pynvml_is_named_before_any_work(monkeypatch):
    assert gpu_problem() is None  # this machine: CPU, or CUDA with pynvml
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed
    assert "pip install nvidia-ml-py" in gpu_problem()


def test_ced_size_is_recognised_from_the_loaded_model():
    from types import SimpleNamespace

    from hear_ced.model import VARIANTS, variant_config

    def embedder(config):
        return SimpleNamespace(model=SimpleNamespace(config=config))

    assert ced_size(embedder(VARIANTS["small"])) == "small"
    assert ced_size(embedder(variant_config("tiny", depth=2))) is None
    assert ced_size(object()) is None


def test_results_record_audio_totals_and_run_json_provenance(ced_run):
    import soundfile as sf

    task = ced_run.settings.tasks_dir / "synth_event"
    files = list((task / "16000").rglob("*.wav"))
    result = ced_run.results["synth_event"]
    assert result["clips"] == len(files)
    assert result["audio_seconds"] == pytest.approx(sum(sf.info(str(p)).duration for p in files))
    assert set(result["seconds"]) == {"embeddings", "mlp", "linear"} and result["device"] == "cpu"
    run = json.loads((ced_run.settings.out / "run.json").read_text())
    digest = hashlib.sha256(Path(ced_run.settings.model).read_bytes()).hexdigest()
    assert run["weights_sha256"] == digest and run["model_options"] == {}
    assert run["package_version"] == run["provenance"]["versions"]["hear_ced"]
    provenance = run["provenance"]
    assert provenance["device"] == "cpu" and provenance["embedding_method"] == "default"
    assert provenance["weights_sha256"] == digest
    assert provenance["versions"]["torch"] == torch.__version__
    assert provenance["versions"]["numpy"] == np.__version__


def test_corrupt_score_file_fails_only_its_task_and_a_corrupt_result_is_redone(ced_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(ced_run.settings.out, copy)
    task = copy / "embeddings" / "hear_ced.custom" / "synth_scene_multiclass"
    (task / "test.predicted-scores.json").write_text('{"test": {"test_top1')  # cut short
    (copy / "results" / "synth_scene_multiclass.json").write_text("{ not json")
    rerun = evaluate(replace(ced_run.settings, out=copy))
    failed = rerun.results["synth_scene_multiclass"]
    assert failed["status"] == "failed" and "unreadable" in failed["errors"]["mlp"]
    assert "test.predicted-scores.json" in failed["errors"]["mlp"]
    assert failed["linear"]["score"] == ced_run.results["synth_scene_multiclass"]["linear"]["score"]
    assert not (task / "prediction-done.json").exists()  # the next run predicts again
    assert rerun.results["synth_event"]["status"] == "ok"
    assert sum("(finished earlier)" in line for line in rerun.lines) == 2


def test_score_file_without_the_metric_names_it(tmp_path):
    (tmp_path / "prediction-done.json").write_text("{}")
    (tmp_path / "test.predicted-scores.json").write_text('{"test": {"test_mAP": 0.5}}')
    with pytest.raises(TaskError, match="has no test_top1_acc score"):
        heareval_scores(tmp_path, "top1_acc")
    assert not (tmp_path / "prediction-done.json").exists()
    with pytest.raises(TaskError, match="heareval wrote no test.predicted-scores.json"):
        heareval_scores(tmp_path, "top1_acc")


def test_heareval_predictions_entry_point_gives_the_runs_score(ced_run, tmp_path):
    task = "synth_scene_multiclass"  # the event tasks' own shim runs in ced_run's event task
    embed = tmp_path / task
    shutil.copytree(ced_run.settings.out / "embeddings" / "hear_ced.custom" / task, embed)
    clean_predictions(embed)
    command = [sys.executable, "-c", "from hear_ced.eval.cli import main; main()", "heareval-predictions",
               str(embed), "--grid", "faster", "--grid-points", "1"]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    score = heareval_scores(embed, "top1_acc")["score"]
    assert score == ced_run.results[task]["mlp"]["score"]  # heareval is seeded
