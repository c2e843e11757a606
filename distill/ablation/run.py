"""Running the experiment: teachers, students, the worker pool, resume.

Everything is in memory except the teachers' weights and one JSON per
finished run, so an interrupted experiment resumes at the first missing run.
Runs go to forked single-threaded workers; what they read (protocol, data,
output folder) is handed to each worker when the pool starts, so the forked
processes share the arrays instead of receiving a copy per run.
"""

from __future__ import annotations

import copy
import functools
import logging
import multiprocessing
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from hear_ced.checkpoints import load_model_file, save_model
from hear_ced.common.config import to_plain
from hear_ced.common.files import claim_folder, read_json, write_json
from hear_ced.distill.ablation.data import Data, build_data, clip_mels, teacher_view_seeds, top_k
from hear_ced.distill.ablation.protocol import (
    NUM_CLASSES,
    Arm,
    Protocol,
    k_sweep_arms,
    table3_arms,
)
from hear_ced.distill.ablation.report import summarise, write_protocol, write_report
from hear_ced.distill.engine import Engine, Loop, Schedule
from hear_ced.distill.metrics import mean_average_precision
from hear_ced.distill.oracle import label_change_share, threshold_change_share, topk_change_share
from hear_ced.distill.synth import SYNTH_CLASSES
from hear_ced.distill.train import epoch_order
from hear_ced.model import CED, CEDConfig
from hear_ced.tagging import pass_probabilities

log = logging.getLogger(__name__)


def _model(size: Sequence[int]) -> CED:
    embed_dim, depth, heads = size
    return CED(
        CEDConfig(embed_dim=embed_dim, depth=depth, num_heads=heads, num_classes=NUM_CLASSES)
    )


@torch.no_grad()
def predict_mels(models: Sequence[CED], mels: np.ndarray) -> np.ndarray:
    """Mean probability of ``models`` on (N, F, T) spectrograms of clips of one pass each.

    The clips are shorter than a pass, so this is the one rule of
    ``hear-ced tag`` for a clip (``hear_ced.tagging.pass_probabilities``) on
    features made beforehand, some of them augmented views.
    """
    for m in models:
        m.eval()
    out = []
    for lo in range(0, len(mels), 256):
        batch = torch.from_numpy(mels[lo : lo + 256])
        out.append(torch.stack([pass_probabilities(m, batch) for m in models]).mean(0).numpy())
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
            steps_per_epoch,
            epochs,
            on_epoch_end=select,
        )
    )
    model.load_state_dict(best[2])
    return {"history": history, "best_valid_mAP": best[0], "best_epoch": best[1]}


def teacher_batches(
    p: Protocol, data: Data, index: int
) -> Callable[[int, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``batch_of`` of teacher ``index``: the plain clips, or a fresh view per (clip, epoch).

    The views are drawn by the functions and with the augmentation of the
    student views; the targets are the clips' labels either way.
    """
    mels, labels = data.teacher_train
    if p.teacher_training == "plain":
        return lambda _epoch, rows: (mels[rows], labels[rows])
    augment = p.augment()

    def batch_of(epoch: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        seeds = teacher_view_seeds(p, index, epoch)[rows]
        return clip_mels(data.teacher_waves[rows], seeds, augment), labels[rows]

    return batch_of


def _train_teacher(p: Protocol, data: Data, out: Path, index: int) -> dict:
    torch.manual_seed(index)
    model = _model(p.teacher_sizes[index])
    run = fit(
        model,
        teacher_batches(p, data, index),
        p.teacher_clips,
        p.teacher_epochs,
        p.teacher_lr,
        p.warmup_steps,
        p.batch_size,
        seed=index,
        valid=data.valid,
        eval_every=p.eval_every,
    )
    path = out / "teachers" / f"teacher{index}.safetensors"
    save_model(model, path, labels=list(SYNTH_CLASSES))
    return {"checkpoint": str(path), "best_valid_mAP": run["best_valid_mAP"]}


def _targets(arm: Arm, data: Data) -> tuple[np.ndarray | None, np.ndarray]:
    """(per-view targets or None, plain-clip targets) of an arm."""
    if arm.source == "oracle":
        return data.oracle_views, data.oracle_clean
    return top_k(data.teacher_views, arm.k), top_k(data.teacher_clean, arm.k)


def _train_student(p: Protocol, data: Data, out: Path, job: tuple[Arm, int]) -> dict:
    arm, seed = job
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
    write_json(out / "runs" / f"{arm.key}_seed{seed}.json", result, sort_keys=True)
    return result


# The task of a forked worker, set by the pool's initializer in that process only.
_worker_task: Callable | None = None


def _start_worker(task: Callable) -> None:
    global _worker_task
    torch.set_num_threads(1)
    _worker_task = task


def _run_in_worker(job: object) -> dict:
    return _worker_task(job)


def _run_jobs(task: Callable, jobs: list, workers: int) -> Iterator:
    """Results of ``task`` over ``jobs`` as they finish; forked single-threaded workers when > 1.

    ``task`` (with the arrays it holds) reaches the workers through the fork,
    not through a pickle per job.
    """
    if workers <= 1 or len(jobs) <= 1:
        yield from map(task, jobs)
        return
    context = multiprocessing.get_context("fork")
    with context.Pool(workers, initializer=_start_worker, initargs=(task,)) as pool:
        yield from pool.imap_unordered(_run_in_worker, jobs, chunksize=1)


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
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arms = table3_arms(p) if kind == "table3" else k_sweep_arms(p)
    claim_folder(out, {"kind": kind, "protocol": to_plain(p)}, advice="use another --out")
    started = time.perf_counter()
    # The protocol goes to the report before any result exists.
    write_protocol(out, p, kind, command)
    data = build_data(p)

    teacher_paths = [
        out / "teachers" / f"teacher{i}.safetensors" for i in range(len(p.teacher_sizes))
    ]
    missing = [i for i, path in enumerate(teacher_paths) if not path.exists()]
    log.info("%d teacher(s) to train", len(missing))
    list(_run_jobs(functools.partial(_train_teacher, p, data, out), missing, workers))
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
        write_report(out, p, kind, command, summary)
        return summary

    finished_seeds = {s for s in range(p.seeds) if all((a.key, s) in done for a in arms)}
    if report_only:
        return report(final=not todo)
    for result in _run_jobs(functools.partial(_train_student, p, data, out), todo, workers):
        done[(result["arm"], result["seed"])] = result
        log.info("%s seed %d: test mAP %.4f", result["arm"], result["seed"], result["test_mAP"])
        seed = result["seed"]
        if seed not in finished_seeds and all((a.key, seed) in done for a in arms):
            finished_seeds.add(seed)
            report(final=False)
    return report(final=True)
