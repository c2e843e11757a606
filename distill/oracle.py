"""Exact targets for augmented views, from a synthetic corpus's event annotations.

An oracle teacher knows, for every seeded view of a clip, which of the
clip's events the augmentation left audible. It isolates what consistent
teaching is about (targets that describe the input the student sees) from
how good a learned teacher is.

An event is a box in the log-mel spectrogram: the frames of its time span
and the mel bins whose centre frequency lies in its energy band (the
central 90 % of its energy; the nearest bin for a pure tone). The view's
wave shift rolls the box in time (wrapping round, as the shift does); the
time masks remove frames, the frequency masks remove bins. The event is
**audible** in the view when at least ``min_fraction`` of its frames and at
least ``min_fraction`` of its bins survive the masks.

The view itself is read back from the augmentation functions (shift and
masks of a seed), so the oracle cannot drift from what the model is fed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from hear_ced.distill.augment import AugmentConfig, shift_wave, spec_augment
from hear_ced.distill.synth import Event
from hear_ced.frontend import F_MAX, F_MIN, HOP_LENGTH, N_MELS, SAMPLE_RATE, mel_to_hz

DEFAULT_MIN_FRACTION = 0.25


@dataclass(frozen=True)
class EventBox:
    """An event's cells: frames [first_frame, end_frame), mel bins [low_bin, high_bin)."""

    class_index: int
    first_frame: int
    end_frame: int
    low_bin: int
    high_bin: int


@dataclass(frozen=True)
class View:
    """What a seed's augmentation does to a clip: roll in frames, surviving frames and bins."""

    shift_frames: int
    time_kept: np.ndarray  # (frames,) bool
    freq_kept: np.ndarray  # (bins,) bool


def mel_centres_hz(n_mels: int = N_MELS) -> np.ndarray:
    """Centre frequency of every mel bin of the project's frontend."""
    m_min = 2595.0 * math.log10(1.0 + F_MIN / 700.0)
    m_max = 2595.0 * math.log10(1.0 + F_MAX / 700.0)
    points = mel_to_hz(torch.linspace(m_min, m_max, n_mels + 2, dtype=torch.float64))
    return points[1:-1].numpy()


def event_box(event: Event, n_frames: int, centres_hz: np.ndarray) -> EventBox:
    """The spectrogram cells an annotated event occupies."""
    first = min(n_frames - 1, int(math.floor(event.onset_s * SAMPLE_RATE / HOP_LENGTH)))
    end = min(n_frames, max(first + 1, math.ceil(event.offset_s * SAMPLE_RATE / HOP_LENGTH)))
    inside = np.flatnonzero((centres_hz >= event.low_hz) & (centres_hz <= event.high_hz))
    if len(inside):
        low, high = int(inside[0]), int(inside[-1]) + 1
    else:
        nearest = int(np.argmin(np.abs(centres_hz - (event.low_hz + event.high_hz) / 2)))
        low, high = nearest, nearest + 1
    return EventBox(event.class_index, first, end, low, high)


def draw_view(
    seed: int, augment: AugmentConfig, n_samples: int, n_bins: int, n_frames: int
) -> View:
    """The shift and masks the augmentation applies for ``seed``, read from its own functions."""
    ramp = np.arange(n_samples, dtype=np.float64)
    # np.roll(x, s)[0] == x[-s mod n]: the first sample names the roll.
    shift = int(-shift_wave(ramp, seed, augment)[0]) % n_samples
    shift = shift - n_samples if shift > n_samples // 2 else shift
    ones = torch.ones(1, n_bins, n_frames)
    kept = spec_augment(ones, torch.tensor([seed]), dataclasses.replace(augment, mask_value=0.0))[0]
    kept = kept.numpy() > 0.5
    return View(
        shift_frames=round(shift / HOP_LENGTH),
        time_kept=kept.any(axis=0),
        freq_kept=kept.any(axis=1),
    )


def clean_view(n_bins: int, n_frames: int) -> View:
    """The identity view (no shift, no masks)."""
    return View(0, np.ones(n_frames, dtype=bool), np.ones(n_bins, dtype=bool))


def audible(box: EventBox, view: View, min_fraction: float = DEFAULT_MIN_FRACTION) -> bool:
    """Whether enough of the event's frames and bins survive the view's masks."""
    frames = (np.arange(box.first_frame, box.end_frame) + view.shift_frames) % len(view.time_kept)
    kept_frames = int(view.time_kept[frames].sum())
    kept_bins = int(view.freq_kept[box.low_bin : box.high_bin].sum())
    need_frames = max(1, math.ceil(min_fraction * (box.end_frame - box.first_frame)))
    need_bins = max(1, math.ceil(min_fraction * (box.high_bin - box.low_bin)))
    return kept_frames >= need_frames and kept_bins >= need_bins


def view_labels(
    boxes: Sequence[EventBox],
    view: View,
    num_classes: int,
    min_fraction: float = DEFAULT_MIN_FRACTION,
) -> np.ndarray:
    """float32 multi-hot of the classes with at least one audible event in the view."""
    labels = np.zeros(num_classes, dtype=np.float32)
    for box in boxes:
        if audible(box, view, min_fraction):
            labels[box.class_index] = 1.0
    return labels


def label_change_share(clean: np.ndarray, views: np.ndarray) -> float:
    """Share of views whose label set differs from their clip's clean label set.

    ``clean`` is (clips, classes), ``views`` (epochs, clips, classes).
    """
    changed = (views != clean[None]).any(axis=-1)
    return float(changed.mean()) if changed.size else 0.0


def topk_change_share(clean_probs: np.ndarray, view_probs: np.ndarray, k: int) -> float:
    """Share of views whose top-K class set differs from the clean clip's top-K set.

    ``clean_probs`` is (clips, classes), ``view_probs`` (epochs, clips, classes).
    """
    clean_sets = np.sort(np.argsort(-clean_probs, axis=-1, kind="stable")[..., :k], axis=-1)
    view_sets = np.sort(np.argsort(-view_probs, axis=-1, kind="stable")[..., :k], axis=-1)
    return label_change_share(clean_sets, view_sets)


def threshold_change_share(
    clean_probs: np.ndarray, view_probs: np.ndarray, threshold: float
) -> float:
    """Share of views whose set of classes at or above ``threshold`` differs from the clean clip's."""
    return label_change_share(clean_probs >= threshold, view_probs >= threshold)
