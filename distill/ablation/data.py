"""The experiment's data, all in memory: clips, spectrograms, augmented views, oracle labels.

The corpus is built so that augmentation changes content (short events,
narrow-band classes, masks able to hide them). The view of (clip, epoch) is
one seeded draw (``hear_ced.distill.augment.epoch_seeds``), so the teacher's target
and the student's input of a row describe the same spectrogram.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hear_ced.distill.ablation.protocol import NUM_CLASSES, Protocol
from hear_ced.distill.augment import AugmentConfig, epoch_seeds, shift_wave
from hear_ced.distill.oracle import clean_view, draw_view, event_box, mel_centres_hz, view_labels
from hear_ced.distill.synth import render_split
from hear_ced.distill.views import augmented_mel
from hear_ced.frontend import LogMelFrontend


@dataclass
class Data:
    clean_mels: np.ndarray  # (student clips, F, T)
    view_mels: np.ndarray  # (views, student clips, F, T)
    oracle_clean: np.ndarray  # (student clips, C)
    oracle_views: np.ndarray  # (views, student clips, C)
    teacher_clean: np.ndarray | None  # (student clips, C) ensemble probabilities
    teacher_views: np.ndarray | None  # (views, student clips, C)
    valid: tuple[np.ndarray, np.ndarray]  # mels, clean labels
    test: tuple[np.ndarray, np.ndarray]
    teacher_train: tuple[np.ndarray, np.ndarray]  # plain mels, labels of every teacher clip
    teacher_waves: np.ndarray  # (teacher clips, samples)


def clip_mels(
    waves: np.ndarray, seeds: np.ndarray | None = None, augment: AugmentConfig | None = None
) -> np.ndarray:
    """Log-mels of clips, with ``augment``'s seeded shift and masks when ``seeds`` are given."""
    if seeds is None or augment is None:  # the plain clips: no shift, no masks
        seeds, augment = np.zeros(len(waves), dtype=np.int64), AugmentConfig.none()
    frontend = LogMelFrontend()
    out = []
    for lo in range(0, len(waves), 64):
        batch_seeds = seeds[lo : lo + 64]
        batch = [
            shift_wave(w, int(s), augment)
            for w, s in zip(waves[lo : lo + 64], batch_seeds, strict=True)
        ]
        wave = torch.from_numpy(np.stack(batch))
        seeds_t = torch.from_numpy(batch_seeds.astype(np.int64))
        out.append(augmented_mel(frontend, wave, seeds_t, augment).numpy())
    return np.concatenate(out)


def teacher_view_seeds(p: Protocol, index: int, epoch: int) -> np.ndarray:
    """Per-clip seeds of teacher ``index``'s views in ``epoch`` (augmented teachers).

    A seed stream apart from the student views' (``corpus_seed``), so the
    teachers never train on the exact views the students are taught with.
    """
    return epoch_seeds(p.corpus_seed + 1 + index, epoch, p.teacher_clips)


def _labels(events: list, n_frames: int, centres: np.ndarray) -> np.ndarray:
    view = clean_view(len(centres), n_frames)
    return np.stack(
        [
            view_labels([event_box(e, n_frames, centres) for e in ev], view, NUM_CLASSES)
            for ev in events
        ]
    )


def build_data(p: Protocol) -> Data:
    """Render the splits and compute every spectrogram and oracle target (seconds)."""
    options = {"event_seconds": p.event_seconds, "n_events": p.events_per_clip}
    train_waves, train_events = render_split(
        "train", p.teacher_clips, p.clip_seconds, p.corpus_seed, **options
    )
    valid_waves, valid_events = render_split(
        "valid", p.valid_clips, p.clip_seconds, p.corpus_seed, **options
    )
    test_waves, test_events = render_split(
        "eval", p.test_clips, p.clip_seconds, p.corpus_seed, **options
    )
    augment = p.augment()
    teacher_mels = clip_mels(train_waves)
    n_bins, n_frames = teacher_mels.shape[1:]
    centres = mel_centres_hz(n_bins)
    waves = train_waves[: p.student_clips]
    events = train_events[: p.student_clips]
    boxes = [[event_box(e, n_frames, centres) for e in ev] for ev in events]
    view_mels, oracle_views = [], []
    for v in range(p.views):
        seeds = epoch_seeds(p.corpus_seed, v, len(waves))
        view_mels.append(clip_mels(waves, seeds, augment))
        oracle_views.append(
            np.stack(
                [
                    view_labels(
                        b,
                        draw_view(int(s), augment, waves.shape[1], n_bins, n_frames),
                        NUM_CLASSES,
                        p.min_fraction,
                    )
                    for b, s in zip(boxes, seeds, strict=True)
                ]
            )
        )
    return Data(
        clean_mels=teacher_mels[: p.student_clips],
        view_mels=np.stack(view_mels),
        oracle_clean=_labels(events, n_frames, centres),
        oracle_views=np.stack(oracle_views),
        teacher_clean=None,
        teacher_views=None,
        valid=(clip_mels(valid_waves), _labels(valid_events, n_frames, centres)),
        test=(clip_mels(test_waves), _labels(test_events, n_frames, centres)),
        teacher_train=(teacher_mels, _labels(train_events, n_frames, centres)),
        teacher_waves=train_waves,
    )


def top_k(probs: np.ndarray, k: int) -> np.ndarray:
    """Probabilities with everything outside each row's top K set to 0 (as stored)."""
    keep = np.argsort(-probs, axis=-1, kind="stable")[..., :k]
    out = np.zeros_like(probs)
    np.put_along_axis(out, keep, np.take_along_axis(probs, keep, axis=-1), axis=-1)
    return out
