"""A linear probe: logistic regression on standardised embeddings, its C picked by the caller.

One objective and optimiser (:func:`fit_path`) for every size, on the
features or on the span of the training rows (:func:`solver_for`). Its
callers: the HEAR probe reports (``hear_ced.eval.probe``) and the frozen
fine-tuning mode (``hear_ced.distill.finetune``).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
MAX_ITER = 500
# Largest gradient entry at convergence; scikit-learn's lbfgs default is 1e-4, which
# lets warm-started fits stop farther from the optimum than cold-started ones.
TOLERANCE = 1e-5


@dataclass(frozen=True)
class SplitData:
    features: np.ndarray  # (n, dim) float32: one row per clip, or per timestamp for events
    targets: np.ndarray  # (n, n_labels) multi-hot / one-hot
    filenames: tuple[str, ...] = ()  # event tasks: clip of each row
    timestamps: np.ndarray | None = None  # event tasks: time of each row, ms


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
