"""The paper's consistency ablation (Table 3) and K sweep (Figure 3) as paired experiments.

Table 3 crosses teacher augmentation (targets computed on the augmented view
or on the plain clip) with student augmentation (the student sees the
augmented view or the plain clip). Only the wave shift and SpecAugment are
toggled; mixup is off in every row. Every row runs twice: with a learned
teacher ensemble and with an oracle teacher whose targets are the classes
the view leaves audible (``distill.oracle``), which separates consistency
from teacher quality.

The corpus is built so that augmentation changes content (short events,
narrow-band classes, masks able to hide them), the students are trained
long enough to over-fit without augmentation, checkpoints are selected on a
validation split and reported on a separate test split, and every seed
pairs all rows (same initial weights and data order). Rows are compared
through their per-seed differences (``distill.stats``).

Everything is in memory except the teachers' weights and one JSON per
finished run, so an interrupted experiment resumes at the first missing run.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import multiprocessing
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ced_common.config import ConfigError, checked, in_range  # noqa: E402
from ced_common.files import (  # noqa: E402
    atomic_path,
    claim_folder,
    read_json,
    write_json,
    write_text,
)
from ced_common.tables import markdown_table  # noqa: E402
from distill.augment import AugmentConfig, epoch_seeds, shift_wave  # noqa: E402
from distill.engine import Engine, Loop, Schedule  # noqa: E402
from distill.metrics import mean_average_precision  # noqa: E402
from distill.oracle import (  # noqa: E402
    DEFAULT_MIN_FRACTION,
    clean_view,
    draw_view,
    event_box,
    label_change_share,
    mel_centres_hz,
    threshold_change_share,
    topk_change_share,
    view_labels,
)
from distill.stats import beats, bootstrap_mean_interval, compare_paired  # noqa: E402
from distill.synth import SYNTH_CLASSES, render_split  # noqa: E402
from distill.train import epoch_order  # noqa: E402
from distill.views import ROWS, augmented_mel  # noqa: E402
from hear_ced.checkpoints import load_model_file, save_model  # noqa: E402
from hear_ced.frontend import LogMelFrontend  # noqa: E402
from hear_ced.model import CED, CEDConfig  # noqa: E402

log = logging.getLogger(__name__)

CONSISTENT = ROWS[-1].name
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
    # Teachers: supervised on plain clips with hard labels.
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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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


def protocol_for(smoke: bool, seeds: int | None) -> Protocol:
    base = SMOKE if smoke else Protocol()
    return base if seeds is None else dataclasses.replace(base, seeds=seeds)


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


def table3_arms(p: Protocol) -> list[Arm]:
    return [
        Arm(
            row.name,
            source,
            row.teacher_augmented,
            row.student_augmented,
            p.k * (source == "teacher"),
        )
        for source in SOURCES
        for row in ROWS
    ]


def k_sweep_arms(p: Protocol) -> list[Arm]:
    return [Arm(f"K={k}", "teacher", True, True, k) for k in p.k_values]


# --------------------------------------------------------------------------
# Data: clips, their spectrograms, augmented views and every kind of target.


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
    teacher_train: tuple[np.ndarray, np.ndarray]


def _mels(waves: np.ndarray, seeds: np.ndarray | None, augment: AugmentConfig) -> np.ndarray:
    """Log-mels of clips, with the seeded shift and masks when ``seeds`` are given."""
    frontend = LogMelFrontend()
    out = []
    for lo in range(0, len(waves), 64):
        batch = waves[lo : lo + 64]
        if seeds is not None:
            batch = np.stack(
                [shift_wave(w, int(s), augment) for w, s in zip(batch, seeds[lo:], strict=False)]
            )
        wave = torch.from_numpy(np.ascontiguousarray(batch))
        if seeds is None:
            with torch.no_grad():
                mel = frontend(wave)
        else:
            mel = augmented_mel(
                frontend, wave, torch.from_numpy(seeds[lo : lo + 64].astype(np.int64)), augment
            )
        out.append(mel.numpy())
    return np.concatenate(out)


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
    plain = AugmentConfig.none()
    teacher_mels = _mels(train_waves, None, plain)
    n_bins, n_frames = teacher_mels.shape[1:]
    centres = mel_centres_hz(n_bins)
    waves = train_waves[: p.student_clips]
    events = train_events[: p.student_clips]
    boxes = [[event_box(e, n_frames, centres) for e in ev] for ev in events]
    view_mels, oracle_views = [], []
    for v in range(p.views):
        seeds = epoch_seeds(p.corpus_seed, v, len(waves))
        view_mels.append(_mels(waves, seeds, augment))
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
        valid=(_mels(valid_waves, None, plain), _labels(valid_events, n_frames, centres)),
        test=(_mels(test_waves, None, plain), _labels(test_events, n_frames, centres)),
        teacher_train=(teacher_mels, _labels(train_events, n_frames, centres)),
    )


def top_k(probs: np.ndarray, k: int) -> np.ndarray:
    """Probabilities with everything outside each row's top K set to 0 (as stored)."""
    keep = np.argsort(-probs, axis=-1, kind="stable")[..., :k]
    out = np.zeros_like(probs)
    np.put_along_axis(out, keep, np.take_along_axis(probs, keep, axis=-1), axis=-1)
    return out


# --------------------------------------------------------------------------
# Training: one loop for teachers and students, selection on validation mAP.


def _model(size: Sequence[int]) -> CED:
    embed_dim, depth, heads = size
    return CED(
        CEDConfig(embed_dim=embed_dim, depth=depth, num_heads=heads, num_classes=NUM_CLASSES)
    )


@torch.no_grad()
def predict_mels(models: Sequence[CED], mels: np.ndarray) -> np.ndarray:
    """Mean sigmoid probability of ``models`` on (N, F, T) spectrograms."""
    for m in models:
        m.eval()
    out = []
    for lo in range(0, len(mels), 256):
        batch = torch.from_numpy(mels[lo : lo + 256])
        out.append(
            torch.stack([torch.sigmoid(m.forward_mel(batch)) for m in models]).mean(0).numpy()
        )
    return np.concatenate(out) if out else np.zeros((0, NUM_CLASSES), np.float32)


def fit(
    model: CED,
    batch_of: Callable[[int, np.ndarray], tuple[np.ndarray, np.ndarray]],
    n_rows: int,
    epochs: int,
    lr: float,
    warmup_steps: int,
    batch_size: int,
    seed: int,
    valid: tuple[np.ndarray, np.ndarray],
    eval_every: int,
) -> dict:
    """Adam (no weight decay), warmup + cosine; keeps the state with the best validation mAP.

    ``batch_of(epoch, rows)`` gives (spectrograms, targets) of those rows.
    """
    steps_per_epoch = -(-n_rows // batch_size)
    engine = Engine(
        model,
        torch.optim.Adam(model.parameters(), lr=lr),
        Schedule(lr, steps_per_epoch * epochs, warmup_steps),
        forward=model.forward_mel,
        log_level=logging.DEBUG,  # many short runs: each one's result is the record
    )
    history: dict[str, list] = {"train_loss": [], "valid_epochs": [], "valid_mAP": []}
    best = (-1.0, 0, copy.deepcopy(model.state_dict()))

    def batches(epoch: int, first: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        order = epoch_order(seed, epoch, n_rows)
        for lo in range(first * batch_size, n_rows, batch_size):
            yield batch_of(epoch, order[lo : lo + batch_size])

    def select(epoch: int, losses: np.ndarray) -> None:
        nonlocal best
        history["train_loss"].append(float(np.mean(losses)))
        if epoch % eval_every == 0 or epoch == epochs:
            score = mean_average_precision(valid[1], predict_mels([model], valid[0]))
            history["valid_epochs"].append(epoch)
            history["valid_mAP"].append(score)
            if score > best[0]:
                best = (score, epoch, copy.deepcopy(model.state_dict()))

    engine.run(
        Loop(
            batches,
            lambda _epoch, batch: (torch.from_numpy(batch[0]), torch.from_numpy(batch[1])),
            F.binary_cross_entropy_with_logits,
            steps_per_epoch,
            epochs,
            on_epoch_end=select,
        )
    )
    model.load_state_dict(best[2])
    return {"history": history, "best_valid_mAP": best[0], "best_epoch": best[1]}


# Arrays shared with forked worker processes (read-only there).
_SHARED: dict = {}


def _train_teacher(index: int) -> dict:
    p: Protocol = _SHARED["protocol"]
    data: Data = _SHARED["data"]
    mels, labels = data.teacher_train
    torch.manual_seed(index)
    model = _model(p.teacher_sizes[index])
    run = fit(
        model,
        lambda _epoch, rows: (mels[rows], labels[rows]),
        len(mels),
        p.teacher_epochs,
        p.teacher_lr,
        p.warmup_steps,
        p.batch_size,
        seed=index,
        valid=data.valid,
        eval_every=p.eval_every,
    )
    path = Path(_SHARED["out"]) / "teachers" / f"teacher{index}.safetensors"
    save_model(model, path, labels=list(SYNTH_CLASSES))
    return {"checkpoint": str(path), "best_valid_mAP": run["best_valid_mAP"]}


def _targets(arm: Arm, data: Data) -> tuple[np.ndarray | None, np.ndarray]:
    """(per-view targets or None, plain-clip targets) of an arm."""
    if arm.source == "oracle":
        return data.oracle_views, data.oracle_clean
    return top_k(data.teacher_views, arm.k), top_k(data.teacher_clean, arm.k)


def _train_student(job: tuple[Arm, int]) -> dict:
    arm, seed = job
    p: Protocol = _SHARED["protocol"]
    data: Data = _SHARED["data"]
    started = time.perf_counter()
    view_targets, clean_targets = _targets(arm, data)

    def batch_of(epoch: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # The view of (clip, epoch) is the same for input and target: view index epoch % E.
        v = epoch % p.views
        mel = data.view_mels[v, rows] if arm.student_augmented else data.clean_mels[rows]
        target = view_targets[v, rows] if arm.teacher_augmented else clean_targets[rows]
        return mel, target

    torch.manual_seed(1000 + seed)
    model = _model(p.student_size)
    run = fit(
        model,
        batch_of,
        p.student_clips,
        p.student_epochs,
        p.student_lr,
        p.warmup_steps,
        p.batch_size,
        seed=seed,
        valid=data.valid,
        eval_every=p.eval_every,
    )
    test = mean_average_precision(data.test[1], predict_mels([model], data.test[0]))
    result = run | {"arm": arm.key, "seed": seed, "test_mAP": test}
    result["seconds"] = round(time.perf_counter() - started, 2)
    write_json(Path(_SHARED["out"]) / "runs" / f"{arm.key}_seed{seed}.json", result, sort_keys=True)
    return result


def _run_jobs(fn: Callable, jobs: list, workers: int) -> Iterator:
    """Results of ``fn`` over ``jobs`` as they finish; forked single-threaded workers when > 1."""
    if workers <= 1 or len(jobs) <= 1:
        yield from map(fn, jobs)
        return
    context = multiprocessing.get_context("fork")
    with context.Pool(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        yield from pool.imap_unordered(fn, jobs, chunksize=1)


# --------------------------------------------------------------------------
# The experiment.


def run_experiment(
    out_dir: str | Path,
    p: Protocol,
    kind: str,
    command: str,
    workers: int = 2,
    report_only: bool = False,
) -> dict:
    """Run (or resume) the Table 3 ablation (``kind="table3"``) or the K sweep (``"k_sweep"``).

    ``report_only`` trains nothing and reports the seeds finished so far.
    """
    if kind not in ("table3", "k_sweep"):
        raise ValueError(f"unknown experiment {kind!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arms = table3_arms(p) if kind == "table3" else k_sweep_arms(p)
    # As stored: tuples become lists, keys sorted.
    plan = json.loads(json.dumps({"kind": kind, "protocol": p.to_dict()}, sort_keys=True))
    claim_folder(out, plan)
    started = time.perf_counter()
    # The protocol goes to the report before any result exists.
    write_text(out / "ablation.md", render_protocol(p, kind, command) + "\n_Running._\n")
    data = build_data(p)
    _SHARED.update(protocol=p, data=data, out=str(out))

    teacher_paths = [
        out / "teachers" / f"teacher{i}.safetensors" for i in range(len(p.teacher_sizes))
    ]
    missing = [i for i, path in enumerate(teacher_paths) if not path.exists()]
    log.info("%d teacher(s) to train", len(missing))
    list(_run_jobs(_train_teacher, missing, workers))
    teachers = [load_model_file(path) for path in teacher_paths]
    flat = data.view_mels.reshape(-1, *data.view_mels.shape[2:])
    data.teacher_views = predict_mels(teachers, flat).reshape(p.views, p.student_clips, -1)
    data.teacher_clean = predict_mels(teachers, data.clean_mels)
    measured = {
        "label_change_share": label_change_share(data.oracle_clean, data.oracle_views),
        "topk_change_share": topk_change_share(data.teacher_clean, data.teacher_views, p.k),
        "decision_change_share": threshold_change_share(
            data.teacher_clean, data.teacher_views, 0.5
        ),
        "teacher_valid_mAP": mean_average_precision(
            data.valid[1], predict_mels(teachers, data.valid[0])
        ),
        "teacher_test_mAP": mean_average_precision(
            data.test[1], predict_mels(teachers, data.test[0])
        ),
        "views": int(data.oracle_views.shape[0] * data.oracle_views.shape[1]),
    }
    log.info("measured: %s", measured)

    jobs = [(arm, seed) for seed in range(p.seeds) for arm in arms]
    done = {}
    todo = []
    for arm, seed in jobs:
        path = out / "runs" / f"{arm.key}_seed{seed}.json"
        if path.exists():
            done[(arm.key, seed)] = read_json(path)
        else:
            todo.append((arm, seed))
    log.info("%d of %d student runs to train", len(todo), len(jobs))

    def report(final: bool) -> dict:
        # Only seeds finished in every arm enter the report, so a partial one stays paired.
        seeds = [s for s in range(p.seeds) if all((a.key, s) in done for a in arms)]
        if len(seeds) < 2:
            return {}
        summary = summarise(p, kind, arms, done, measured, seeds)
        summary["command"] = command
        summary["complete"] = final
        summary["seconds_this_invocation"] = round(time.perf_counter() - started, 1)
        plot(summary, out / "ablation.png")
        write_json(out / "ablation.json", summary, sort_keys=True)
        write_text(out / "ablation.md", render_protocol(p, kind, command) + render_results(summary))
        return summary

    finished_seeds = {s for s in range(p.seeds) if all((a.key, s) in done for a in arms)}
    if report_only:
        return report(final=not todo)
    for result in _run_jobs(_train_student, todo, workers):
        done[(result["arm"], result["seed"])] = result
        log.info("%s seed %d: test mAP %.4f", result["arm"], result["seed"], result["test_mAP"])
        seed = result["seed"]
        if seed not in finished_seeds and all((a.key, seed) in done for a in arms):
            finished_seeds.add(seed)
            report(final=False)
    return report(final=True)


def summarise(
    p: Protocol, kind: str, arms: list[Arm], runs: dict, measured: dict, seeds: list[int]
) -> dict:
    """Per-arm test mAP over seeds, and paired comparisons against the reference arm."""
    rows = []
    for arm in arms:
        scores = [runs[(arm.key, s)]["test_mAP"] for s in seeds]
        low, high = bootstrap_mean_interval(scores, p.level)
        histories = [runs[(arm.key, s)]["history"] for s in seeds]
        rows.append(
            {
                "arm": arm.key,
                "row": arm.name,
                "source": arm.source,
                "k": arm.k,
                "teacher_augmented": arm.teacher_augmented,
                "student_augmented": arm.student_augmented,
                "test_mAP": scores,
                "mean": float(np.mean(scores)),
                "ci": [low, high],
                "best_epoch": [runs[(arm.key, s)]["best_epoch"] for s in seeds],
                "train_loss": np.mean([h["train_loss"] for h in histories], axis=0).tolist(),
                "valid_epochs": histories[0]["valid_epochs"],
                "valid_mAP": np.mean([h["valid_mAP"] for h in histories], axis=0).tolist(),
                "seconds": float(sum(runs[(arm.key, s)]["seconds"] for s in seeds)),
            }
        )
    comparisons = []
    groups = SOURCES if kind == "table3" else ("teacher",)
    for source in groups:
        group = [r for r in rows if r["source"] == source]
        reference = group[-1]  # consistent, or the largest K
        for other in group[:-1]:
            c = compare_paired(reference["test_mAP"], other["test_mAP"], p.level)
            comparisons.append(
                c.to_dict()
                | {
                    "source": source,
                    "a": reference["row"],
                    "b": other["row"],
                    "beats": beats(c, p.alpha),
                }
            )
    return {
        "kind": kind,
        "protocol": p.to_dict(),
        "measured": measured,
        "seeds": seeds,
        "rows": rows,
        "comparisons": comparisons,
    }


# --------------------------------------------------------------------------
# Report and plot.


def render_protocol(p: Protocol, kind: str, command: str) -> str:
    """The fixed protocol and decision rule, written before any run starts."""
    title = "Consistent teaching ablation (Table 3)" if kind == "table3" else "K sweep (Figure 3)"
    if kind == "table3":
        rows = "; ".join(
            f"{row.name} (teacher aug. {'yes' if row.teacher_augmented else 'no'}, "
            f"student aug. {'yes' if row.student_augmented else 'no'})"
            for row in ROWS
        )
        compared = (
            "consistent (CED) minus each other row, separately for the learned teacher "
            "ensemble and for the oracle teacher"
        )
    else:
        rows = ", ".join(f"K={k}" for k in p.k_values) + " (consistent teaching, teacher ensemble)"
        compared = f"K={p.k_values[-1]} minus each smaller K"
    sizes = ", ".join(f"[{d}, {L}, {h}]" for d, L, h in p.teacher_sizes)
    lines = [
        f"# {title}",
        "",
        f"Command: `{command}`",
        "",
        "## Protocol (fixed in `distill/ablation.py` before any result)",
        "",
        f"- Rows: {rows}. Only the wave shift and SpecAugment are toggled; mixup is off in "
        "every row.",
        f"- Corpus (`distill.synth`, seed {p.corpus_seed}): {p.clip_seconds} s clips with "
        f"{p.events_per_clip[0]}-{p.events_per_clip[1]} events of {p.event_seconds[0]}-"
        f"{p.event_seconds[1]} s over background noise, {NUM_CLASSES} classes (many narrow-band). "
        f"Teachers learn from {p.teacher_clips} labelled clips; students see the first "
        f"{p.student_clips} of them; model selection on a validation split of {p.valid_clips} "
        f"clips; reported mAP on a separate test split of {p.test_clips} clips (plain clips, "
        "labels = every event).",
        f"- Augmentation: shift by a fraction in [-{p.shift_max_fraction}, "
        f"{p.shift_max_fraction}) of the clip with roll-over, p={p.shift_p}; one time mask of "
        f"width < {p.time_mask_width} frames (of 101) and one frequency mask of width < "
        f"{p.freq_mask_width} bins (of 64), fill 0 dB. The original's widths are 192 of 1001 "
        f"frames and 24 bins; the time mask is wider here so it can hide short events. "
        f"{p.views} stored views per clip (E), cycled over the student's epochs; the view of "
        "(clip, epoch) is one seeded draw shared by teacher and student.",
        f"- Teachers: {len(p.teacher_sizes)} CED models [embed, depth, heads] = {sizes}, "
        f"trained {p.teacher_epochs} epochs on plain clips with hard labels (Adam, lr "
        f"{p.teacher_lr}), best validation epoch kept; ensemble = mean sigmoid; the student's "
        f"targets are the ensemble's top-{p.k} probabilities (0 elsewhere).",
        f"- Oracle teacher: targets = the classes with an event audible in the view: at least "
        f"{p.min_fraction:.0%} of the event's frames (its time span, rolled by the shift) and "
        f"{p.min_fraction:.0%} of its mel bins (centres within the band holding 90 % of its "
        "energy; the nearest bin for a tone) survive the masks.",
        f"- Students: CED {list(p.student_size)}, {p.student_epochs} epochs of "
        f"{p.student_clips} clips, batch {p.batch_size}, Adam (no weight decay), lr "
        f"{p.student_lr} with {p.warmup_steps} warmup steps and cosine decay to 10 %; "
        f"validation mAP every {p.eval_every} epochs, the best epoch's weights are tested.",
        f"- Seeds: {p.seeds}. Seed s fixes the student's initial weights and data order in "
        "every row (pairing); the views and the teachers are the same for all seeds.",
        f"- Decision rule: row A beats row B when, over the paired per-seed differences A - B "
        f"of test mAP, the one-sided sign test (H1: A > B, ties dropped) gives p < {p.alpha} "
        f"and the {p.level:.0%} percentile-bootstrap interval of the mean difference lies "
        f"above 0. Compared: {compared}.",
        "",
    ]
    return "\n".join(lines)


def _fmt_ci(ci: Sequence[float]) -> str:
    return f"[{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci[0] < 0 else f"[{ci[0]:.4f}, {ci[1]:.4f}]"


def render_results(summary: dict) -> str:
    m = summary["measured"]
    p = summary["protocol"]
    lines = ["## Results", ""]
    if not summary["complete"]:
        lines += [
            f"**Partial: {len(summary['seeds'])} of {p['seeds']} seeds finished.**",
            "",
        ]
    lines += [
        f"- Augmented views whose true labels differ from the clean clip's: "
        f"**{m['label_change_share']:.1%}** of {m['views']} views.",
        f"- Views whose teacher top-{p['k']} set differs from the clean clip's: "
        f"**{m['topk_change_share']:.1%}** (K={p['k']} of {NUM_CLASSES} classes for 2-3 events, "
        "so the lower ranks hold weak classes whose order moves easily); views whose set of "
        f"classes with ensemble probability >= 0.5 differs: **{m['decision_change_share']:.1%}**.",
        f"- Teacher ensemble mAP: validation {m['teacher_valid_mAP']:.4f}, test "
        f"{m['teacher_test_mAP']:.4f}.",
        "",
        f"Test mAP, mean over {len(summary['seeds'])} seeds with its {p['level']:.0%} "
        "bootstrap interval:",
        "",
        markdown_table(
            ["targets", "row", "mean", "interval", "per seed", "best epochs"],
            [
                (
                    r["source"],
                    r["row"],
                    f"{r['mean']:.4f}",
                    _fmt_ci(r["ci"]),
                    ", ".join(f"{v:.3f}" for v in r["test_mAP"]),
                    ", ".join(str(e) for e in r["best_epoch"]),
                )
                for r in summary["rows"]
            ],
        ),
        "",
        "Paired differences (per seed):",
        "",
        markdown_table(
            ["targets", "A - B", "mean", "interval", "wins / losses", "sign-test p", "A beats B"],
            [
                (
                    c["source"],
                    f"{c['a']} - {c['b']}",
                    f"{c['mean']:+.4f}",
                    f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]",
                    f"{c['wins']} / {c['losses']}",
                    f"{c['p_value']:.3f}",
                    "yes" if c["beats"] else "no",
                )
                for c in summary["comparisons"]
            ],
        ),
    ]
    if summary["kind"] == "table3":
        lines += [
            "",
            "Over-fitting check: the no-augmentation students' training loss and validation "
            "mAP, mean over seeds (the loss against soft teacher targets cannot reach 0: it is "
            "bounded below by the targets' entropy):",
            "",
        ]
        lines.append(_curve_table([r for r in summary["rows"] if r["row"] == ROWS[0].name]))
    if summary["kind"] == "k_sweep":
        payload = ", ".join(f"K={r['k']}: {4 * r['k'] + 4}" for r in summary["rows"])
        lines += ["", f"Stored payload per sample-epoch (K*4 + 4 bytes): {payload}."]
    lines += [
        "",
        f"Student runs: {sum(r['seconds'] for r in summary['rows']):.0f} s in all (summed over "
        "runs, two at a time).",
    ]
    lines += ["", "## Verdict", "", verdict(summary), ""]
    lines += [
        "![Test mAP per row (mean, bootstrap interval, one grey line per seed) and validation "
        "curves](ablation.png)",
        "",
    ]
    return "\n".join(lines)


def _curve_table(rows: list[dict]) -> str:
    header = ["epoch"]
    for r in rows:
        header += [f"{r['source']}: train loss", f"{r['source']}: validation mAP"]
    body = []
    for i, epoch in enumerate(rows[0]["valid_epochs"]):
        cells = [epoch]
        for r in rows:
            cells += [f"{r['train_loss'][epoch - 1]:.4f}", f"{r['valid_mAP'][i]:.4f}"]
        body.append(cells)
    return markdown_table(header, body)


def verdict(summary: dict) -> str:
    """A sentence per group, derived from the numbers and the decision rule alone."""
    parts = []
    for source in ("teacher", "oracle"):
        comps = [c for c in summary["comparisons"] if c["source"] == source]
        if not comps:
            continue
        rows = [r for r in summary["rows"] if r["source"] == source]
        order = " > ".join(r["row"] for r in sorted(rows, key=lambda r: -r["mean"]))
        won = [c["b"] for c in comps if c["beats"]]
        lost = [c["b"] for c in comps if not c["beats"]]
        head = comps[0]["a"]
        text = f"With the {source} targets the rows rank by mean test mAP: {order}. "
        text += (
            f"{head} beats {', '.join(won)} under the decision rule"
            if won
            else f"{head} beats no row under the decision rule"
        )
        text += f"; not shown against {', '.join(lost)}." if lost and won else "."
        parts.append(text)
    return " ".join(parts)


def plot(summary: dict, path: Path) -> None:
    """Per group: row means with intervals and one line per seed; plus the no-aug curves."""
    groups = [s for s in SOURCES if any(r["source"] == s for r in summary["rows"])]
    fig, axes = plt.subplots(1, len(groups) + 1, figsize=(5 * (len(groups) + 1), 4))
    for ax, source in zip(axes, groups, strict=False):
        rows = [r for r in summary["rows"] if r["source"] == source]
        x = np.arange(len(rows))
        per_seed = np.array([r["test_mAP"] for r in rows])
        for seed_line in per_seed.T:
            ax.plot(x, seed_line, color="0.75", lw=0.8, marker=".", zorder=1)
        means = np.array([r["mean"] for r in rows])
        err = np.array([[r["mean"] - r["ci"][0], r["ci"][1] - r["mean"]] for r in rows]).T
        ax.errorbar(x, means, yerr=err, fmt="o", color="tab:blue", capsize=5, zorder=3)
        ax.set_xticks(x, [r["row"].replace(" augmentation", "\naug.") for r in rows], fontsize=7)
        ax.set_ylabel("test mAP")
        ax.set_title(f"{source} targets")
    ax = axes[-1]
    shown = ("no augmentation", CONSISTENT) if summary["kind"] == "table3" else None
    for r in summary["rows"]:
        if shown is None or r["row"] in shown:
            label = r["row"] if shown is None else f"{r['source']}: {r['row']}"
            style = "--" if r["source"] == "oracle" else "-"
            ax.plot(r["valid_epochs"], r["valid_mAP"], style, marker=".", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation mAP (mean over seeds)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
