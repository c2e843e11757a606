"""Sound events from a timeline (`tag --events`), checked with sed_eval against known times."""

import csv
import io
import json

import dcase_util
import numpy as np
import pytest
import sed_eval
import soundfile as sf
import torch
from click.testing import CliRunner

from hear_ced.checkpoints import save_model
from hear_ced.cli import main
from hear_ced.events import EventRule, detect_events
from hear_ced.model import CED, CEDConfig
from hear_ced.timeline import Timeline

LABELS = ["dog", "speech", "bell", "car"]
HOP = 0.1


def synthetic_timeline(seconds: float = 10.0) -> tuple[Timeline, list[dict]]:
    """Windows of 0.1 s every 0.1 s whose probabilities hold known events, and what the
    rule must remove or keep: the reference events for ``RULE``."""
    starts = np.arange(0, seconds - 1e-9, HOP)
    ends = np.minimum(starts + HOP, seconds)
    centres = (starts + ends) / 2
    probs = np.full((len(starts), len(LABELS)), 0.05)

    def between(a, b):
        return (centres > a) & (centres < b)

    probs[between(1.0, 3.0), 0] = 0.9
    probs[between(2.0, 2.3), 0] = 0.4  # a dip above the offset threshold: one event
    probs[between(1.5, 1.6), 0] = 0.1  # one window below it: the median filter fills it
    probs[between(4.0, 4.6), 1] = 0.8
    probs[between(4.8, 5.5), 1] = 0.8  # 0.2 s apart: merged with the one before
    probs[between(6.0, 6.3), 2] = 0.95  # 0.3 s: shorter than the minimum duration
    probs[between(8.0, 9.0), 3] = 0.35  # never reaches the onset threshold ...
    probs[between(8.5, 8.6), 3] = 0.99  # ... but for one window, which the median removes
    probs[between(8.0, 9.5), 2] = 0.7
    probs[between(8.8, 9.1), 2] = 0.1  # 0.3 s below the offset threshold: two events
    reference = [
        ("dog", 1.0, 3.0),
        ("speech", 4.0, 5.5),
        ("bell", 8.0, 8.8),
        ("bell", 9.1, 9.5),
    ]
    events = [
        {"filename": "a.wav", "event_label": label, "onset": a, "offset": b}
        for label, a, b in reference
    ]
    return Timeline(starts, ends, probs), events


RULE = {"min_duration": 0.35, "merge_gap": 0.25}


def sed_scores(reference: list[dict], estimated: list[dict]) -> tuple[float, float]:
    """sed_eval's event-based F1 (onsets and offsets within 50 ms) and segment-based F1."""
    ref = dcase_util.containers.MetaDataContainer(reference)
    est = dcase_util.containers.MetaDataContainer(estimated)
    events = sed_eval.sound_event.EventBasedMetrics(
        event_label_list=LABELS, t_collar=0.05, percentage_of_length=0.0
    )
    segments = sed_eval.sound_event.SegmentBasedMetrics(
        event_label_list=LABELS, time_resolution=HOP
    )
    for metric in (events, segments):
        metric.evaluate(reference_event_list=ref, estimated_event_list=est)
    return (
        events.results_overall_metrics()["f_measure"]["f_measure"],
        segments.results_overall_metrics()["f_measure"]["f_measure"],
    )


def as_dicts(events, filename="a.wav") -> list[dict]:
    return [
        {"filename": filename, "event_label": e.label, "onset": e.onset, "offset": e.offset}
        for e in events
    ]


def test_events_match_the_known_times_by_sed_eval():
    line, reference = synthetic_timeline()
    found = detect_events(line, LABELS, EventRule(**RULE))
    assert sed_scores(reference, as_dicts(found)) == (1.0, 1.0)


@pytest.mark.parametrize(
    "rule, extra",
    [
        ({**RULE, "offset_threshold": 0.5}, 1),
        ({**RULE, "merge_gap": 0.0}, 1),
        ({**RULE, "median": 1}, 1),
        ({**RULE, "min_duration": 0.0}, 1),
    ],
    ids=["no-hysteresis", "no-merging", "no-median", "no-min-duration"],
)
def test_each_step_of_the_rule_matters(rule, extra):
    """Without hysteresis, gap merging, the median filter or the minimum duration, the
    synthetic events are found wrongly: sed_eval's event F1 drops below 1."""
    line, reference = synthetic_timeline()
    found = as_dicts(detect_events(line, LABELS, EventRule(**rule)))
    assert sed_scores(reference, found)[0] < 1.0
    onsets = {(e["event_label"], e["onset"]) for e in found}
    assert len(onsets - {(e["event_label"], e["onset"]) for e in reference}) == extra


def test_events_span_the_recording_to_its_end():
    """The first window's share starts at 0 and the last one's ends at the recording's end."""
    starts, ends = np.array([0.0, 1.0, 2.0]), np.array([2.0, 3.0, 3.5])
    line = Timeline(starts, ends, np.full((3, 1), 0.9))
    [event] = detect_events(line, ["x"], EventRule())
    assert (event.onset, event.offset) == (0.0, 3.5)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"onset_threshold": 0.2, "offset_threshold": 0.3}, "offset threshold"),
        ({"median": 4}, "odd number"),
        ({"min_duration": -1}, "at least 0 s"),
    ],
)
def test_bad_rules_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        EventRule(**settings)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    config = CEDConfig(embed_dim=32, depth=1, num_heads=1, num_classes=4, labels=LABELS)
    return save_model(CED(config).eval(), tmp_path_factory.mktemp("m") / "m.safetensors")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.wav"
    sf.write(path, 0.1 * np.random.default_rng(0).standard_normal(3 * 16000), 16000)
    return str(path)


def test_tag_events_prints_dcase_tsv_and_json(checkpoint, clip):
    """End to end on a small model: the TSV is DCASE's, the JSON the same events."""
    args = ["tag", clip, "--model", str(checkpoint), "--events", "--onset-threshold", "0.01"]
    args += ["--window", "0.5", "--hop", "0.25"]
    tsv = CliRunner().invoke(main, args)
    assert tsv.exit_code == 0, tsv.output
    rows = list(csv.DictReader(io.StringIO(tsv.stdout), delimiter="\t"))
    assert list(rows[0]) == ["filename", "onset", "offset", "event_label"]
    assert {r["event_label"] for r in rows} <= set(LABELS) and rows
    assert all(0 <= float(r["onset"]) < float(r["offset"]) <= 3.0 for r in rows)
    as_json = CliRunner().invoke(main, [*args, "--json"])
    [record] = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [(e["label"], e["onset"], e["offset"]) for e in record["events"]] == [
        (r["event_label"], float(r["onset"]), float(r["offset"])) for r in rows
    ]


@pytest.mark.parametrize(
    "options, message",
    [
        (["--onset-threshold", "1.5"], "the onset threshold must be in (0, 1], got 1.5"),
        (["--offset-threshold", "0"], "the offset threshold must be in (0, onset threshold"),
        (["--offset-threshold", "0.9"], "the offset threshold must be in (0, onset threshold"),
        (["--median-filter", "4"], "an odd number of windows, got 4"),
        (["--min-duration", "-1"], "must be at least 0 s"),
    ],
)
def test_tag_events_refuses_bad_settings_in_one_line(checkpoint, clip, options, message):
    args = ["tag", clip, "--model", str(checkpoint), "--events", *options]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith("Error: --events: ") and result.stderr.count("\n") == 1
    assert message in result.stderr


def test_tag_events_prints_tsv_or_json_not_csv(checkpoint, clip):
    args = ["tag", clip, "--model", str(checkpoint), "--events", "--csv"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "--events prints TSV" in result.stderr
