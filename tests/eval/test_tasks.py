"""The HEAR task registry against the benchmark's published facts."""

from hear_ced.eval.tasks import (
    HEAR_TASKS,
    LEADERBOARD_COLUMNS,
    TASK_BY_COLUMN,
    TASK_BY_DIRECTORY,
    missing_directories,
    size_of_module,
)

# copied from the leaderboard CSV header
OFFICIAL_HEADER = (
    "Model,URL,Submission Date,Beehive,Beijing Opera,CREMA-D,DCASE 2016,ESC-50,FSD50K,"
    "GTZAN Genre,GTZAN Music/Speech,Gunshot,Libricount,Maestro 5h,Mridangam Stroke,"
    "Mridangam Tonic,NSynth Pitch 50h,NSynth Pitch 5h,Speech commands 5h,Speech commands full,"
    "Vocal Imitation,VoxLingua107 top 10"
)


def test_nineteen_tasks_in_twenty_folders():
    assert len(HEAR_TASKS) == 19
    assert len(TASK_BY_DIRECTORY) == 20
    assert TASK_BY_COLUMN["Beehive"].directories == (
        "beehive_states_fold0-v2-full",
        "beehive_states_fold1-v2-full",
    )


def test_column_order_is_the_leaderboard_header():
    assert ",".join(LEADERBOARD_COLUMNS) == OFFICIAL_HEADER


def test_metrics_and_types_are_consistent():
    event_metrics = {"event_onset_200ms_fms", "event_onset_50ms_fms"}
    for task in HEAR_TASKS:
        assert (task.primary_metric in event_metrics) == (task.embedding_type == "event")
        assert task.folds >= 1 and all(0 <= p <= 100 for p in task.published_percent)
    assert TASK_BY_COLUMN["Vocal Imitation"].primary_metric == "mAP"
    assert TASK_BY_COLUMN["Beehive"].primary_metric == "aucroc"
    assert TASK_BY_COLUMN["NSynth Pitch 5h"].primary_metric == "pitch_acc"


def test_published_scores_as_fractions():
    assert TASK_BY_COLUMN["ESC-50"].published("base") == 0.9665
    assert TASK_BY_COLUMN["Maestro 5h"].published("tiny") == 0.0481
    assert TASK_BY_COLUMN["Beehive"].published("mini") == 0.5917
    assert TASK_BY_COLUMN["ESC-50"].published("large") is None


def test_size_of_module_and_missing_folders():
    assert size_of_module("hear_ced.small") == "small"
    assert size_of_module("hear_ced.custom") is None
    assert size_of_module("hearbaseline") is None
    missing = missing_directories(["esc50-v2.0.0-full", "beehive_states_fold0-v2-full"])
    assert len(missing) == 18 and "beehive_states_fold1-v2-full" in missing


def test_comparison_caveats_follow_reference_section_7():
    # event tasks: 0.48 s timestamp windows; clips over 10.11 s: padded scene chunks
    caveats = {task.column: task.comparison_caveat for task in HEAR_TASKS if task.comparison_caveat}
    assert caveats == {
        "Beehive": "long", "DCASE 2016": "event", "FSD50K": "variable", "GTZAN Genre": "long",
        "GTZAN Music/Speech": "long", "Maestro 5h": "event", "Vocal Imitation": "long",
        "VoxLingua107 top 10": "long",
    }  # fmt: skip


def test_sizes_only_where_reference_states_them():
    sizes = {task.column: task.size for task in HEAR_TASKS if task.size}
    assert sorted(sizes) == ["Beehive", "FSD50K", "Speech commands full"]
    assert (sizes["Beehive"].clips, sizes["Beehive"].audio_seconds) == (576, 345600.0)
    assert sizes["FSD50K"].audio_seconds is None
    assert sizes["Speech commands full"].audio_seconds == 100000.0
