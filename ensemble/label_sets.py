"""Label-set building blocks for the decision rules: input checks, each image's ranking, the
min/max clamp, threshold counting, the expected-F1 decoder and the per-label threshold search.

All of them are vectorised over images: the decision stage runs them on every fold of every
source, and a 40,000 x 228 test matrix must be decided in well under a second.
"""
from __future__ import annotations

import numpy as np

from fashion_stack.core.log import progress
from fashion_stack.core.metrics import METRICS

# The expected-F1 decoder ignores counts of true labels outside the top K that have at most this
# much probability in all: an expected F1 moves by less than twice that, below float64 rounding.
TAIL_MASS = 1e-16


# ---------------------------------------------------------------- validation

def check_probabilities(probs, what: str = "probs") -> np.ndarray:
    """A 2-D float matrix of probabilities in [0, 1]; float32 stays float32 (memory at 1M rows)."""
    probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape[1] == 0:
        raise ValueError(f"{what}: expected an (images, labels) matrix, got shape {probs.shape}")
    if not np.issubdtype(probs.dtype, np.floating):
        probs = probs.astype(np.float64)
    bad = ~np.isfinite(probs) | (probs < 0) | (probs > 1)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise ValueError(f"{what}: row(s) {rows[:10].tolist()} hold values outside [0, 1] or non-finite; "
                         "decision rules need calibrated probabilities (sigmoid outputs), not logits")
    return probs


def check_truth(y_true, shape: tuple) -> np.ndarray:
    y_true = np.asarray(y_true)
    if y_true.shape != shape:
        raise ValueError(f"y_true: shape {y_true.shape} differs from the probabilities' {shape}")
    if y_true.dtype != bool:
        bad = (y_true != 0) & (y_true != 1)
        if bad.any():
            rows = np.flatnonzero(bad.any(axis=1))
            raise ValueError(f"y_true: row(s) {rows[:10].tolist()} are not 0/1 multi-hot")
    return y_true.astype(bool)


# ---------------------------------------------------------------- label-set helpers

def _top_k_mask(key: np.ndarray, k: int) -> np.ndarray:
    """The k highest-key labels of each row (exactly k, ties broken arbitrarily)."""
    mask = np.zeros(key.shape, dtype=bool)
    if k >= key.shape[1]:
        mask[:] = True
    elif k > 0:
        top = np.argpartition(-key, k - 1, axis=1)[:, :k]
        np.put_along_axis(mask, top, True, axis=1)
    return mask


def enforce_cardinality(probs, chosen, min_labels: int, max_labels: int, keep=None, pool=None) -> np.ndarray:
    """Bring every row of `chosen` to min_labels..max_labels labels.

    Short rows are topped up with their most probable unchosen labels (from `pool`, a column
    mask, first); long rows keep their most probable chosen labels (`keep` cells first).
    Probabilities lie in [0, 1], so adding 2 or 4 to a key ranks whole classes of labels first.
    """
    probs = np.asarray(probs)
    chosen = np.array(chosen, dtype=bool)
    n_labels = probs.shape[1]
    lo, hi = min(min_labels, n_labels), min(max_labels, n_labels)
    counts = chosen.sum(axis=1)
    short = np.flatnonzero(counts < lo)
    if short.size:
        key = probs[short] + 4.0 * chosen[short]
        if pool is not None:
            key = key + 2.0 * np.asarray(pool, dtype=bool)
        chosen[short] = _top_k_mask(key, lo)
    long = np.flatnonzero(counts > hi)
    if long.size:
        key = probs[long] + (2.0 * np.asarray(keep)[long] if keep is not None else 0.0)
        chosen[long] = _top_k_mask(np.where(chosen[long], key, -1.0), hi)
    return chosen


class TopLabels:
    """Each image's `depth` most probable labels, most probable first."""

    def __init__(self, probs: np.ndarray, depth: int):
        n_images, n_labels = probs.shape
        self.n_labels = n_labels
        self.depth = min(depth, n_labels)
        if self.depth == 0:
            self.index = np.zeros((n_images, 0), dtype=np.intp)
        else:
            part = np.argpartition(-probs, self.depth - 1, axis=1)[:, :self.depth]
            order = np.argsort(-np.take_along_axis(probs, part, axis=1), axis=1, kind="stable")
            self.index = np.take_along_axis(part, order, axis=1)
        self.probs = np.take_along_axis(probs, self.index, axis=1)

    def hits(self, y_true: np.ndarray) -> np.ndarray:
        """(images, depth + 1): true labels among each image's k most probable, k = 0..depth."""
        ranked = np.take_along_axis(y_true, self.index, axis=1)
        out = np.zeros((ranked.shape[0], self.depth + 1), dtype=np.int32)
        np.cumsum(ranked, axis=1, out=out[:, 1:])
        return out

    def mask(self, sizes: np.ndarray) -> np.ndarray:
        """Boolean (images, labels): each image's sizes[i] most probable labels."""
        keep = np.arange(self.depth)[None, :] < np.asarray(sizes)[:, None]
        out = np.zeros((self.index.shape[0], self.n_labels), dtype=bool)
        np.put_along_axis(out, self.index, keep, axis=1)
        return out


def threshold_grid(n_thresholds: int) -> np.ndarray:
    return np.linspace(0.0, 1.0, n_thresholds + 2)[1:-1]


def counts_at_thresholds(probs: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """(images, thresholds): how many labels of each image reach each grid threshold (p >= t),
    from one histogram per image instead of one pass over the matrix per threshold."""
    n_images = probs.shape[0]
    width = len(grid) + 1
    reached = np.searchsorted(grid, probs, side="right")  # grid values <= p
    cells = (np.arange(n_images)[:, None] * width + reached).ravel()
    hist = np.bincount(cells, minlength=n_images * width).reshape(n_images, width)
    return np.cumsum(hist[:, ::-1], axis=1)[:, ::-1][:, 1:]


# ---------------------------------------------------------------- expected F1 (Ye et al. 2012)

def expected_f1_of_top_k(probs, max_k: int, chunk: int = 1024) -> np.ndarray:
    """(images, K): expected F1 of predicting each image's k most probable labels, k = 1..K
    (K = min(max_k, labels)), when labels are independent with these marginal probabilities.

    Ye et al.'s dynamic programme: with TP the true labels among the top k and R those among
    the rest, E[F1] = sum_a P(TP = a) 2a E[1 / (k + a + R)]. P(TP = a) builds forward over the
    top k. E[1 / (c + R)] starts from the count distribution of the labels outside the top K,
    then builds backward as the top labels join the rest, so only the top K need sorting.

    Exact to float64 rounding: that count distribution is computed only up to a width beyond
    which a Chernoff bound puts at most TAIL_MASS of probability (about 22 counts at ~8 labels
    per image, instead of all ~205), so the cost is labels x width, not labels squared.
    """
    probs = check_probabilities(probs)
    return expected_f1_of_ranking(probs, TopLabels(probs, max_k), chunk)


def expected_f1_of_ranking(probs: np.ndarray, top: "TopLabels", chunk: int = 1024) -> np.ndarray:
    """expected_f1_of_top_k for an already checked matrix and its ranking."""
    rest = _rest_probs(probs, top)
    widths = _rest_count_widths(rest)
    # images that need similar widths share a chunk, so that few pay for the widest
    order = np.argsort(widths, kind="stable")
    out = np.empty((probs.shape[0], top.depth))
    starts = range(0, probs.shape[0], chunk)
    for start in progress(starts, desc="expected F1", leave=False, disable=len(starts) < 8):
        rows = order[start:start + chunk]
        # labels x images: each step of the recursions below then works on contiguous rows
        out[rows] = _expected_f1_chunk(_labels_first(top.probs[rows]), _labels_first(rest[rows]),
                                       int(widths[rows].max())).T
    return out


def _labels_first(probs: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(probs.T, dtype=np.float64)


def _rest_probs(probs: np.ndarray, top: TopLabels) -> np.ndarray:
    outside = np.ones(probs.shape, dtype=bool)
    np.put_along_axis(outside, top.index, False, axis=1)
    return probs[outside].reshape(probs.shape[0], probs.shape[1] - top.depth)


def _rest_count_widths(rest: np.ndarray) -> np.ndarray:
    """Per image, the smallest w with P(R > w) <= TAIL_MASS by Chernoff's bound for a sum of
    independent Bernoullis with mean mu: P(R >= t) <= exp(t - mu + t log(mu / t)) for t > mu.
    The bound falls as t grows past mu; w never exceeds the number of labels (then exact)."""
    mu = rest.sum(axis=1, dtype=np.float64)
    widths = np.full(mu.shape, rest.shape[1])
    pending = np.arange(mu.size)
    for t in range(1, rest.shape[1] + 1):
        m = mu[pending]
        with np.errstate(divide="ignore"):  # mu = 0: R = 0 for sure, log bound -inf
            log_tail = t - m + t * np.log(m / t)
        settled = (t > m) & (log_tail <= np.log(TAIL_MASS))
        widths[pending[settled]] = t - 1
        pending = pending[~settled]
        if not pending.size:
            break
    return widths


def _expected_f1_chunk(top: np.ndarray, rest: np.ndarray, width: int) -> np.ndarray:
    """(K, images) from the top K's probabilities (K, images) and the rest's (labels, images)."""
    depth, n_images = top.shape
    # inverse[c - 1] = E[1 / (c + R)] for c = 1..2K, R the count among the rest
    reciprocal = 1.0 / (np.arange(1, 2 * depth + 1)[:, None] + np.arange(width + 1)[None, :])  # 1 / (c + r)
    inverse = reciprocal @ _rest_count_distribution(rest, width)
    prefix = _count_distributions(top)  # prefix[k, a] = P(a true among the top k)
    expected = np.empty((depth, n_images))
    buffer = np.empty(inverse.shape)
    for k in range(depth, 0, -1):
        twice_a = 2.0 * np.arange(1, k + 1)[:, None]
        expected[k - 1] = np.einsum("ai,ai->i", prefix[k, 1:k + 1] * twice_a, inverse[k:2 * k])
        _add_to_rest(inverse, top[k - 1], 2 * (k - 1), buffer)
    return expected


def _rest_count_distribution(rest: np.ndarray, width: int) -> np.ndarray:
    """(width + 1, images): P(R = r), r = 0..width. Counts above width are dropped: the
    recursion for a count reads only that count and the one below, so the kept ones are exact."""
    dist = np.zeros((width + 2, rest.shape[1]))  # row 0 holds P(R = -1) = 0
    dist[1] = 1.0
    buffer = np.empty((width + 1, rest.shape[1]))
    for j, p in enumerate(rest):
        # P'(r) = P(r) - p (P(r) - P(r - 1)); after j + 1 labels R <= j + 1
        reach = min(j + 1, width) + 1
        change = np.subtract(dist[1:reach + 1], dist[:reach], out=buffer[:reach])
        change *= p
        dist[1:reach + 1] -= change
    return dist[1:]


def _add_to_rest(inverse: np.ndarray, p: np.ndarray, width: int, buffer: np.ndarray) -> None:
    # E[1 / (c + R + Y)] = (1 - p) E[1 / (c + R)] + p E[1 / (c + 1 + R)]
    change = np.subtract(inverse[1:width + 1], inverse[:width], out=buffer[:width])
    change *= p
    inverse[:width] += change


def _count_distributions(top: np.ndarray) -> np.ndarray:
    """(K + 1, K + 1, images): [k, a] = P(a true among the top k)."""
    depth, n_images = top.shape
    dist = np.zeros((depth + 1, depth + 1, n_images))
    dist[0, 0] = 1.0
    for k in range(1, depth + 1):
        p = top[k - 1]
        np.multiply(dist[k - 1, :k], 1 - p, out=dist[k, :k])
        dist[k, 1:k + 1] += dist[k - 1, :k] * p
    return dist


# ---------------------------------------------------------------- per-label threshold search

def per_label_threshold_search(probs, y_true, base_pred, metric: str = "micro") -> tuple:
    """(thresholds, scores): one pass of coordinate ascent on `metric` over the whole matrix.

    Labels are searched in column order; each gets the threshold that maximises the metric
    with every other label at its current decisions (`base_pred` for labels not searched yet,
    the found threshold for those already searched), so the in-sample metric never decreases;
    `scores[j]` is the metric after label j's step. Why the whole-matrix metric and not each
    label's own F1: a label's own optimum ignores how many cells the others already predict,
    and for rare labels sits at low thresholds that add false positives to micro-F1. The
    search is exhaustive: every cut between distinct probabilities of the label, plus "none"
    and "all"; a threshold sits midway between the neighbours it separates.
    """
    probs = check_probabilities(probs)
    y_true = check_truth(y_true, probs.shape)
    current = check_truth(base_pred, probs.shape).copy()
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; use one of {METRICS}")
    n_images, n_labels = probs.shape
    counts = _LabelSetCounts(y_true, current)
    thresholds, scores = np.empty(n_labels), np.empty(n_labels)
    for label in progress(range(n_labels), desc="per-label thresholds", leave=False,
                          disable=n_labels * n_images < 5_000_000):
        ranking = np.argsort(-probs[:, label], kind="stable")
        ranked = probs[ranking, label].astype(np.float64)
        gains = counts.metric_if_top(label, ranking, metric)
        gains[1:-1][ranked[:-1] == ranked[1:]] = -np.inf  # a cut inside a run of ties is not one
        best = int(np.argmax(gains))
        edges = np.r_[1.0 + 1e-6, ranked, -1e-6]
        thresholds[label] = (edges[best] + edges[best + 1]) / 2
        scores[label] = gains[best]
        counts.set_label(label, probs[:, label] >= thresholds[label])
    return thresholds, scores


class _LabelSetCounts:
    """Per-image true positives and predicted counts of a label-set matrix, updated one label at
    a time, so that a label's candidate cuts are all scored in O(images)."""

    def __init__(self, y_true: np.ndarray, predicted: np.ndarray):
        self.y_true, self.predicted = y_true, predicted
        self.n_true = y_true.sum(axis=1).astype(np.float64)
        self.tp = (y_true & predicted).sum(axis=1).astype(np.float64)
        self.n_pred = predicted.sum(axis=1).astype(np.float64)

    def metric_if_top(self, label: int, ranking: np.ndarray, metric: str) -> np.ndarray:
        """(images + 1,): the metric when `label` is predicted on its m top-ranked images."""
        truth, was = self.y_true[:, label], self.predicted[:, label]
        tp_other, pred_other = self.tp - (truth & was), self.n_pred - was
        if metric == "micro":
            tp = tp_other.sum() + _running_sum(truth[ranking])
            denom = self.n_true.sum() + pred_other.sum() + np.arange(truth.size + 1)
            return np.divide(2.0 * tp, denom, out=np.zeros(tp.shape), where=denom > 0)
        denom = self.n_true + pred_other
        without = np.divide(2.0 * tp_other, denom, out=np.zeros(denom.shape), where=denom > 0)
        with_label = 2.0 * (tp_other + truth) / (denom + 1)
        return (without.sum() + _running_sum((with_label - without)[ranking])) / truth.size

    def set_label(self, label: int, decisions: np.ndarray) -> None:
        truth, was = self.y_true[:, label], self.predicted[:, label]
        self.tp += (truth & decisions).astype(np.float64) - (truth & was)
        self.n_pred += decisions.astype(np.float64) - was
        self.predicted[:, label] = decisions


def _running_sum(values: np.ndarray) -> np.ndarray:
    return np.r_[0.0, np.cumsum(values, dtype=np.float64)]
