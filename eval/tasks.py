"""The 19 HEAR 2021 tasks: folders, metrics, leaderboard columns and published CED scores.

One task can span several folders (Beehive ships as two folds, which the
leaderboard averages), so the registry maps leaderboard columns to folders.
Published scores are the CED README's HEAR numbers, in percent. Sizes (clips
and audio per folder) are recorded only where REFERENCE.md states them; the
others are unknown here and are measured from a task folder when one is given.
"""

from __future__ import annotations

from dataclasses import dataclass

from hear_ced.model import PUBLISHED_SIZES

# Longest clip one pass of CED takes (1012 frames, REFERENCE.md section 2). The published
# wrapper zero-pads the last chunk of a longer clip and averages the padding tokens into the
# scene embedding (section 7), which this project's default method does not.
ONE_PASS_SECONDS = 10.11


@dataclass(frozen=True)
class FolderSize:
    """Clips and total audio of one task folder (all splits), with where the figures come from."""

    clips: int
    audio_seconds: float | None  # None: durations not known
    source: str


@dataclass(frozen=True)
class HearTask:
    """One leaderboard column of the HEAR 2021 benchmark."""

    column: str  # leaderboard CSV column
    directories: tuple[str, ...]  # task folders of the HEAR archives
    embedding_type: str  # scene | event
    prediction_type: str  # multiclass | multilabel
    folds: int  # 1 = fixed train/valid/test split, k = k-fold cross-validation
    clip_seconds: float | None  # None: variable length
    primary_metric: str  # heareval score name, first in task_metadata "evaluation"
    published_percent: tuple[float, float, float, float]  # in PUBLISHED_SIZES order
    size: FolderSize | None = None  # per folder, where REFERENCE.md states it

    @property
    def comparison_caveat(self) -> str | None:
        """Why the default embeddings differ from the published wrapper's on this task.

        "event": the published timestamp vectors each saw a 0.48 s window; "long": clips
        over 10.11 s, whose published scene embeddings average zero-padding tokens;
        "variable": clip lengths vary (FSD50K), so the clips over 10.11 s are affected;
        None: the two methods agree (scene task, every clip within one pass).
        """
        if self.embedding_type == "event":
            return "event"
        if self.clip_seconds is None:
            return "variable"
        return "long" if self.clip_seconds > ONE_PASS_SECONDS else None

    def published(self, size: str) -> float | None:
        """Published CED score for a model size, as a fraction (what heareval writes)."""
        if size not in PUBLISHED_SIZES:
            return None
        return round(self.published_percent[PUBLISHED_SIZES.index(size)] / 100.0, 6)


# Sizes stated in REFERENCE.md section 8 (clip lengths from the section 5 table); the
# source text is what reports show.
_BEEHIVE_SIZE = FolderSize(576, 576 * 600.0, "registry: 576 clips of 600 s per fold")
_FSD50K_SIZE = FolderSize(51_000, None, "registry: about 51k clips, lengths vary")
_SPEECH_COMMANDS_FULL_SIZE = FolderSize(100_000, 100_000 * 1.0, "registry: about 100k clips of 1 s")

HEAR_TASKS: tuple[HearTask, ...] = (
    HearTask("Beehive", ("beehive_states_fold0-v2-full", "beehive_states_fold1-v2-full"),
             "scene", "multiclass", 1, 600.0, "aucroc", (38.34, 59.17, 51.70, 48.35),
             _BEEHIVE_SIZE),
    HearTask("Beijing Opera", ("beijing_opera-v1.0-hear2021-full",),
             "scene", "multiclass", 5, 4.77, "top1_acc", (94.90, 96.18, 96.60, 96.60)),
    HearTask("CREMA-D", ("tfds_crema_d-1.0.0-full",),
             "scene", "multiclass", 5, 5.0, "top1_acc", (62.52, 65.26, 66.64, 69.10)),
    HearTask("DCASE 2016", ("dcase2016_task2-hear2021-full",),
             "event", "multilabel", 1, 120.0, "event_onset_200ms_fms", (88.02, 90.66, 91.63, 92.19)),
    HearTask("ESC-50", ("esc50-v2.0.0-full",),
             "scene", "multiclass", 5, 5.0, "top1_acc", (95.80, 95.35, 95.95, 96.65)),
    HearTask("FSD50K", ("fsd50k-v1.0-full",),
             "scene", "multilabel", 1, None, "mAP", (62.73, 63.88, 64.33, 65.48), _FSD50K_SIZE),
    HearTask("GTZAN Genre", ("tfds_gtzan-1.0.0-full",),
             "scene", "multiclass", 10, 30.0, "top1_acc", (89.20, 90.30, 89.50, 88.60)),
    HearTask("GTZAN Music/Speech", ("tfds_gtzan_music_speech-1.0.0-full",),
             "scene", "multiclass", 10, 30.0, "top1_acc", (93.01, 94.49, 91.22, 94.36)),
    HearTask("Gunshot", ("gunshot_triangulation-v1.0-full",),
             "scene", "multiclass", 7, 1.5, "top1_acc", (91.67, 86.01, 93.45, 89.29)),
    HearTask("Libricount", ("libricount-v1.0.0-hear2021-full",),
             "scene", "multiclass", 5, 5.0, "top1_acc", (61.26, 64.02, 65.59, 67.85)),
    HearTask("Maestro 5h", ("maestro-v3.0.0-5h",),
             "event", "multilabel", 5, 120.0, "event_onset_50ms_fms", (4.81, 8.29, 10.96, 14.76)),
    HearTask("Mridangam Stroke", ("mridangam_stroke-v1.5-full",),
             "scene", "multiclass", 5, 0.81, "top1_acc", (96.13, 96.56, 96.82, 97.43)),
    HearTask("Mridangam Tonic", ("mridangam_tonic-v1.5-full",),
             "scene", "multiclass", 5, 0.81, "top1_acc", (90.74, 93.32, 93.94, 96.55)),
    HearTask("NSynth Pitch 50h", ("nsynth_pitch-v2.2.3-50h",),
             "scene", "multiclass", 1, 4.0, "pitch_acc", (69.19, 75.20, 79.95, 82.81)),
    HearTask("NSynth Pitch 5h", ("nsynth_pitch-v2.2.3-5h",),
             "scene", "multiclass", 1, 4.0, "pitch_acc", (44.00, 55.60, 60.20, 68.20)),
    HearTask("Speech commands 5h", ("speech_commands-v0.0.2-5h",),
             "scene", "multiclass", 1, 1.0, "top1_acc", (70.53, 77.38, 80.92, 86.93)),
    HearTask("Speech commands full", ("speech_commands-v0.0.2-full",),
             "scene", "multiclass", 1, 1.0, "top1_acc", (77.10, 81.96, 85.19, 89.67),
             _SPEECH_COMMANDS_FULL_SIZE),
    HearTask("Vocal Imitation", ("vocal_imitation-v1.1.3-full",),
             "scene", "multiclass", 3, 11.26, "mAP", (19.18, 20.37, 21.92, 22.69)),
    HearTask("VoxLingua107 top 10", ("vox_lingua_top10-hear2021-full",),
             "scene", "multiclass", 5, 18.64, "top1_acc", (33.64, 34.67, 36.53, 38.57)),
)  # fmt: skip

LEADERBOARD_COLUMNS: tuple[str, ...] = ("Model", "URL", "Submission Date") + tuple(
    task.column for task in HEAR_TASKS
)
TASK_BY_DIRECTORY: dict[str, HearTask] = {
    directory: task for task in HEAR_TASKS for directory in task.directories
}
TASK_BY_COLUMN: dict[str, HearTask] = {task.column: task for task in HEAR_TASKS}


def percent(score: float | None, signed: bool = False) -> str:
    """A score (a fraction, as heareval writes it) in percent, at the published CED numbers'
    precision (two decimals), so that every table of ced-eval reads like the published ones;
    "-" where there is no score."""
    if score is None:
        return "-"
    return f"{100 * score:+.2f}" if signed else f"{100 * score:.2f}"


def size_of_module(module: str) -> str | None:
    """``hear_ced.mini`` -> ``mini``; None for modules without a published CED size."""
    prefix, _, size = module.rpartition(".")
    return size if prefix == "hear_ced" and size in PUBLISHED_SIZES else None


def missing_directories(present: list[str] | set[str]) -> list[str]:
    """HEAR task folders not among ``present``, in registry order."""
    return [name for name in TASK_BY_DIRECTORY if name not in set(present)]
