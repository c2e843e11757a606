"""Oracle targets: which annotated events a seeded view leaves audible."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from hear_ced.distill.augment import AugmentConfig, shift_wave, spec_augment
from hear_ced.distill.oracle import (
    EventBox,
    View,
    audible,
    clean_view,
    draw_view,
    event_box,
    label_change_share,
    mel_centres_hz,
    threshold_change_share,
    topk_change_share,
    view_labels,
)
from hear_ced.distill.synth import Event
from hear_ced.frontend import HOP_LENGTH

BOX = EventBox(class_index=2, first_frame=10, end_frame=20, low_bin=5, high_bin=8)


def _view(shift=0, masked_frames=(), masked_bins=(), frames=101, bins=64) -> View:
    time_kept = np.ones(frames, dtype=bool)
    time_kept[list(masked_frames)] = False
    freq_kept = np.ones(bins, dtype=bool)
    freq_kept[list(masked_bins)] = False
    return View(shift, time_kept, freq_kept)


def test_time_mask_hides_an_event_when_less_than_a_quarter_survives():
    assert audible(BOX, clean_view(64, 101))
    # Frames 10..17 masked: 2 of 10 survive, fewer than ceil(0.25 * 10) = 3.
    assert not audible(BOX, _view(masked_frames=range(10, 18)))
    # Frames 10..16 masked: 3 survive, enough.
    assert audible(BOX, _view(masked_frames=range(10, 17)))
    # Shifted by 50 frames the event sits at 60..69, away from the mask.
    assert audible(BOX, _view(shift=50, masked_frames=range(10, 18)))
    # A shift past the end wraps round, as the roll does: 95..104 -> 95..100, 0..3.
    assert not audible(BOX, _view(shift=85, masked_frames=list(range(95, 101)) + [0, 1]))
    assert audible(BOX, _view(shift=85, masked_frames=range(95, 101)))


def test_frequency_mask_hides_a_narrow_band_event():
    assert not audible(BOX, _view(masked_bins=range(5, 8)))
    assert audible(BOX, _view(masked_bins=range(5, 7)))  # 1 of 3 bins survives


def test_view_labels_keep_a_class_while_any_of_its_events_is_audible():
    other = EventBox(class_index=2, first_frame=50, end_frame=60, low_bin=30, high_bin=31)
    view = _view(masked_frames=range(0, 30))
    assert view_labels([BOX], view, 4).tolist() == [0, 0, 0, 0]
    assert view_labels([BOX, other], view, 4).tolist() == [0, 0, 1, 0]


def test_event_box_from_annotation():
    centres = mel_centres_hz()
    box = event_box(Event(3, 0.1, 0.2, 1000.0, 1200.0), 101, centres)
    assert (box.class_index, box.first_frame, box.end_frame) == (3, 10, 20)
    inside = np.flatnonzero((centres >= 1000.0) & (centres <= 1200.0))
    assert (box.low_bin, box.high_bin) == (inside[0], inside[-1] + 1)
    tone = event_box(Event(0, 0.0, 0.05, 440.0, 440.0), 101, centres)
    assert tone.high_bin - tone.low_bin == 1
    assert abs(centres[tone.low_bin] - 440.0) == np.abs(centres - 440.0).min()


@pytest.mark.parametrize("seed", [1, 7, 12345, -99])
def test_draw_view_matches_the_augmentation_it_reads(seed):
    cfg = AugmentConfig(shift_p=1.0, time_mask_width=40, freq_mask_width=24)
    ramp = np.arange(16000, dtype=np.float64)
    view = draw_view(seed, cfg, 16000, 64, 101)
    rolled = shift_wave(ramp, seed, cfg)
    shift = int(np.argmax(rolled == 0.0))  # where sample 0 went
    shift = shift - 16000 if shift > 8000 else shift
    assert view.shift_frames == round(shift / HOP_LENGTH)
    masked = spec_augment(
        torch.zeros(1, 64, 101),
        torch.tensor([seed]),
        dataclasses.replace(cfg, mask_value=1.0),
    )[0]
    kept = masked.numpy() == 0.0
    assert np.array_equal(kept, np.outer(view.freq_kept, view.time_kept))


def test_label_change_share_on_a_hand_made_case():
    clean = np.array([[1, 0], [0, 1]], dtype=np.float32)
    views = np.array([[[1, 0], [0, 1]], [[0, 0], [0, 1]]], dtype=np.float32)
    assert label_change_share(clean, views) == 0.25


def test_topk_change_share_on_a_hand_made_case():
    clean = np.array([[0.9, 0.5, 0.1], [0.2, 0.3, 0.8]])
    views = np.array(
        [
            [[0.5, 0.9, 0.1], [0.9, 0.3, 0.8]],  # same top-2 set; changed ({0, 2})
            [[0.1, 0.5, 0.9], [0.2, 0.4, 0.3]],  # changed ({1, 2}); same ({1, 2})
        ]
    )
    assert topk_change_share(clean, views, 2) == 0.5
    assert topk_change_share(clean, views, 3) == 0.0


def test_threshold_change_share_on_a_hand_made_case():
    clean = np.array([[0.9, 0.2], [0.6, 0.7]])
    views = np.array([[[0.8, 0.3], [0.4, 0.7]]])  # clip 1 loses class 0
    assert threshold_change_share(clean, views, 0.5) == 0.5
