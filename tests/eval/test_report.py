"""Reports of hand-built run folders: like-for-like marks, means, measured and estimated times.

The run folders follow the runner's run.json / results schema (``provenance``,
``clips``, ``audio_seconds``). Expected numbers are worked out by hand in the comments.
"""

import csv
import io
import json

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from hear_ced.eval.cli import main
from hear_ced.eval.hear_run.schedule import summary_table
from hear_ced.eval.hear_run.task_state import summary_line
from hear_ced.eval.leaderboard import leaderboard_row, method_note
from hear_ced.eval.report import (
    ReportError,
    aggregate_rows,
    build_rows,
    estimate_benchmark,
    fit_rates,
    load_run,
    name_runs,
    run_timings,
    write_report,
)
from hear_ced.eval.tasks import TASK_BY_DIRECTORY

SHA = "0123456789abcdef" * 4


def write_run(folder, results: dict, method="default", size="mini"):
    """A run folder of hear_ced.<size>; ``results``: task -> (mlp, linear, clips, audio s, seconds)."""
    (folder / "results").mkdir(parents=True)
    options = {"published": True} if method == "published" else {}
    info = {"module": f"hear_ced.{size}", "model": f"/weights/ced_{size}.safetensors"}
    info.update(grid="default", grid_points=8, weights_sha256=SHA, model_options=options,
                package_version="0.1.0", tasks_dir="/tasks",
                provenance={"versions": {"torch": "2.13.0", "heareval": "2021.1.3"},
                            "device": "cuda: NVIDIA H100", "weights_sha256": SHA,
                            "embedding_method": method, "model_options": options,
                            "started": "2026-11-20T08:00:00+00:00"})  # fmt: skip
    (folder / "run.json").write_text(json.dumps(info))
    for task, (mlp, linear, clips, audio, seconds) in results.items():
        hear_task = TASK_BY_DIRECTORY.get(task)
        result = {"task": task, "status": "ok", "errors": {},
                  "primary_metric": hear_task.primary_metric if hear_task else "top1_acc",
                  "embedding_type": hear_task.embedding_type if hear_task else "scene",
                  "mlp": {"score": mlp}, "linear": {"score": linear}, "seconds": seconds,
                  "clips": clips, "audio_seconds": audio}  # fmt: skip
        (folder / "results" / f"{task}.json").write_text(json.dumps(result))
    return folder


def every_task(score=0.9):
    timing = {"embeddings": 10.0, "mlp": 20.0, "linear": 5.0}
    return {task: (score, score - 0.1, 10, 50.0, timing) for task in TASK_BY_DIRECTORY}


# published CED-Mini: Beehive 59.17, ESC-50 95.35, Vocal Imitation 20.37
THREE_TASKS = {
    "beehive_states_fold0-v2-full": (0.5, 0.4, 576, 345600.0, {"embeddings": 3000.0}),
    "beehive_states_fold1-v2-full": (0.7, 0.6, 576, 345600.0, {"embeddings": 3000.0}),
    "esc50-v2.0.0-full": (0.9, 0.8, 2000, 10000.0,
                          {"embeddings": 100.0, "mlp": 400.0, "linear": 100.0}),
    "vocal_imitation-v1.1.3-full": (0.3, 0.2, 5000, 50000.0,
                                    {"embeddings": 300.0, "mlp": 600.0, "linear": 250.0}),
}  # fmt: skip

NOT_LIKE_FOR_LIKE = {
    "Beehive": ("no", "long"),
    "DCASE 2016": ("no", "event"),
    "FSD50K": ("partly", "variable"),
    "GTZAN Genre": ("no", "long"),
    "GTZAN Music/Speech": ("no", "long"),
    "Maestro 5h": ("no", "event"),
    "Vocal Imitation": ("no", "long"),
    "VoxLingua107 top 10": ("no", "long"),
}


def test_default_run_marks_exactly_the_event_and_long_clip_tasks(tmp_path):
    run = load_run(write_run(tmp_path / "run", every_task()))
    assert run.embedding_method == "default"
    rows = build_rows([run])
    cells = {r["task"]: r["runs"][0] for r in rows}
    marked = {task: (c["like_for_like"], c["caveat"]) for task, c in cells.items() if c["caveat"]}
    assert marked == NOT_LIKE_FOR_LIKE
    assert all(c["like_for_like"] == "yes" for t, c in cells.items() if t not in NOT_LIKE_FOR_LIKE)
    markdown = write_report([run.folder])["markdown"].read_text()
    assert (
        "- **hear_ced.mini (ced_mini, default)**: embedding method `default`; beside the "
        "published CED-Mini scores." in markdown
    )
    assert "| Vocal Imitation | mAP | 90.00 | 80.00 | 20.37 | +69.63 | no [2] |" in markdown
    assert "| DCASE 2016 | event_onset_200ms_fms |" in markdown and "| no [1] |" in markdown
    assert "| FSD50K | mAP | 90.00 | 80.00 | 63.88 | +26.12 | partly [3] |" in markdown
    assert "1. event task: each published timestamp vector comes from its own 0.48 s" in markdown
    assert "2. clips over 10.11 s: the published scene embeddings average" in markdown


def test_published_run_is_like_for_like_everywhere(tmp_path):
    run = load_run(write_run(tmp_path / "run", every_task(), method="published"))
    assert run.embedding_method == "published"
    cells = [r["runs"][0] for r in build_rows([run])]
    assert {c["like_for_like"] for c in cells} == {"yes"} and not any(c["caveat"] for c in cells)
    markdown = write_report([run.folder])["markdown"].read_text()
    assert "embedding method `published`" in markdown and "Not like for like" not in markdown


def test_aggregate_rows_match_hand_computed_means(tmp_path):
    rows = build_rows([load_run(write_run(tmp_path / "run", THREE_TASKS))])
    means = {row["task"]: row["runs"][0] for row in aggregate_rows(rows)}
    every = means["mean, all tasks (3)"]
    # Beehive (0.5 + 0.7) / 2 = 0.6; MLP (0.6 + 0.9 + 0.3) / 3 = 0.6; linear (0.5 + 0.8 + 0.2) / 3
    assert every["mlp"] == pytest.approx(0.6) and every["linear"] == pytest.approx(0.5)
    assert every["difference"] is None
    published = means["mean, tasks with a published score (3)"]
    # (0.5917 + 0.9535 + 0.2037) / 3 = 0.582967; (0.0083 - 0.0535 + 0.0963) / 3 = 0.017033
    assert published["published"] == pytest.approx(0.5829667, abs=1e-6)
    assert published["difference"] == pytest.approx(0.0170333, abs=1e-6)
    like = means["mean, like for like only (1)"]  # ESC-50 alone
    assert like["mlp"] == pytest.approx(0.9) and like["difference"] == pytest.approx(-0.0535)
    paths = write_report([tmp_path / "run"])
    assert "| **mean, like for like only (1)** | - | 90.00 | 80.00 | 95.35 | -5.35 |" in (
        paths["markdown"].read_text()
    )
    table = {r["task"]: r for r in csv.DictReader(io.StringIO(paths["csv"].read_text()))}
    assert float(table["mean, tasks with a published score (3)"]["difference"]) == pytest.approx(
        0.017033, abs=1e-6
    )
    published_run = load_run(write_run(tmp_path / "published", THREE_TASKS, method="published"))
    means = {row["task"]: row["runs"][0] for row in aggregate_rows(build_rows([published_run]))}
    assert means["mean, like for like only (3)"]["difference"] == pytest.approx(0.0170333, abs=1e-6)


def test_measured_times_beside_the_recorded_sizes(tmp_path):
    run = load_run(write_run(tmp_path / "run", THREE_TASKS))
    markdown = write_report([run.folder])["markdown"].read_text()
    assert "run.json" in markdown and "cuda: NVIDIA H100" in markdown  # the device of the rates
    # 2000 clips, 10000 s (2.78 h) of audio; 100 s, 400 s and 100 s of the steps, 0.17 h in all
    assert (
        "| esc50-v2.0.0-full | 2,000 | 2.78 | recorded by the run | 100.0 | 400.0 | 100.0 | 0.17 "
        "| measured |" in markdown
    )


# times at exact rates: embeddings 0.01 s per second of audio, MLP 0.1 s and linear probe
# 0.02 s per clip
def exact_times(clips, audio):
    return {"embeddings": 0.01 * audio, "mlp": 0.1 * clips, "linear": 0.02 * clips}


FOUR_TASKS = {
    task: (0.5, 0.4, clips, audio, exact_times(clips, audio))
    for task, clips, audio in (("esc50-v2.0.0-full", 100, 500.0),
                               ("tfds_crema_d-1.0.0-full", 200, 2000.0),
                               ("libricount-v1.0.0-hear2021-full", 1000, 1000.0),
                               ("mridangam_stroke-v1.5-full", 50, 3000.0))
}  # fmt: skip


def test_estimate_from_fixture_rates_matches_hand_computation(tmp_path):
    tasks = tmp_path / "tasks"
    for name, clips, seconds in (("gunshot_triangulation-v1.0-full", 3, 0.5),
                                 ("dcase2016_task2-hear2021-full", 2, 2.0)):  # fmt: skip
        for index in range(clips):
            path = tasks / name / "16000" / "test" / f"{index}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, np.zeros(int(16000 * seconds), dtype=np.float32), 16000)
        (tasks / name / "task_metadata.json").write_text(json.dumps({"splits": ["test"]}))
        listed = {f"{index}.wav": [] for index in range(clips)}
        (tasks / name / "test.json").write_text(json.dumps(listed))
    # a file the split does not list (a writer's temporary one) is not a clip
    sf.write(path.parent / ".0.wav.x.tmp.wav", np.zeros(160, dtype=np.float32), 16000)
    run = load_run(write_run(tmp_path / "run", FOUR_TASKS))
    timings = run_timings(run)
    rates = fit_rates(timings)
    assert sorted(rates) == [("embeddings", "scene"), ("linear", "scene"), ("mlp", "scene")]
    assert rates[("embeddings", "scene")].unit == "audio"
    assert rates[("embeddings", "scene")].per_unit == pytest.approx(0.01)
    assert rates[("mlp", "scene")].unit == "clip"
    assert rates[("mlp", "scene")].per_unit == pytest.approx(0.1)
    rows = {r.task: r for r in estimate_benchmark(timings, tasks)}
    esc = rows["esc50-v2.0.0-full"]  # measured: its own times
    assert esc.seconds == pytest.approx({"embeddings": 5.0, "mlp": 10.0, "linear": 2.0})
    assert set(esc.cost_source.values()) == {"measured"}
    speech = rows["speech_commands-v0.0.2-full"]  # registry: about 100k clips of 1 s
    assert speech.seconds == pytest.approx({"embeddings": 1000, "mlp": 10000, "linear": 2000})
    assert speech.total == pytest.approx(13000)
    assert set(speech.cost_source.values()) == {"run rate"}
    beehive = rows["beehive_states_fold1-v2-full"]  # registry: 576 clips of 600 s
    assert beehive.seconds == pytest.approx({"embeddings": 3456, "mlp": 57.6, "linear": 11.52})
    gunshot = rows["gunshot_triangulation-v1.0-full"]  # counted: 3 clips, 1.5 s
    assert gunshot.size.clips == 3 and gunshot.size.audio_seconds == pytest.approx(1.5)
    assert gunshot.seconds == pytest.approx({"embeddings": 0.015, "mlp": 0.3, "linear": 0.06})
    fsd50k = rows["fsd50k-v1.0-full"]  # durations unknown: no embeddings estimate
    assert fsd50k.seconds["embeddings"] is None and fsd50k.seconds["mlp"] == pytest.approx(5100)
    dcase = rows["dcase2016_task2-hear2021-full"]  # event task: no event task measured
    assert dcase.seconds == {"embeddings": None, "mlp": None, "linear": None}
    assert dcase.size.clips == 2
    assert rows["beijing_opera-v1.0-hear2021-full"].size is None
    markdown = write_report([run.folder], tasks_dir=tasks)["markdown"].read_text()
    assert "are an estimate, not a measurement**" in markdown
    assert "- mlp, scene tasks: 0.1 s per clip (mean over 4 task(s))" in markdown
    # 1000 s, 10000 s, 2000 s; 13000 s in hours
    assert "| speech_commands-v0.0.2-full | 100,000 | 27.78 | registry: about 100k clips of 1 s " \
           "| 1,000.0 | 10,000.0 | 2,000.0 | 3.61 | run rate |" in markdown  # fmt: skip
    assert "Not estimable (size or cost unknown)" in markdown and "beijing_opera" in markdown


def test_a_rate_is_total_seconds_over_total_units(tmp_path):
    timings = run_timings(load_run(write_run(tmp_path / "run", THREE_TASKS)))
    rates = fit_rates(timings)
    # MLP measured on ESC-50 and Vocal Imitation only: (400 + 600) s / (2000 + 5000) clips
    assert rates[("mlp", "scene")].per_unit == pytest.approx(1 / 7)
    assert rates[("linear", "scene")].per_unit == pytest.approx(350 / 7000)
    # embeddings: (3000 + 3000 + 100 + 300) s / (2 x 345600 + 10000 + 50000) s of audio
    assert rates[("embeddings", "scene")].per_unit == pytest.approx(6400 / 751200)
    rows = {r.task: r for r in estimate_benchmark(timings)}
    assert rows["speech_commands-v0.0.2-full"].seconds["mlp"] == pytest.approx(100000 / 7)
    # Beehive measured its embeddings, not its MLP
    assert rows["beehive_states_fold0-v2-full"].seconds["embeddings"] == 3000.0
    assert rows["beehive_states_fold0-v2-full"].seconds["mlp"] == pytest.approx(576 / 7)
    assert rows["beehive_states_fold0-v2-full"].cost_source["mlp"] == "run rate"


def test_a_run_folder_not_written_by_ced_eval_hear_is_refused(tmp_path):
    run = write_run(tmp_path / "run", THREE_TASKS)
    info = json.loads((run / "run.json").read_text())
    del info["provenance"]
    (run / "run.json").write_text(json.dumps(info))
    with pytest.raises(ReportError, match="lacks provenance"):
        load_run(run)
    result = CliRunner().invoke(main, ["report", str(run)])
    assert result.exit_code == 1 and "lacks provenance" in result.output
    assert "Traceback" not in result.output


def test_a_task_without_recorded_sizes_has_no_rates(tmp_path):
    tasks = {"esc50-v2.0.0-full": (0.9, 0.8, None, None, {"embeddings": 2.5, "mlp": 4.0}),
             "dcase2016_task2-hear2021-full": (0.8, None, None, None, {"embeddings": 1.0})}  # fmt: skip
    markdown = write_report([write_run(tmp_path / "run", tasks)])["markdown"].read_text()
    # no size, so no rate for the MLP of the event task; 6.5 s in all is 0.00 h
    assert "| esc50-v2.0.0-full | - | - | unknown | 2.5 | 4.0 | 0.00 | measured |" in markdown
    assert (
        "| dcase2016_task2-hear2021-full | - | - | unknown | 1.0 | - | - | measured |" in markdown
    )
    assert "no rate, no estimate" in markdown


def test_corrupt_result_fails_its_task_only(tmp_path):
    run = write_run(tmp_path / "run", THREE_TASKS)
    (run / "results" / "esc50-v2.0.0-full.json").write_text("{ half written")
    markdown = write_report([run])["markdown"].read_text()
    assert "| ESC-50 | top1_acc | - | - | 95.35 | - | yes |" in markdown
    assert "- esc50-v2.0.0-full: {'result':" in markdown and "not readable JSON" in markdown


def test_leaderboard_row_names_a_non_default_method(tmp_path):
    default = write_run(tmp_path / "default", every_task())
    published = write_run(tmp_path / "published", every_task(), method="published")
    assert method_note(load_run(default)) is None
    assert "'published' embedding method" in method_note(load_run(published))
    assert leaderboard_row(published, "m", "u", "2024-05-01")["ESC-50"] == "0.9000"
    result = CliRunner().invoke(main, ["leaderboard", str(published), "--name", "M", "--url", "U",
                                       "--date", "2024-05-01", "--no-header"])  # fmt: skip
    assert result.exit_code == 0 and result.stdout.startswith("M,U,2024-05-01,0.9000,")
    assert "'published' embedding method" in result.stderr


def test_report_command_takes_a_tasks_folder(tmp_path):
    run = write_run(tmp_path / "run", THREE_TASKS)
    missing = CliRunner().invoke(main, ["report", str(run), "--tasks-dir", str(tmp_path / "no")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    (tmp_path / "tasks").mkdir()
    ok = CliRunner().invoke(main, ["report", str(run), "--tasks-dir", str(tmp_path / "tasks")])
    assert ok.exit_code == 0 and "an estimate for the whole benchmark" in ok.output


# the first two of THREE_TASKS' tasks (Beehive, ESC-50), other scores
TWO_TASKS = {
    "beehive_states_fold0-v2-full": (0.3, 0.2, 576, 345600.0, {"embeddings": 3000.0}),
    "beehive_states_fold1-v2-full": (0.5, 0.4, 576, 345600.0, {"embeddings": 3000.0}),
    "esc50-v2.0.0-full": (0.8, 0.7, 2000, 10000.0, {"embeddings": 100.0, "mlp": 400.0}),
}


def test_means_of_runs_with_different_tasks_count_what_they_average(tmp_path):
    three = write_run(tmp_path / "three", THREE_TASKS)
    two = write_run(tmp_path / "two", TWO_TASKS, method="published")
    result = CliRunner().invoke(main, ["report", str(three), str(two), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    table = [line for line in result.output.splitlines() if line.startswith("| **mean")]
    # shared: Beehive and ESC-50. three: MLP (0.6 + 0.9) / 2, linear (0.5 + 0.8) / 2;
    # published (0.5917 + 0.9535) / 2 = 77.26, difference 75.00 - 77.26; two: MLP (0.4 + 0.8) / 2
    assert table[0] == ("| **mean, shared tasks (2)** | - | 75.00 | 65.00 | - | - |  "
                        "| 60.00 | 50.00 | - | - |  |")  # fmt: skip
    assert table[1] == ("| **mean, shared tasks with a published score (2)** | - | 75.00 | 65.00 "
                        "| 77.26 | -2.26 |  | 60.00 | 50.00 | 77.26 | -17.26 |  |")  # fmt: skip
    # like for like in both: ESC-50 only (Beehive's 600 s clips are not, in the default run)
    assert table[2].startswith("| **mean, shared tasks like for like only (1)** | - | 90.00 |")
    assert len(table) == 3  # a run's tasks the other lacks enter no mean
    vocal = next(line for line in result.output.splitlines() if "| Vocal Imitation |" in line)
    assert vocal.endswith("| 30.00 | 20.00 | 20.37 | +9.63 | no [1] | - | - | 20.37 | - | yes |")
    means = {(r["run"], r["task"]): r for r in csv.DictReader((tmp_path / "report.csv").open())}
    shared = means[("hear_ced.mini (ced_mini, default)", "mean, shared tasks (2)")]
    assert shared["mlp_tasks"] == "2" and float(shared["mlp"]) == pytest.approx(0.75)


def test_a_mean_over_fewer_tasks_than_its_row_gives_its_count(tmp_path):
    tasks = dict(THREE_TASKS)
    tasks["esc50-v2.0.0-full"] = (0.9, None, 2000, 10000.0, {"embeddings": 100.0})  # MLP only
    markdown = write_report([write_run(tmp_path / "run", tasks)])["markdown"].read_text()
    # linear: (0.5 + 0.2) / 2 over Beehive and Vocal Imitation
    assert "| **mean, all tasks (3)** | - | 60.00 | 35.00 (2) | - | - |  |" in markdown
    # The text above the table names the marks the table uses.
    assert "counted in parentheses in their names, as in `mean, all tasks (3)`" in markdown
    assert "brackets" not in markdown


def test_four_sizes_each_beside_their_published_score(tmp_path):
    sizes = ("tiny", "mini", "small", "base")
    folders = [write_run(tmp_path / size, THREE_TASKS, method="published", size=size)
               for size in sizes]  # fmt: skip
    paths = write_report(folders, out_dir=tmp_path / "out")
    markdown = paths["markdown"].read_text()
    for size in sizes:
        assert f"| hear_ced.{size} (ced_{size}, published) published CED-{size.capitalize()} |" in (
            markdown
        )
    esc = next(line for line in markdown.splitlines() if line.startswith("| ESC-50 |"))
    # published ESC-50: Tiny 95.80, Mini 95.35, Small 95.95, Base 96.65
    assert esc == ("| ESC-50 | top1_acc | 90.00 | 80.00 | 95.80 | -5.80 | yes | 90.00 | 80.00 "
                   "| 95.35 | -5.35 | yes | 90.00 | 80.00 | 95.95 | -5.95 | yes | 90.00 | 80.00 "
                   "| 96.65 | -6.65 | yes |")  # fmt: skip
    assert markdown.count("### hear_ced.") == len(sizes)  # timings per run
    assert len(list(csv.DictReader(paths["csv"].open()))) == 4 * (3 + 3)  # 3 tasks, 3 means


def test_a_student_beside_its_teacher_has_no_published_columns(tmp_path):
    teacher = write_run(tmp_path / "teacher", THREE_TASKS)
    student = write_run(tmp_path / "student", TWO_TASKS)
    info = json.loads((student / "run.json").read_text())
    info.update(module="hear_ced.custom", model="/runs/student.safetensors")
    (student / "run.json").write_text(json.dumps(info))
    markdown = write_report([teacher, student])["markdown"].read_text()
    assert ("- **hear_ced.custom (student, default)**: embedding method `default`; no published "
            "CED score (its model is not a CED of a published size).") in markdown  # fmt: skip
    header = markdown.splitlines()[next(i for i, line in enumerate(markdown.splitlines())
                                        if line.startswith("| task |"))]  # fmt: skip
    assert header.endswith("| hear_ced.custom (student, default) MLP "
                           "| hear_ced.custom (student, default) linear |")  # fmt: skip
    assert "| ESC-50 | top1_acc | 90.00 | 80.00 | 95.35 | -5.35 | yes | 80.00 | 70.00 |" in markdown
    # the shared means' published score is the teacher's size's: Beehive and ESC-50
    assert "| **mean, shared tasks with a published score (2)** | - | 75.00 | 65.00 | 77.26 |" in (
        markdown
    )


def test_column_group_names_are_unique_and_may_be_given(tmp_path):
    first = write_run(tmp_path / "a" / "run", THREE_TASKS)
    second = write_run(tmp_path / "b" / "run", THREE_TASKS)
    third = write_run(tmp_path / "c", THREE_TASKS)
    runs = name_runs([load_run(f) for f in (first, second, third)])
    # same model, method and folder name: the paths tell them apart
    assert [run.label for run in runs] == [
        f"hear_ced.mini (ced_mini, default) [{first}]",
        f"hear_ced.mini (ced_mini, default) [{second}]",
        "hear_ced.mini (ced_mini, default) [c]",
    ]
    named = name_runs([load_run(f) for f in (first, third)], ["Mini"])
    assert [run.label for run in named] == ["Mini", "hear_ced.mini (ced_mini, default)"]
    with pytest.raises(ReportError, match="2 names for 1 run folder"):
        name_runs([load_run(first)], ["x", "y"])
    with pytest.raises(ReportError, match="two runs are named 'x'; give each its own --name"):
        name_runs([load_run(first), load_run(third)], ["x", "x"])
    result = CliRunner().invoke(main, ["report", str(first), str(third), "--name", "A",
                                       "--name", "B", "--out", str(tmp_path)])  # fmt: skip
    assert result.exit_code == 0 and "| task | metric | A MLP | A linear |" in result.output
    refused = CliRunner().invoke(main, ["report", str(first), "--name", " "])
    assert refused.exit_code == 1 and "a run's name is empty" in refused.output


def test_hear_progress_summary_and_report_show_one_score_alike(tmp_path):
    result = {"task": "esc50-v2.0.0-full", "status": "ok", "primary_metric": "top1_acc",
              "mlp": {"score": 0.833333}, "linear": {"score": 0.41666}}  # fmt: skip
    assert summary_line(result) == "ok  top1_acc mlp=83.33% linear=41.67%"
    table = summary_table([result, {"task": "bad", "status": "failed"}]).splitlines()
    assert table[0] == "| task | metric | mlp % | linear % | status |"
    assert table[2:] == ["| esc50-v2.0.0-full | top1_acc | 83.33 | 41.67 | ok |",
                         "| bad | - | - | - | failed |"]  # fmt: skip
    run = write_run(tmp_path / "run", {"esc50-v2.0.0-full": (0.833333, 0.41666, 1, 1.0, {})})
    assert "| ESC-50 | top1_acc | 83.33 | 41.67 | 95.35 | -12.02 | yes |" in (
        write_report([run])["markdown"].read_text()
    )
