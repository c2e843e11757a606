"""A true linear probe on the embeddings hear-eval-kit has written.

heareval's own downstream model is a grid-searched MLP (1-2 hidden layers of
1024 units), so its scores mix embedding quality with a non-linear classifier.
This probe is a logistic regression on standardised embeddings (one-vs-rest for
multilabel tasks), with the same splits and folds as heareval and the task's own
primary metric (heareval's scoring functions, so numbers are comparable).

Regularisation: for every train/valid/test split, C is picked from ``C_GRID``
on the valid split; the model trained on the train split with that C is
scored on the test split. k-fold tasks use heareval's rotation (test = fold i,
valid = fold i+1, train = the rest) and report the mean over folds, as
heareval's ``aggregated_scores`` does.

Solver: one objective and optimiser (see :func:`fit_path`) for every size;
:func:`solver_for` decides whether it runs on the features or on the span of
the training rows, and on how many threads.

Event tasks: the probe classifies every timestamp embedding (one-vs-rest
logistic regression on frames), then scores exactly as heareval does: its
``get_events_for_all_files`` turns frame probabilities into events with the
task's post-processing grid (median filter, minimum duration), and its
sed_eval-based event scores compare them with the reference events. C and the
post-processing are chosen together on the valid split.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hear_ced.labels import multi_hot

log = logging.getLogger(__name__)

C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
MAX_ITER = 500
# Largest gradient entry at convergence; scikit-learn's lbfgs default is 1e-4, which
# lets warm-started fits stop farther from the optimum than cold-started ones.
TOLERANCE = 1e-5


class ProbeError(ValueError):
    """The embeddings folder cannot be probed (missing files, event task, ...)."""


@dataclass(frozen=True)
class SplitData:
    features: np.ndarray  # (n, dim) float32: one row per clip, or per timestamp for events
    targets: np.ndarray  # (n, n_labels) multi-hot / one-hot
    filenames: tuple[str, ...] = ()  # event tasks: clip of each row
    timestamps: np.ndarray | None = None  # event tasks: time of each row, ms


def _label_index(folder: Path) -> dict[str, int]:
    with open(folder / "labelvocabulary.csv", newline="") as handle:
        return {str(row["label"]): int(row["idx"]) for row in csv.DictReader(handle)}


def _targets(rows: list[list], label_index: dict[str, int]) -> np.ndarray:
    """(rows, labels) multi-hot targets of each row's active labels."""
    return np.stack(
        [multi_hot((label_index[str(x)] for x in row), len(label_index)) for row in rows]
    )


def load_split(folder: Path, split: str, label_index: dict[str, int]) -> SplitData:
    """Per-file embeddings and JSON labels of one split (no pickles are read)."""
    split_dir = folder / split
    names = sorted(json.loads((folder / f"{split}.json").read_text()))
    if not names:
        raise ProbeError(f"split {split} of {folder.name} has no files")
    features, targets, filenames, timestamps = [], [], [], []
    for name in names:
        path = split_dir / f"{name}.embedding.npy"
        if not path.is_file():
            raise ProbeError(f"missing embedding {path}")
        embedding = np.load(path, allow_pickle=False).astype(np.float32)
        labels = json.loads((split_dir / f"{name}.target-labels.json").read_text())
        if embedding.ndim == 1:  # scene: one row per clip, labels of the clip
            features.append(embedding[None])
            targets.append(_targets([labels], label_index))
        else:  # event: one row per timestamp, labels active at that time
            times = json.loads((split_dir / f"{name}.timestamps.json").read_text())
            features.append(embedding)
            targets.append(_targets(labels, label_index))
            filenames += [name] * len(times)
            timestamps += times
    return SplitData(
        np.concatenate(features),
        np.concatenate(targets),
        tuple(filenames),
        np.asarray(timestamps, dtype=np.float64) if timestamps else None,
    )


def data_splits(metadata: dict) -> list[dict[str, list[str]]]:
    """heareval's train/valid/test assignment (one split, or one per fold)."""
    if metadata["split_mode"] == "trainvaltest":
        return [{"train": ["train"], "valid": ["valid"], "test": ["test"]}]
    folds = sorted(metadata["splits"])
    if len(folds) < 3:
        raise ProbeError(f"k-fold needs at least 3 folds, got {folds}")
    rotations = []
    for index, test in enumerate(folds):
        valid = folds[(index + 1) % len(folds)]
        rotations.append(
            {
                "train": [f for f in folds if f not in (test, valid)],
                "valid": [valid],
                "test": [test],
            }
        )
    return rotations


def _concat(parts: list[SplitData]) -> SplitData:
    if len(parts) == 1:
        return parts[0]
    events = parts[0].timestamps is not None
    return SplitData(
        np.concatenate([p.features for p in parts]),
        np.concatenate([p.targets for p in parts]),
        tuple(name for p in parts for name in p.filenames),
        np.concatenate([p.timestamps for p in parts]) if events else None,
    )


@dataclass(frozen=True)
class LinearModel:
    """A fitted probe: standardisation, weights of the labels it was fitted on, constants."""

    mean: np.ndarray  # (dim,) float32
    scale: np.ndarray  # (dim,) float32, 1 where a feature is constant (as StandardScaler)
    weights: np.ndarray  # (dim, n_fitted) float32
    bias: np.ndarray  # (n_fitted,) float32
    columns: np.ndarray  # label index of each fitted output
    constant: np.ndarray  # (n_labels,) probability of every label left out of the fit
    multilabel: bool

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """(n, n_labels) probabilities; multiclass: classes unseen in training get 0."""
        from scipy.special import expit, softmax

        logits = ((features - self.mean) / self.scale) @ self.weights + self.bias
        full = np.repeat(self.constant[None], features.shape[0], axis=0)
        full[:, self.columns] = expit(logits) if self.multilabel else softmax(logits, axis=1)
        return full


def _objective(x, y, multilabel: bool, c: float):
    """Loss and gradient of flat [weights, bias]: mean log loss + ||W||^2 / (2 C n).

    ``x`` and ``y`` are float32 torch tensors: the products and the elementwise
    terms (sigmoid, softplus over frames x labels) run multi-threaded in float32;
    the loss is summed in float64.
    """
    import torch

    n, dim = x.shape
    split = dim * y.shape[1]

    def loss_and_gradient(params: np.ndarray) -> tuple[float, np.ndarray]:
        flat = torch.from_numpy(params.astype(np.float32))
        logits = torch.addmm(flat[split:], x, flat[:split].view(dim, -1))
        if multilabel:  # binary log loss of every label
            loss = torch.nn.functional.softplus(logits).sum(dtype=torch.float64)
            loss -= (y * logits).sum(dtype=torch.float64)
            residual = torch.sigmoid(logits).sub_(y)
        else:
            log_p = torch.log_softmax(logits, dim=1)
            loss = -(y * log_p).sum(dtype=torch.float64)
            residual = log_p.exp_().sub_(y)
        gradient = torch.cat([(x.T @ residual).ravel(), residual.sum(dim=0)]).double().numpy()
        gradient = gradient / n
        gradient[:split] += params[:split] / (c * n)
        penalty = float(params[:split] @ params[:split]) / (2 * c * n)
        return float(loss) / n + penalty, gradient

    return loss_and_gradient


# Singular values below this fraction of the largest are dropped from the row span: far
# below the embeddings' float32 resolution that matters, above the Gram matrix's error.
SPAN_TOLERANCE = 1e-6
# Largest fit (rows x fitted dimensions x labels, one matrix product) run on one thread.
SINGLE_THREAD_PRODUCT = 1 << 22


def solver_for(n_samples: int, dim: int, labels: int) -> tuple[bool, int | None]:
    """(fit in the span of the training rows, torch threads or None for torch's setting).

    Span: the regularised optimum's weights are a combination of the training
    rows (the loss's gradient lies in their span, and so does the penalty's),
    so with n rows the fit can run on the n coordinates of an SVD instead of
    all ``dim`` features: the same objective and optimum, with parameters and
    products n/dim the size. The SVD costs about n^2 x dim once and each step's
    saving shrinks as n nears dim, so the span is used only where n is at most
    half of dim.

    Threads: a step of a small fit is a few tiny products, where torch's worker
    threads cost more than they save (and far more on a busy machine, each
    waiting for a core), so fits of at most ``SINGLE_THREAD_PRODUCT``
    multiply-adds run on one thread.
    """
    span = 2 * n_samples <= dim
    product = n_samples * (min(n_samples, dim) if span else dim) * labels
    return span, 1 if product <= SINGLE_THREAD_PRODUCT else None


@contextlib.contextmanager
def _torch_threads(threads: int | None):
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _row_span(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(coordinates (n, r) float32, orthonormal basis (dim, r) float64), x = coordinates @ basis.T.

    The SVD through the n x n Gram matrix (one product, then an n x n
    eigenproblem, far cheaper than LAPACK's SVD of the wide matrix), on one
    BLAS thread. Directions with a singular value below ``SPAN_TOLERANCE`` of
    the largest are dropped (centred rows have rank n - 1 at most).
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        rows = x.astype(np.float64)
        eigenvalues, vectors = np.linalg.eigh(rows @ rows.T)
        singular = np.sqrt(np.clip(eigenvalues[::-1], 0.0, None))
        vectors = vectors[:, ::-1]
        tolerance = singular[0] * SPAN_TOLERANCE
        rank = max(1, int(np.sum(singular > tolerance)))
        singular, vectors = singular[:rank], vectors[:, :rank]
        basis = rows.T @ (vectors / np.where(singular > 0, singular, 1.0))
    return (vectors * singular).astype(np.float32), basis


def fitted_labels(targets: np.ndarray, multilabel: bool) -> tuple[np.ndarray, np.ndarray]:
    """(label indices the fit learns, probability of every label for the rest).

    Multilabel: labels neither always off nor always on (on ones get 1);
    multiclass: the classes present in training (absent ones get 0).
    """
    constant = np.zeros(targets.shape[1])
    if not multilabel:
        return np.flatnonzero(targets.sum(axis=0)), constant
    rate = targets.mean(axis=0)
    constant[rate == 1] = 1.0
    return np.flatnonzero((rate > 0) & (rate < 1)), constant


def fit_path(train: SplitData, multilabel: bool, c_grid=C_GRID):
    """(C, model) for every C, ascending, each fit warm-started from the one before.

    Same objective and optimiser as scikit-learn's ``LogisticRegression``
    (L-BFGS-B; ``tol`` see ``TOLERANCE``) on standardised features: mean log loss +
    ||W||^2 / (2 C n), intercept not penalised. Multilabel tasks fit all labels
    as one problem: their objectives are independent, so the optimum is
    one-vs-rest's, but one matrix product per step serves every label.
    Multiclass tasks fit the
    softmax over the classes present in training. A label constant in training
    (multilabel) gets that constant probability, as one-vs-rest does. Where
    :func:`solver_for` says so, the weights are fitted as coordinates in
    the span of the standardised training rows and mapped back: an orthonormal
    basis keeps the penalty ||W||^2 as it is.
    """
    import torch
    from scipy.optimize import minimize

    mean = train.features.mean(axis=0)
    scale = train.features.std(axis=0)
    scale[scale == 0] = 1.0
    x = ((train.features - mean) / scale).astype(np.float32)
    columns, constant = fitted_labels(train.targets, multilabel)
    trainable = len(columns) > (0 if multilabel else 1)
    y = torch.from_numpy(train.targets[:, columns].astype(np.float32))
    (span, threads), basis = solver_for(*x.shape, len(columns)), None
    if span:
        x, basis = _row_span(x)
    params = np.zeros((x.shape[1] + 1) * len(columns))
    for c in sorted(c_grid):
        if trainable:
            with _torch_threads(threads):
                result = minimize(
                    _objective(torch.from_numpy(x), y, multilabel, c), params, method="L-BFGS-B",
                    jac=True, options={"maxiter": MAX_ITER, "maxls": 50, "gtol": TOLERANCE,
                                       "ftol": 64 * np.finfo(float).eps},
                )  # fmt: skip
            params = result.x
            log.debug("C=%g: %d L-BFGS-B iterations (%s)", c, result.nit, result.message)
        split = x.shape[1] * len(columns)
        weights = params[:split].reshape(x.shape[1], len(columns))
        if basis is not None:
            weights = basis @ weights
        yield c, LinearModel(mean, scale, weights.astype(np.float32),
                             params[split:].astype(np.float32), columns, constant,
                             multilabel)  # fmt: skip


def _score(metric: str, label_index: dict[str, int], predictions, targets) -> float:
    """heareval's score; arrays for scene tasks, event dicts for event tasks."""
    with warnings.catch_warnings():
        # dcase_util (imported by heareval.score) warns about pkg_resources on import
        warnings.simplefilter("ignore")
        from heareval.score import available_scores

        params = getattr(available_scores[metric], "keywords", {}).get("params", {})
        if params.get("evaluate_onset") and not params.get("evaluate_offset"):
            return onset_f_measure(predictions, targets, params["t_collar"])
        value = available_scores[metric](label_to_idx=label_index)(predictions, targets)
    return float(value[0][1] if isinstance(value, tuple) else value)


def onset_f_measure(predictions: dict, targets: dict, collar: float) -> float:
    """heareval's onset-only event F-measure, equal to its sed_eval score but O(n log n).

    sed_eval compares every reference event of a file with every estimate in
    Python, and the probe scores each C and post-processing. With onsets alone, a reference and an estimate
    of one label match when their onsets (s) differ by at most ``collar``; for
    such equal-width windows, giving each reference, in onset order, the earliest
    unmatched estimate inside its window is a maximum matching, the count
    sed_eval's bipartite matching finds. Files are those of ``predictions``, and
    the counts go through sed_eval's own precision/recall/F formulas.
    """
    from sed_eval import metric

    n_ref = n_sys = n_tp = 0
    for filename, estimated in predictions.items():
        reference = targets.get(filename, [])
        n_ref, n_sys = n_ref + len(reference), n_sys + len(estimated)
        onsets: dict[str, tuple[list[float], list[float]]] = {}
        for side, events in enumerate((reference, estimated)):
            for event in events:
                onsets.setdefault(str(event["label"]), ([], []))[side].append(
                    event["start"] / 1000.0
                )
        for reference_onsets, estimated_onsets in onsets.values():
            n_tp += _onset_matches(sorted(reference_onsets), sorted(estimated_onsets), collar)
    precision = metric.precision(Ntp=float(n_tp), Nsys=float(n_sys))
    recall = metric.recall(Ntp=float(n_tp), Nref=float(n_ref))
    return float(metric.f_measure(precision=precision, recall=recall))


def _onset_matches(reference: list[float], estimated: list[float], collar: float) -> int:
    """Size of a maximum matching of sorted onsets within ``collar`` (sed_eval's test)."""
    matches = next_estimate = 0
    for onset in reference:
        while next_estimate < len(estimated) and onset - estimated[next_estimate] > collar:
            next_estimate += 1  # too early for this and every later reference
        if next_estimate < len(estimated) and math.fabs(onset - estimated[next_estimate]) <= collar:
            matches += 1
            next_estimate += 1
    return matches


class _Scorer:
    """Scores one split's probabilities with the task's metric (events: per post-processing)."""

    def __init__(self, folder: Path, metadata: dict, label_index: dict[str, int]) -> None:
        self.folder, self.metric, self.label_index = folder, metadata["evaluation"][0], label_index
        self.events = metadata["embedding_type"] == "event"
        if self.events:
            from heareval.predictions.task_predictions import EVENT_POSTPROCESSING_GRID

            params = metadata.get("evaluation_params", {})
            self.grid = params.get("event_postprocessing_grid", EVENT_POSTPROCESSING_GRID)

    def __call__(self, probabilities: np.ndarray, data: SplitData, splits: list[str], fixed=None):
        """{post-processing (events) or None: score}."""
        if not self.events:
            return {None: _score(self.metric, self.label_index, probabilities, data.targets)}
        import torch
        from heareval.predictions.task_predictions import get_events_for_all_files

        reference = {}
        for split in splits:
            reference.update(json.loads((self.folder / f"{split}.json").read_text()))
        with contextlib.redirect_stderr(io.StringIO()):  # heareval's progress bars
            by_postprocessing = get_events_for_all_files(
                torch.from_numpy(probabilities),
                list(data.filenames),
                torch.from_numpy(data.timestamps),
                {index: label for label, index in self.label_index.items()},
                self.grid,
                fixed,
            )
        return {
            key: _score(self.metric, self.label_index, events, reference)
            for key, events in by_postprocessing.items()
        }


def linear_probe(folder: str | Path) -> dict:
    """Probe one heareval embeddings folder; returns score, per-fold scores and choices."""
    folder = Path(folder)
    metadata = json.loads((folder / "task_metadata.json").read_text())
    multilabel = metadata["prediction_type"] == "multilabel"
    label_index = _label_index(folder)
    scorer = _Scorer(folder, metadata, label_index)
    cache: dict[str, SplitData] = {}

    def split(names: list[str]) -> SplitData:
        for name in names:
            if name not in cache:
                cache[name] = load_split(folder, name, label_index)
        return _concat([cache[name] for name in names])

    folds = {}
    for assignment in data_splits(metadata):
        train, valid, test = (split(assignment[key]) for key in ("train", "valid", "test"))
        best = None  # valid score, C, post-processing, model
        for c, model in fit_path(train, multilabel):
            valid_scores = scorer(model.probabilities(valid.features), valid, assignment["valid"])
            for postprocessing, score in valid_scores.items():
                if best is None:  # nothing scores: the smallest C, default post-processing
                    best = (-math.inf, c, None, model)
                if math.isfinite(score) and score > best[0]:
                    best = (score, c, postprocessing, model)
        _, c, postprocessing, model = best
        scores = scorer(
            model.probabilities(test.features), test, assignment["test"], postprocessing
        )
        fold = {"score": next(iter(scores.values())), "C": c}
        if postprocessing is not None:
            fold["postprocessing"] = dict(postprocessing)
        folds["|".join(assignment["test"])] = fold
    values = [fold["score"] for fold in folds.values()]
    return {"metric": scorer.metric, "score": float(np.mean(values)), "folds": folds}
