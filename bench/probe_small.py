"""Time the linear probe on small high-dimensional tasks against scikit-learn's fits.

hearbaseline's naive model embeds into 4096 dimensions, and ``ced-eval demo``'s
tasks have a dozen clips (a few hundred frames) per split, so the probe's fits
have far fewer rows than dimensions. This times :func:`eval.probe.linear_probe`
on such embedding folders with three fits, interleaved and repeated (the
machine is shared: compare the variants of one run, not runs):

- ``span``: the probe as it is (:func:`eval.probe.solver_for` picks its solver);
- ``features``: the fit on the features with torch's threads, whatever the size;
- ``sklearn``: scikit-learn's ``LogisticRegression`` (lbfgs, its default
  tolerance, one-vs-rest for multilabel), cold-started for every C of the grid.

Selection (C, post-processing) and scoring are the probe's own for all three,
so their scores are comparable. Each record has the whole probe's wall time
and the time spent fitting::

    python -m bench.probe_small --task DEMO/eval/hearbaseline/embeddings/hearbaseline/synth_event
    python -m bench.probe_small --synthetic /tmp/probe_small   # a 4096-dim scene task instead
"""

from __future__ import annotations

import csv
import json
import logging
import statistics
import time
import warnings
from pathlib import Path
from unittest import mock

import click
import numpy as np

from ced_common import logs
from ced_common.files import write_json
from eval import probe
from eval.probe import C_GRID, MAX_ITER, LinearModel, SplitData, fitted_labels

log = logging.getLogger(__spec__.name if __spec__ else __name__)

VARIANTS = ("span", "features", "sklearn")


def write_scene_embeddings(
    folder: Path, clips: int = 12, labels: int = 4, dim: int = 4096, seed: int = 0
) -> Path:
    """A multiclass scene task's embedding folder: ``clips`` per train/valid/test split.

    The sizes of ``ced-eval demo``'s synth_scene_multiclass as hearbaseline
    embeds it; embeddings are non-negative (as hearbaseline's) with a weak
    class direction, so the probe has something to find.
    """
    rng = np.random.default_rng(seed)
    names = [f"class{k}" for k in range(labels)]
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "labelvocabulary.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("idx", "label"), *enumerate(names)])
    directions = rng.random((labels, dim)).astype(np.float32)
    for split in ("train", "valid", "test"):
        (folder / split).mkdir(exist_ok=True)
        reference = {}
        for index in range(clips):
            name = f"{split}_{index:03d}.wav"
            label = index % labels
            embedding = rng.random(dim).astype(np.float32) + 0.1 * directions[label]
            np.save(folder / split / f"{name}.embedding.npy", embedding)
            (folder / split / f"{name}.target-labels.json").write_text(json.dumps([names[label]]))
            reference[name] = [names[label]]
        (folder / f"{split}.json").write_text(json.dumps(reference))
    metadata = {
        "task_name": "synthetic_scene_4096", "embedding_type": "scene",
        "prediction_type": "multiclass", "split_mode": "trainvaltest",
        "evaluation": ["top1_acc"],
    }  # fmt: skip
    write_json(folder / "task_metadata.json", metadata, indent=None)
    return folder


def sklearn_path(train: SplitData, multilabel: bool, c_grid=C_GRID):
    """(C, model) for every C from scikit-learn's fits, as :func:`eval.probe.fit_path` yields."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train.features)
    x = scaler.transform(train.features)
    columns, constant = fitted_labels(train.targets, multilabel)
    targets = train.targets[:, columns]
    for c in sorted(c_grid):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lbfgs may stop at max_iter on separable data
            if multilabel:
                fits = [LogisticRegression(C=c, max_iter=MAX_ITER).fit(x, t) for t in targets.T]
                weights = np.stack([fit.coef_[0] for fit in fits], axis=1)
                bias = np.array([fit.intercept_[0] for fit in fits])
            else:
                fit = LogisticRegression(C=c, max_iter=MAX_ITER).fit(x, targets.argmax(1))
                weights, bias = fit.coef_.T, fit.intercept_
                if len(columns) == 2:  # binary: softmax over (-z/2, z/2) is sigmoid(z)
                    weights, bias = np.hstack([-weights, weights]) / 2, np.array([-1, 1]) * bias / 2
        yield c, LinearModel(scaler.mean_.astype(np.float32), scaler.scale_.astype(np.float32),
                             weights.astype(np.float32), bias.astype(np.float32), columns,
                             constant, multilabel)  # fmt: skip


def _timed(path_function, spent: list[float]):
    """``path_function`` with the seconds spent inside it appended to ``spent``."""

    def timed_path(*args, **kwargs):
        generator = path_function(*args, **kwargs)
        while True:
            start = time.perf_counter()
            try:
                item = next(generator)
            except StopIteration:
                spent.append(time.perf_counter() - start)
                return
            spent.append(time.perf_counter() - start)
            yield item

    return timed_path


def _name(folder: Path) -> str:
    """The task and its parent (heareval's module folder: tasks of two modules differ)."""
    return f"{folder.parent.name}/{folder.name}"


def run_variant(folder: Path, variant: str) -> dict:
    """One probe of ``folder`` with ``variant``'s fit: wall and fit seconds, scores, Cs."""
    spent: list[float] = []
    path_function = sklearn_path if variant == "sklearn" else probe.fit_path
    with mock.patch.object(probe, "fit_path", _timed(path_function, spent)):
        if variant == "features":
            features = probe.Solver(span=False, threads=None)
            with mock.patch.object(probe, "solver_for", lambda *_: features):
                start = time.perf_counter()
                result = probe.linear_probe(folder)
        else:
            start = time.perf_counter()
            result = probe.linear_probe(folder)
    return {
        "task": _name(folder), "variant": variant, "wall_s": round(time.perf_counter() - start, 3),
        "fit_s": round(sum(spent), 3), "score": result["score"],
        "C": [fold["C"] for fold in result["folds"].values()],
    }  # fmt: skip


def _spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3)}  # fmt: skip


@click.command()
@click.option("--task", "tasks", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="heareval embeddings folder of a task (repeat).")  # fmt: skip
@click.option("--synthetic", type=click.Path(file_okay=False), default=None,
              help="Write a 4096-dim scene task of the demo's size here and time it too.")  # fmt: skip
@click.option("--variants", default=",".join(VARIANTS), show_default=True)
@click.option("--repeats", default=5, show_default=True)
@click.option("--threads", default=2, show_default=True, help="torch and BLAS threads.")
def main(tasks, synthetic, variants, repeats, threads) -> None:
    """Probe every task with every variant, interleaved, ``repeats`` times; JSON lines out."""
    import os

    import torch
    from threadpoolctl import threadpool_limits

    logs.configure()
    folders = [Path(t) for t in tasks]
    if synthetic:
        folders.append(write_scene_embeddings(Path(synthetic)))
    if not folders:
        raise click.UsageError("give --task folders or --synthetic")
    chosen = [v for v in variants.split(",") if v]
    unknown = sorted(set(chosen) - set(VARIANTS))
    if unknown:
        raise click.BadParameter(
            f"unknown {unknown}; choose from {VARIANTS}", param_hint="--variants"
        )
    torch.set_num_threads(threads)
    for folder in folders:  # imports and first-call costs outside the timings
        run_variant(folder, "span")
    records = []
    with threadpool_limits(threads):
        for repeat in range(repeats):
            for index, folder in enumerate(folders):
                shift = (repeat + index) % len(chosen)  # rotate the order: no variant always first
                for variant in chosen[shift:] + chosen[:shift]:
                    load = os.getloadavg()[0]
                    record = {**run_variant(folder, variant), "repeat": repeat, "load": load}
                    records.append(record)
                    click.echo(json.dumps(record))
    for folder in folders:
        for variant in chosen:
            mine = [r for r in records if r["task"] == _name(folder) and r["variant"] == variant]
            summary = {"task": _name(folder), "variant": variant,
                       "wall_s": _spread([r["wall_s"] for r in mine]),
                       "fit_s": _spread([r["fit_s"] for r in mine]),
                       "scores": sorted({r["score"] for r in mine}),
                       "C": sorted({tuple(r["C"]) for r in mine})}  # fmt: skip
            click.echo(json.dumps({"summary": summary}))
    loads = [r["load"] for r in records]
    click.echo(json.dumps({"load_average_1min": _spread(loads), "threads": threads}))


if __name__ == "__main__":
    main()
