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


def _fit_labels(z: np.ndarray, labels: np.ndarray, c: float) -> tuple:
    """(coef (dim, labels), intercept (labels,)) of per-label logistic regressions on standardised z."""
    from sklearn.linear_model import LogisticRegression
    n, n_labels = labels.shape
    coef, intercept = np.zeros((z.shape[1], n_labels)), np.zeros(n_labels)
    for j in range(n_labels):
        positives = int(labels[:, j].sum())
        if positives in (0, n):  # one class: its clipped frequency
            p = float(np.clip(positives / n, PRIOR_CLIP, 1 - PRIOR_CLIP))
            intercept[j] = np.log(p / (1 - p))
            continue
        model = LogisticRegression(C=c, max_iter=500, tol=1e-4)
        model.fit(z, labels[:, j])
        coef[:, j], intercept[j] = model.coef_[0], model.intercept_[0]
    return coef, intercept


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
    inner = {}
    for c in sorted(set(float(c) for c in c_grid)):
        losses, weights = [], []
        for held in parts:
            fit_rows = np.setdiff1d(order, held)
            mean, scale = _standardise(features[fit_rows])
            coef, intercept = _fit_labels((features[fit_rows] - mean) / scale, labels[fit_rows], c)
            probs = LinearProbe(mean, scale, coef, intercept, c, {}).predict(features[held])
            losses.append(_log_loss(labels[held], probs))
            weights.append(len(held))
        inner[c] = float(np.average(losses, weights=weights))
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
