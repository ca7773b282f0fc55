"""The probe member: frozen embeddings of one or more pretrained trunks, concatenated and
standardised, and one L2-regularised logistic regression per label (scikit-learn).

It is what a user writes first as a baseline (a linear probe), made a member like any other: it
trains k-fold on the members stage's units, so its out-of-fold and test tables feed the stack. The
regularisation strength C is chosen per unit among a few values by an inner k-fold CV on that
unit's training rows only (lowest mean log loss over every label cell), never on the held-out fold.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.linalg

from fashion_stack.core import atomic

MODEL_FILE = "probe.npz"
PRIOR_CLIP = 1e-4  # a label with one class in the training rows predicts its clipped frequency


@dataclass
class LinearProbe:
    mean: np.ndarray  # (dim,) the training rows' feature means
    scale: np.ndarray  # (dim,) their standard deviations (floored)
    coef: np.ndarray  # (dim, labels), zero for a label fitted as a constant
    intercept: np.ndarray  # (labels,) log-odds
    c: float  # the chosen C
    inner_log_loss: dict  # C -> mean inner log loss (how C was chosen)

    def predict(self, features: np.ndarray) -> np.ndarray:
        z = (np.asarray(features, np.float64) - self.mean) / self.scale
        return (1.0 / (1.0 + np.exp(-(z @ self.coef + self.intercept)))).astype(np.float32)

    def save(self, path: Path) -> None:
        with atomic.atomic_path(path, suffix=".npz") as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, mean=self.mean, scale=self.scale, coef=self.coef, intercept=self.intercept,
                         c=np.array(self.c), inner_c=np.array(list(self.inner_log_loss), float),
                         inner_log_loss=np.array(list(self.inner_log_loss.values()), float))

    @classmethod
    def load(cls, path: Path) -> "LinearProbe":
        with np.load(path) as saved:
            return cls(saved["mean"], saved["scale"], saved["coef"], saved["intercept"], float(saved["c"]),
                       dict(zip(saved["inner_c"].tolist(), saved["inner_log_loss"].tolist())))


def orthogonal_basis(z: np.ndarray) -> tuple:
    """(z V, V): z in an orthonormal basis V of its row space, whose columns z V are orthogonal.
    With an L2 penalty the weights lie in that space (any other component only adds penalty), so a
    logistic regression on z V with weights b is the one on z with weights V b, exactly: at most
    min(rows, dim) columns (1,132 photos x 2,304 features: half the work per step), and orthogonal
    columns whose norms give the solver a diagonal preconditioner (see _fit_labels)."""
    # from the eigenvectors of the smaller Gram matrix: one matrix product and a small eigh,
    # several times faster than an SVD of the wide matrix
    z64 = np.asarray(z, np.float64)
    rows, dim = z64.shape
    eigenvalues, eigenvectors = scipy.linalg.eigh(z64 @ z64.T if rows < dim else z64.T @ z64, driver="evd")
    keep = eigenvalues > max(eigenvalues.max(), 0) * 1e-10
    if rows < dim:
        singular = np.sqrt(eigenvalues[keep])
        u = eigenvectors[:, keep]
        return (u * singular).astype(np.float32), (z64.T @ u / singular).astype(np.float32)
    v = eigenvectors[:, keep]
    return (z64 @ v).astype(np.float32), v.astype(np.float32)


def _fit_labels(z: np.ndarray, labels: np.ndarray, c: float, max_iter: int = 500, start=None, basis=None) -> tuple:
    """(coef (dim, labels), intercept (labels,)) of per-label L2 logistic regressions on standardised
    z: scikit-learn's LogisticRegression(C=c) objective for each label, (1/n) sum log loss +
    |w|^2 / (2 c n), intercept unpenalised. The labels' problems are independent, so their sum is
    minimised at once by one L-BFGS over every label's weights: one matrix product per step
    instead of a solver per label (58 scikit-learn fits took minutes per unit on 2 loaded cores).
    A label with one class in these rows is its clipped frequency. `start`: a (coef, intercept) to
    start from (the solution at a neighbouring C: a warm start). `basis`: orthogonal_basis(z),
    computed here when not given (fits at several C share one).

    Why the basis: in it the Hessian of the penalised loss is close to diagonal, (z V)^T D (z V)/n
    + I/(c n) with orthogonal columns, so each weight is rescaled by the inverse square root of
    its curvature at p = 1/2 (an exact change of variables, the same minimum): the condition
    number drops from thousands (correlated CNN features) to a few, and L-BFGS needs tens of steps
    instead of hundreds. Products in float32 (the embeddings' own precision), the solver's state
    in float64."""
    from scipy.optimize import minimize
    n, n_labels = labels.shape
    full_dim = z.shape[1]
    z, v = basis if basis is not None else orthogonal_basis(z)
    dim = z.shape[1]
    penalty = 1.0 / (c * n)
    column_norms = (np.asarray(z, np.float64) ** 2).sum(axis=0)
    coef, intercept = np.zeros((dim, n_labels)), np.zeros(n_labels)
    positives = labels.sum(axis=0)
    active = np.flatnonzero((positives > 0) & (positives < n))
    for j in np.setdiff1d(np.arange(n_labels), active):
        p = float(np.clip(positives[j] / n, PRIOR_CLIP, 1 - PRIOR_CLIP))
        intercept[j] = np.log(p / (1 - p))
    if not len(active):
        return np.zeros((full_dim, n_labels)), intercept
    y = labels[:, active]
    k = len(active)
    rate = y.mean(axis=0)
    spread = rate * (1 - rate)  # each label's curvature per unit of margin near its base rate
    # w = scale * b and intercept = bias_scale * a: every variable's curvature close to one
    scale = 1.0 / np.sqrt(np.outer(column_norms / n, spread) + penalty)
    bias_scale = 1.0 / np.sqrt(spread)
    penalty_weights = scale * scale * penalty
    z32 = np.asarray(z, np.float32)

    def objective(theta):
        w = theta[:dim * k].reshape(dim, k) * scale
        bias = theta[dim * k:] * bias_scale
        margin = (z32 @ w.astype(np.float32)).astype(np.float64) + bias
        # log(1 + exp(m)) - y m, stably
        loss = np.logaddexp(0.0, margin) - y * margin
        residual = (1.0 / (1.0 + np.exp(-margin)) - y) / n
        value = loss.sum() / n + (w * w).sum() * penalty / 2
        gradient = ((z32.T @ residual.astype(np.float32)).astype(np.float64) + w * penalty) * scale
        return value, np.concatenate([gradient.ravel(), residual.sum(axis=0) * bias_scale])

    theta = np.zeros(dim * k + k)
    if start is not None:
        start_coef = v.T.astype(np.float64) @ start[0]
        theta[:dim * k] = (start_coef[:, active] / scale).ravel()
        theta[dim * k:] = start[1][active] / bias_scale
    else:
        theta[dim * k:] = np.log(rate / (1 - rate)) / bias_scale  # from each label's log-odds: fewer steps
    # gtol: scikit-learn's default tol (1e-4) is its lbfgs gradient tolerance; 1e-5 is stricter
    result = minimize(objective, theta, jac=True, method="L-BFGS-B",
                      options={"maxiter": max_iter, "gtol": 1e-5, "ftol": 1e-9})
    coef[:, active] = result.x[:dim * k].reshape(dim, k) * scale
    intercept[active] = result.x[dim * k:] * bias_scale
    return v.astype(np.float64) @ coef, intercept


def _standardise(features: np.ndarray) -> tuple:
    features = np.asarray(features, np.float64)
    mean = features.mean(axis=0)
    scale = np.maximum(features.std(axis=0), 1e-6)
    return mean, scale


def _log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    p = np.clip(probs, 1e-7, 1 - 1e-7)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def fit_probe(features: np.ndarray, labels: np.ndarray, c_grid: Sequence[float], inner_folds: int = 3,
              seed: int = 0) -> LinearProbe:
    """Standardise on these rows, choose C among c_grid by inner k-fold CV on these rows (each
    inner fold standardised on its own training part), refit on all of them."""
    labels = np.asarray(labels, np.float64)
    features = np.asarray(features, np.float64)
    n = len(features)
    if n < inner_folds:
        raise ValueError(f"the probe's inner CV needs at least probe_inner_folds={inner_folds} training rows, got {n}")
    order = np.random.default_rng([seed, 4021]).permutation(n)
    parts = np.array_split(order, inner_folds)
    grid = sorted(set(float(c) for c in c_grid))
    losses = {c: [] for c in grid}
    for held in parts:
        fit_rows = np.setdiff1d(order, held)
        mean, scale = _standardise(features[fit_rows])
        z = (features[fit_rows] - mean) / scale
        basis = orthogonal_basis(z)
        solution = None
        for c in grid:  # strongest regularisation first, each C warm-started from the previous one
            solution = _fit_labels(z, labels[fit_rows], c, start=solution, basis=basis)
            losses[c].append(_log_loss(labels[held], LinearProbe(mean, scale, *solution, c, {}).predict(features[held])))
    weights = [len(held) for held in parts]
    inner = {c: float(np.average(losses[c], weights=weights)) for c in grid}
    best = min(inner, key=lambda c: (inner[c], c))
    mean, scale = _standardise(features)
    coef, intercept = _fit_labels((features - mean) / scale, labels, best)
    return LinearProbe(mean, scale, coef, intercept, best, inner)


def probe_features(tables: Sequence, keys: Sequence[str]) -> np.ndarray:
    """The probe's input for these keys: each embedding table's rows (the mean with the mirrored
    images' rows where the table has them: flip averaging), concatenated in the given order."""
    blocks = []
    for table in tables:
        rows = np.asarray(table.rows(keys), np.float32)
        if rows.ndim != 2:
            raise ValueError("the probe reads pooled embedding vectors; a member with pooling 'csra' caches "
                             "feature maps: name a member with pooling avg, max or bands in probe_of")
        if table.mirrored is not None:
            rows = (rows + np.asarray(table.rows(keys, mirrored=True), np.float32)) / 2
        blocks.append(rows)
    return np.concatenate(blocks, axis=1)
