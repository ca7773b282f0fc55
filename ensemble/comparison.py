"""Paired comparisons of label sets: a bootstrap that resamples images within each fold (a
stratified bootstrap with the folds as strata), computed from per-image counts so that a
resample costs one matrix product.

Resampling the k fold-level deltas instead would give at most a handful of distinct values for
k = 3..5 folds, far too coarse for a 95% interval. Both systems are scored on the same resampled
images (paired). It measures the uncertainty from which images were scored, not from refitting
on other data.
"""
from __future__ import annotations

import numpy as np

from fashion_stack.core.metrics import sample_f1s
from fashion_stack.core.rundir import RunDir

CHUNK = 100  # bootstrap resamples drawn at once; bounds memory at CHUNK x images weights


def image_stats(y_true, labels) -> np.ndarray:
    """(images, 4) float64: true positives, true labels, predicted labels and F1 of each image."""
    t, p = np.asarray(y_true, dtype=bool), np.asarray(labels, dtype=bool)
    return np.column_stack([(t & p).sum(axis=1), t.sum(axis=1), p.sum(axis=1), sample_f1s(t, p)]).astype(np.float64)


def stats_from_counts(true_positives, n_true, n_predicted) -> np.ndarray:
    """image_stats from per-image counts (the decide stage keeps counts, not label matrices)."""
    tp, n_true, n_pred = (np.asarray(a, dtype=np.float64) for a in (true_positives, n_true, n_predicted))
    denom = n_true + n_pred
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return np.column_stack([tp, n_true, n_pred, f1])


def score_stats(stats: np.ndarray, metric: str) -> float:
    """micro- or samples-F1 of the images whose image_stats are `stats`."""
    return float(_weighted_score(np.ones((1, len(stats))), stats, metric)[0])


def paired_bootstrap_interval(y_true, labels, reference_labels, folds, metric: str = "micro",
                              n_bootstrap: int = 1000, seed: int = 0, level: float = 0.95) -> tuple:
    """Percentile interval of metric(labels) - metric(reference_labels) over resamples of images
    drawn with replacement within each fold (fold sizes kept). (nan, nan) when n_bootstrap is 0."""
    return paired_bootstrap_stats(image_stats(y_true, labels), image_stats(y_true, reference_labels), folds,
                                  metric, n_bootstrap, seed, level)


def paired_bootstrap_stats(stats_a, stats_b, folds, metric: str = "micro", n_bootstrap: int = 1000,
                           seed: int = 0, level: float = 0.95) -> tuple:
    """paired_bootstrap_interval from image_stats of the two systems."""
    if n_bootstrap <= 0:
        return float("nan"), float("nan")
    folds = np.asarray(folds)
    rng = np.random.default_rng(seed)
    members_of_fold = [np.flatnonzero(folds == f) for f in np.unique(folds)]
    deltas = []
    for start in range(0, n_bootstrap, CHUNK):
        weights = _resample_weights(members_of_fold, len(folds), min(CHUNK, n_bootstrap - start), rng)
        deltas.append(_weighted_score(weights, stats_a, metric) - _weighted_score(weights, stats_b, metric))
    deltas = np.concatenate(deltas)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(deltas, tail)), float(np.percentile(deltas, 100 - tail))


def _resample_weights(members_of_fold, n_images: int, n_draws: int, rng) -> np.ndarray:
    weights = np.zeros((n_draws, n_images))
    for rows in members_of_fold:
        weights[:, rows] = rng.multinomial(rows.size, np.full(rows.size, 1.0 / rows.size), size=n_draws)
    return weights


def _weighted_score(weights, stats, metric: str) -> np.ndarray:
    # micro-F1 of a resample is 2 sum(tp) / (sum(true) + sum(pred)) with each image's counts
    # weighted by how often it was drawn
    totals = weights @ stats
    if metric == "micro":
        denom = totals[:, 1] + totals[:, 2]
        return np.divide(2 * totals[:, 0], denom, out=np.zeros_like(denom), where=denom > 0)
    return totals[:, 3] / weights.sum(axis=1)


def fold_paired(diffs: list) -> tuple:
    """Mean of per-fold score differences and its 95% t interval (k - 1 degrees of freedom): coarse at
    k = 3, but it needs only each fold's score, so it compares whole training runs (members, heads)."""
    from scipy import stats
    diffs = np.asarray(diffs, float)
    mean = float(diffs.mean())
    if len(diffs) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.975, len(diffs) - 1) * diffs.std(ddof=1) / np.sqrt(len(diffs)))
    return mean, mean - half, mean + half


# ---- the best member: one definition, shared by decide, the last screen, compare, ablate, report --

BEST_MEMBER_RULE = ("the member with the highest pooled out-of-fold {metric}-F1 at its best global threshold "
                    "(members/<m>/scores.json; the threshold is tuned on the scored rows, so optimistic)")


def member_scores(run: RunDir, metric: str = "micro", among=None) -> dict:
    """{member: pooled OOF `metric`-F1 at its best threshold}, from members/*/scores.json (only the
    members in `among`, the run's config, when given: a renamed member's old folder stays on disk)."""
    from fashion_stack.core import atomic
    scores = {}
    for path in sorted((run.root / "members").glob("*/scores.json")):
        record = atomic.read_json(path)
        value = (record.get("oof") or {}).get(f"{metric}_f1@best")
        if value is not None and (among is None or path.parent.name in among):
            scores[path.parent.name] = float(value)  # the folder is the name (a copied folder keeps an old "member")
    return scores


def best_member(run: RunDir, metric: str = "micro", among=None):
    """(name, score) of the best member by BEST_MEMBER_RULE (among `among` if given), or None.
    Ties go to the name first in sorted order, so every reader names the same member."""
    scores = member_scores(run, metric, among)
    if not scores:
        return None
    name = min(scores, key=lambda m: (-scores[m], m))
    return name, scores[name]
