"""The per-label family's base: one small model per label on features.stacker_inputs.label_features
(the label's member probabilities, their summaries, a few context labels), fitted n_jobs labels at a
time; labels too rare to learn fall back to a simpler model. Linear and XGBoost build on it."""
from __future__ import annotations

from typing import ClassVar

import numpy as np
from joblib import Parallel, delayed
from threadpoolctl import threadpool_limits

from fashion_stack.core.log import progress
from fashion_stack.core.metrics import logit
from fashion_stack.ensemble.stackers.base import Stacker, log
from fashion_stack.features.stacker_inputs import PROBABILITY_FEATURES, label_features, select_context_labels


class PerLabelStacker(Stacker):
    """One model per label on label_features; labels too rare to learn fall back to a simpler
    model. label_models_[j] is (kind, model) with kind in {primary kind, "linear", "mean"}."""

    primary: ClassVar[str] = ""

    def _fit(self, stack, y):
        self.context_labels_ = select_context_labels(stack, y, self.n_context)
        # every label's design matrix has the same column kinds, so one mask serves all
        names = label_features(stack.take([0]), 0, self.context_labels_[0])[1]
        self.probability_columns_ = np.array([name.startswith(PROBABILITY_FEATURES) for name in names])
        self.mean_column_ = names.index("mean")
        self._prepare(stack, y)
        self.label_models_ = self._map_labels(self._fit_one, stack, y, f"{self.name} labels")
        self.fallback_labels_ = [lid for lid, (kind, _) in zip(self.label_ids_, self.label_models_)
                                 if kind != self.primary]
        if self.fallback_labels_:
            rare = sum(too_rare(y[:, j], self.min_positives) for j in range(stack.n_labels))
            no_gain = len(self.fallback_labels_) - rare
            log.info("%s stacker: %d label(s) keep a simpler model: %d with fewer than %d positives "
                     "or negatives%s: %s", self.name, len(self.fallback_labels_), rare, self.min_positives,
                     f", {no_gain} where no tree beat the members' mean" if no_gain else "",
                     self.fallback_labels_[:20])

    def _prepare(self, stack, y) -> None:
        """Choices shared by all labels, made before any label's fit (none by default)."""

    def _map_labels(self, fit_label, stack, y, desc: str) -> list:
        """[fit_label(stack, y[:, j], j) for every label j], n_jobs labels at a time."""
        # One thread per label's fit: BLAS and OpenMP pools inside each would contend for the cores
        # the labels already share, and their spinning threads stall when other processes load them.
        with threadpool_limits(limits=1):
            fitted = Parallel(n_jobs=self._label_jobs(), backend="threading", return_as="generator")(
                delayed(fit_label)(stack, y[:, j], j) for j in range(stack.n_labels))
            return list(progress(fitted, total=stack.n_labels, desc=desc, leave=False))

    def _fit_one(self, stack, y_label, j):
        X = self._features(stack, j)
        return self._fit_label(X, y_label)

    def _features(self, stack, j):
        return label_features(stack, j, self.context_labels_[j])[0]

    def _label_jobs(self) -> int:
        # Each label's model is too small to split across threads, so labels run n_jobs at a time
        # in threads; every label's fit is the same whatever n_jobs. Boosters gain (XGBoost releases
        # the GIL); a logistic regression on ~20 columns spends most of its time in Python holding
        # it, so the linear stacker gains little.
        return max(1, int(self.n_jobs))

    def _predict(self, stack):
        out = np.empty((len(stack), stack.n_labels), dtype=np.float32)
        for j, (kind, model) in enumerate(self.label_models_):
            if kind == "mean":
                out[:, j] = stack.mean[:, j]
            else:
                out[:, j] = self._predict_label(kind, model, self._features(stack, j))
        return out

    def _predict_label(self, kind: str, model, X: np.ndarray) -> np.ndarray:
        return model.predict_proba(X)[:, 1]

    def _prior_logit(self, X: np.ndarray) -> np.ndarray:
        """Log-odds of the members' mean probability, per row of a label's design matrix."""
        return logit_columns(X[:, [self.mean_column_]], np.array([True]))[:, 0]


def too_rare(y_label: np.ndarray, min_positives: int) -> bool:
    positives = int(y_label.sum())
    return min(positives, y_label.size - positives) < min_positives


def logit_columns(X: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """X (float64 copy) with the probability `columns` as log-odds: the linear model is additive in
    log-odds, so it sees probability columns as logits."""
    out = np.asarray(X, dtype=np.float64).copy()
    out[:, columns] = logit(out[:, columns])
    return out


def stratified_split(y_label: np.ndarray, fraction: float, seed: int) -> tuple:
    """(fit rows, early-stopping rows): `fraction` of each class held out, at least one of each."""
    rng = np.random.default_rng(seed)
    held = []
    for cls in (0, 1):
        rows = rng.permutation(np.flatnonzero(y_label == cls))
        held.append(rows[: max(1, int(round(fraction * rows.size)))])
    stop = np.sort(np.concatenate(held))
    fit = np.setdiff1d(np.arange(y_label.size), stop, assume_unique=True)
    return fit, stop
