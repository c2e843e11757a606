"""The experiment's fixed settings and its rows (arms).

Every setting is a field of :class:`Protocol`, declared once here; the plan
of an output folder and the report store it through
``hear_ced.common.config.to_plain``, so a folder never mixes two protocols.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from hear_ced.common.config import ConfigError, checked, in_range
from hear_ced.distill.augment import AugmentConfig
from hear_ced.distill.oracle import DEFAULT_MIN_FRACTION
from hear_ced.distill.synth import SYNTH_CLASSES

SOURCES = ("teacher", "oracle")
NUM_CLASSES = len(SYNTH_CLASSES)


@dataclass(frozen=True)
class Protocol:
    """Every setting of the experiment; the report prints it before any result."""

    # Corpus: short events of the synthetic classes, 1 s clips.
    clip_seconds: float = 1.0
    event_seconds: tuple[float, float] = (0.05, 0.25)
    events_per_clip: tuple[int, int] = (2, 3)
    corpus_seed: int = 1
    teacher_clips: int = 800
    student_clips: int = 128
    valid_clips: int = 200
    test_clips: int = 400
    # Augmentation: shift with roll-over and one time and one frequency mask.
    shift_p: float = 0.5
    shift_max_fraction: float = 0.5
    time_mask_width: int = 30
    freq_mask_width: int = 24
    min_fraction: float = DEFAULT_MIN_FRACTION
    views: int = 20  # stored epochs E: distinct augmented views per clip
    # Teachers: supervised with the clips' hard labels, on the plain clips or
    # on a fresh augmented view per (clip, epoch) of the same augmentation.
    teacher_training: Literal["plain", "augmented"] = "plain"
    teacher_sizes: tuple[tuple[int, int, int], ...] = ((128, 2, 4), (128, 2, 4))
    teacher_epochs: int = 12
    teacher_lr: float = 1e-3
    k: int = 5
    # Students.
    student_size: tuple[int, int, int] = (64, 2, 2)
    student_epochs: int = 160
    student_lr: float = 1e-3
    warmup_steps: int = 50
    batch_size: int = 16
    eval_every: int = 8
    seeds: int = 6
    # Decision rule.
    alpha: float = 0.05
    level: float = 0.95
    k_values: tuple[int, ...] = (1, 3, 5, 24)

    def __post_init__(self) -> None:
        checked(self)

    def validate(self) -> None:
        if self.seeds < 2:
            raise ConfigError("a paired comparison needs at least 2 seeds", key="seeds")
        in_range(self, "k", 1, NUM_CLASSES)
        if not all(1 <= k <= NUM_CLASSES for k in self.k_values):
            raise ConfigError(
                f"must lie in 1..{NUM_CLASSES}, got {list(self.k_values)}", key="k_values"
            )
        in_range(self, "student_clips", 1, self.teacher_clips)

    def augment(self) -> AugmentConfig:
        return AugmentConfig(
            wave=True,
            spec=True,
            mixup=False,
            shift_p=self.shift_p,
            shift_max_fraction=self.shift_max_fraction,
            time_mask_width=self.time_mask_width,
            freq_mask_width=self.freq_mask_width,
        )


SMOKE = Protocol(
    teacher_clips=24,
    student_clips=12,
    valid_clips=8,
    test_clips=8,
    views=2,
    teacher_sizes=((32, 1, 2),),
    teacher_epochs=1,
    student_size=(32, 1, 2),
    student_epochs=2,
    warmup_steps=2,
    batch_size=8,
    eval_every=1,
    seeds=2,
    k_values=(1, 3),
)


def protocol_for(smoke: bool, seeds: int | None, teacher_training: str = "plain") -> Protocol:
    base = SMOKE if smoke else Protocol()
    seeds = base.seeds if seeds is None else seeds
    return dataclasses.replace(base, seeds=seeds, teacher_training=teacher_training)


@dataclass(frozen=True)
class Arm:
    """One row of an experiment: where targets come from and what the student sees."""

    name: str
    source: str  # "teacher" or "oracle"
    teacher_augmented: bool
    student_augmented: bool
    k: int = 0  # top-K of a teacher's probabilities; 0 for the oracle

    @property
    def key(self) -> str:
        return (
            f"{self.source}_t{int(self.teacher_augmented)}s{int(self.student_augmented)}_k{self.k}"
        )


# Table 3's rows in the paper's order: whether the teacher's targets and the
# student's input are computed on the augmented view (shift and masks).
ROWS = tuple(
    Arm(name, "teacher", teacher_augmented, student_augmented)
    for name, teacher_augmented, student_augmented in (
        ("no augmentation", False, False),
        ("student-only augmentation", False, True),
        ("teacher-only augmentation", True, False),
        ("consistent (CED)", True, True),
    )
)
CONSISTENT = ROWS[-1].name


def table3_arms(p: Protocol) -> list[Arm]:
    # The oracle's targets do not depend on the teachers: an arm with other
    # teachers runs the learned-teacher rows only.
    sources = SOURCES if p.teacher_training == "plain" else ("teacher",)
    return [
        Arm(
            row.name,
            source,
            row.teacher_augmented,
            row.student_augmented,
            p.k * (source == "teacher"),
        )
        for source in sources
        for row in ROWS
    ]


def k_sweep_arms(p: Protocol) -> list[Arm]:
    return [Arm(f"K={k}", "teacher", True, True, k) for k in p.k_values]
