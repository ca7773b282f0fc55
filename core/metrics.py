"""Multi-label metrics on (n_images, n_labels) 0/1 matrices, vectorised.

Each equals scikit-learn's on the same inputs (tests/test_metrics.py checks that); they exist
here because the decision stage evaluates them thousands of times and scikit-learn's input
validation dominates at that rate.
"""
from __future__ import annotations

from typing import Literal, get_args

import numpy as np

# The metrics a decision is optimised and reported for, and the score names every stage records
# (scores.json, scores.csv, the report): one vocabulary, spelled here
MetricName = Literal["micro", "samples"]
# A Kaggle submission holds at most 23 labels per image (the competition's rule and
# submissions.validate's): the default upper bound of every decision rule and label set
MAX_LABELS = 23
METRICS = get_args(MetricName)


def f1_column(metric: str) -> str:
    """The score's name for a metric: "micro" -> "micro_f1"."""
    return f"{metric}_f1"


METRIC_COLUMNS = {metric: f1_column(metric) for metric in METRICS}
BEST_MICRO_F1 = "micro_f1@best"  # micro-F1 at the one threshold that is best on the scored rows
LOG_LOSS_EPS = 1e-7  # probabilities are clipped to [eps, 1 - eps] before a log-loss
PROBABILITY_FLOOR = 1e-6  # and to [floor, 1 - floor] before taking logits


def logit(probs) -> np.ndarray:
    """Log-odds of probabilities clipped to [PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR] (float64)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)
    return np.log(p / (1 - p))


def cell_log_losses(y_true, probs) -> np.ndarray:
    """Binary log-loss of every cell (float64), probabilities clipped to [LOG_LOSS_EPS, 1 - LOG_LOSS_EPS]."""
    p = np.clip(np.asarray(probs, dtype=np.float64), LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
    t = np.asarray(y_true, dtype=np.float64)
    return -(t * np.log(p) + (1 - t) * np.log(1 - p))


def _as_bool(matrix) -> np.ndarray:
    matrix = np.asarray(matrix)
    if matrix.ndim != 2:
        raise ValueError(f"expected a 2-D (images, labels) matrix, got shape {matrix.shape}")
    return matrix.astype(bool, copy=False)


def micro_f1(y_true, y_pred, zero_division: float = 0.0) -> float:
    """2 TP / (2 TP + FP + FN) over all cells; `zero_division` when no cell is true or predicted."""
    t, p = _as_bool(y_true), _as_bool(y_pred)
    return f1_from_counts(np.count_nonzero(t & p), np.count_nonzero(p), np.count_nonzero(t), "micro",
                          zero_division)


def sample_f1s(y_true, y_pred, zero_division: float = 0.0) -> np.ndarray:
    """Per-image F1; an image with no true and no predicted label scores `zero_division`."""
    t, p = _as_bool(y_true), _as_bool(y_pred)
    return _f1s(np.count_nonzero(t & p, axis=1), p.sum(axis=1), t.sum(axis=1), zero_division)


def _f1s(tp, n_pred, n_true, zero_division: float) -> np.ndarray:
    tp = np.asarray(tp, dtype=np.float64)
    denom = np.asarray(n_pred, dtype=np.float64) + n_true
    out = np.full(tp.shape, float(zero_division))
    np.divide(2 * tp, denom, out=out, where=denom > 0)
    return out


def f1_from_counts(tp, n_pred, n_true, metric: str = "micro", zero_division: float = 0.0) -> float:
    """F1 from per-image counts (true positives, predicted labels, true labels).

    The decision rules score thousands of candidate label sets that differ only in how many of
    each image's top labels they keep; counting is then O(images) instead of O(images x labels).
    """
    if metric == "micro":
        tp, denom = np.sum(tp), np.sum(n_pred) + np.sum(n_true)
        return float(2 * tp / denom) if denom else float(zero_division)
    if metric == "samples":
        scores = _f1s(tp, n_pred, n_true, zero_division)
        return float(scores.mean()) if scores.size else 0.0
    raise ValueError(f"unknown metric {metric!r}; use 'micro' or 'samples'")


def samples_f1(y_true, y_pred, zero_division: float = 0.0) -> float:
    """Mean per-image F1 (scikit-learn's average='samples')."""
    scores = sample_f1s(y_true, y_pred, zero_division)
    return float(scores.mean()) if scores.size else 0.0


def per_label_f1(y_true, y_pred, zero_division: float = 0.0) -> np.ndarray:
    t, p = _as_bool(y_true), _as_bool(y_pred)
    return _f1s(np.count_nonzero(t & p, axis=0), p.sum(axis=0), t.sum(axis=0), zero_division)


def f1(y_true, y_pred, metric: str = "micro") -> float:
    if metric == "micro":
        return micro_f1(y_true, y_pred)
    if metric == "samples":
        return samples_f1(y_true, y_pred)
    raise ValueError(f"unknown metric {metric!r}; use 'micro' or 'samples'")


def average_precision_per_label(y_true, scores) -> np.ndarray:
    """Per-label average precision as scikit-learn computes it (step-wise, ties grouped);
    NaN for labels with no positive."""
    t = _as_bool(y_true)
    s = np.asarray(scores, dtype=np.float64)
    out = np.full(t.shape[1], np.nan)
    for j in range(t.shape[1]):
        positives = t[:, j].sum()
        if positives == 0:
            continue
        order = np.argsort(-s[:, j], kind="mergesort")
        sorted_scores, sorted_true = s[order, j], t[order, j]
        # the last index of each run of tied scores is a threshold
        distinct = np.r_[np.nonzero(np.diff(sorted_scores))[0], sorted_true.size - 1]
        tps = np.cumsum(sorted_true)[distinct]
        precision = tps / (distinct + 1)
        recall = tps / positives
        out[j] = np.sum(np.diff(np.r_[0.0, recall]) * precision)
    return out


def mean_average_precision(y_true, scores) -> float:
    """Macro mAP over labels that have at least one positive (scikit-learn's average='macro'
    after dropping labels without positives, which it would warn about)."""
    ap = average_precision_per_label(y_true, scores)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")


def cardinality_error(y_true, y_pred) -> float:
    """Mean absolute difference between predicted and true label counts per image."""
    t, p = _as_bool(y_true), _as_bool(y_pred)
    return float(np.abs(t.sum(axis=1) - p.sum(axis=1)).mean())


THRESHOLD_GRID = np.linspace(0.02, 0.98, 49)  # thresholds tried for the "@best" scores


def best_global_threshold(y_true, probs, metric: str = "micro", grid=None) -> tuple:
    """(threshold, score) of the single threshold that maximises the metric over a grid."""
    grid = THRESHOLD_GRID if grid is None else np.asarray(grid)
    probs = np.asarray(probs)
    scores = [f1(y_true, probs >= th, metric) for th in grid]
    best = int(np.argmax(scores))
    return float(grid[best]), float(scores[best])


def score_probabilities(y_true, probs) -> dict:
    """The fold-score bundle every member and stacker reports."""
    probs = np.asarray(probs, dtype=np.float64)
    t = np.asarray(y_true, dtype=np.float64)
    loss = float(np.mean(cell_log_losses(t, probs)))
    threshold, best = best_global_threshold(y_true, probs)
    return {
        "loss": loss,
        "micro_f1@0.5": micro_f1(y_true, probs >= 0.5),
        BEST_MICRO_F1: best,
        "best_threshold": threshold,
        "samples_f1@best": samples_f1(y_true, probs >= threshold),
        "mAP": mean_average_precision(y_true, probs),
        "n_images": int(t.shape[0]),
    }


def frequency_floor(y_true, fold_of, metric: str = "micro", max_k: int = MAX_LABELS) -> dict:
    """The score to beat: every image gets the k labels most frequent in the other folds, with k
    chosen on those folds too (so the floor is out-of-fold, like the members it is compared with).

    Returns {"k": per-fold k, "folds": per-fold score, "oof": score of the pooled predictions}."""
    y = _as_bool(y_true)
    fold_of = np.asarray(fold_of)
    predicted = np.zeros_like(y)
    ks, fold_scores = [], []
    for fold in np.unique(fold_of):
        train, held = fold_of != fold, fold_of == fold
        ranking = np.argsort(-y[train].sum(axis=0), kind="stable")
        best_k = max(range(1, max_k + 1), key=lambda k: f1(y[train], _top_mask(ranking[:k], train.sum(), y.shape[1]), metric))
        predicted[held] = _top_mask(ranking[:best_k], held.sum(), y.shape[1])
        ks.append(int(best_k))
        fold_scores.append(f1(y[held], predicted[held], metric))
    return {"k": ks, "folds": fold_scores, "oof": f1(y, predicted, metric)}


def _top_mask(columns, n_rows: int, n_labels: int) -> np.ndarray:
    row = np.zeros(n_labels, dtype=bool)
    row[columns] = True
    return np.broadcast_to(row, (n_rows, n_labels))
