"""The General F-measure Maximizer (Dembczynski, Waegeman, Cheng, Huellermeier, NIPS 2011) and the
estimate of the matrix it needs.

GFM: for one image, let P[i, s] = P(y_i = 1, |y| = s) (s = 1..S) and P0 = P(y = empty set). The
expected F1 of predicting a set h of k >= 1 labels is sum_{i in h} Delta[i, k] with
Delta[i, k] = sum_s 2 P[i, s] / (s + k), so the best set of size k is the k labels with the largest
Delta[:, k], and the best set overall is the best of those (k = 1..K) and the empty set (expected
F1 = P0, since F1(empty, empty) = 1). It is exact for any joint distribution of the labels: no
independence is assumed, only these L x S numbers.

The estimate: P(y_i = 1, |y| = s) = P(|y| = s | image) x P(y_i = 1 | |y| = s, image), both
learnt from the training rows, so neither the independence of labels nor calibrated
probabilities is assumed (expected_f1 assumes both):
- set size: a multinomial logistic regression per image (classes 0..S, S the largest count seen
  in training; 0 gives the empty-set term) on the image's probability mass and its top
  probabilities, sorted;
- membership given the size: one logistic regression over (image, candidate label) rows, the
  image's `n_candidates` most probable labels, on the label's log-odds, its rank, the size s and
  whether the rank falls inside s; fitted at each image's true size, evaluated at every size.
Labels outside the candidates are never predicted (they still count in s).
"""
from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from fashion_stack.core.metrics import PROBABILITY_FLOOR, logit
from fashion_stack.ensemble.label_sets import TopLabels

CHUNK = 2048  # images decoded at a time: bounds the (images, candidates, sizes) arrays


def gfm_decode(joint, p_empty, min_labels: int, max_labels: int) -> tuple:
    """(chosen, expected_f1): the F1-maximising set of each image among sizes min_labels..max_labels
    (0 allowed: the empty set), from joint[i, d, s - 1] = P(y_d = 1, |y| = s) (images, labels, S)
    and p_empty[i] = P(y = empty set). `chosen` is (images, labels) bool, `expected_f1` (images,)
    the exact expected F1 of the chosen set under that distribution."""
    joint = np.asarray(joint, dtype=np.float64)
    p_empty = np.asarray(p_empty, dtype=np.float64)
    if joint.ndim != 3 or p_empty.shape != joint.shape[:1]:
        raise ValueError(f"gfm_decode: joint must be (images, labels, sizes) and p_empty (images,), "
                         f"got {joint.shape} and {p_empty.shape}")
    n_images, n_labels, n_sizes = joint.shape
    lo, hi = min(int(min_labels), n_labels), min(int(max_labels), n_labels)
    if not 0 <= lo <= hi:
        raise ValueError(f"gfm_decode: need 0 <= min_labels <= max_labels, got {min_labels}, {max_labels}")
    chosen = np.zeros((n_images, n_labels), dtype=bool)
    expected = np.empty(n_images)
    for start in range(0, n_images, CHUNK):
        rows = slice(start, min(start + CHUNK, n_images))
        chosen[rows], expected[rows] = _decode_chunk(joint[rows], p_empty[rows], lo, hi)
    return chosen, expected


def _decode_chunk(joint, p_empty, lo: int, hi: int) -> tuple:
    n_images, n_labels, n_sizes = joint.shape
    sizes = np.arange(1, n_sizes + 1)[:, None]
    ks = np.arange(1, hi + 1)[None, :]
    delta = joint @ (2.0 / (sizes + ks))  # (images, labels, k): Delta[i, k] for set sizes k = 1..hi
    ranked = -np.sort(-delta, axis=1)
    # expected F1 of the best set of size k: the sum of the k largest Delta[:, k]
    best_of_size = np.cumsum(ranked, axis=1)[:, np.arange(hi), np.arange(hi)] if hi else np.zeros((n_images, 0))
    scores = np.concatenate([p_empty[:, None], best_of_size], axis=1)  # column k: sets of size k
    scores[:, :lo] = -np.inf
    best_k = np.argmax(scores, axis=1)
    chosen = np.zeros((n_images, n_labels), dtype=bool)
    for k in np.unique(best_k[best_k > 0]):
        rows = np.flatnonzero(best_k == k)
        top = np.argpartition(-delta[rows, :, k - 1], k - 1, axis=1)[:, :k]
        block = chosen[rows]
        np.put_along_axis(block, top, True, axis=1)
        chosen[rows] = block
    return chosen, scores[np.arange(n_images), best_k]


SIZE_FEATURES_TOP = 8  # sorted top probabilities the set-size model sees


def fit_joint_model(probs: np.ndarray, y_true: np.ndarray, n_candidates: int, C: float, max_iter: int) -> dict:
    """The two regressions as plain arrays (JSON-ready): "size_*" for P(|y| = s) (classes, per-class
    coefficients and intercepts, feature mean and scale) and "member_*" for P(y_i = 1 | |y| = s)."""
    counts = y_true.sum(axis=1).astype(int)
    max_size = int(max(counts.max(), 1))
    size_model = _fit_logistic(_size_features(probs), counts, C, max_iter)
    top = TopLabels(probs, n_candidates)
    labelled = counts > 0
    present = np.take_along_axis(y_true, top.index, axis=1)[labelled].reshape(-1).astype(int)
    columns = _member_features(top.probs[labelled], counts[labelled][:, None])
    member_X = np.column_stack([np.broadcast_to(c, top.probs[labelled].shape).reshape(-1) for c in columns])
    member_model = _fit_logistic(member_X, present, C, max_iter, classes=(0, 1))
    return {"max_size": max_size, **{f"size_{k}": v for k, v in size_model.items()},
            **{f"member_{k}": v for k, v in member_model.items()}}


def predict_sets(model: dict, probs: np.ndarray, n_candidates: int, min_labels: int, max_labels: int) -> np.ndarray:
    """(images, labels) bool: GFM's set for each image under the fitted model, CHUNK images at a time."""
    out = np.zeros(probs.shape, dtype=bool)
    for start in range(0, probs.shape[0], CHUNK):
        rows = slice(start, min(start + CHUNK, probs.shape[0]))
        top, joint, p_empty = joint_from_model(model, probs[rows], n_candidates)
        chosen, _ = gfm_decode(joint, p_empty, min_labels, max_labels)
        block = np.zeros((joint.shape[0], probs.shape[1]), dtype=bool)
        np.put_along_axis(block, top.index, chosen, axis=1)
        out[rows] = block
    return out


def joint_from_model(model: dict, probs: np.ndarray, n_candidates: int) -> tuple:
    """(top, joint, p_empty): each image's candidates (a TopLabels), joint[i, d, s - 1] =
    P(y_{top.index[i, d]} = 1, |y| = s) for s = 1..max_size, and P(y = empty set) per image."""
    max_size = int(model["max_size"])
    size_probs = np.zeros((probs.shape[0], max_size + 1))
    size_probs[:, np.asarray(model["size_classes"])] = _predict_logistic(model, "size", _size_features(probs))
    top = TopLabels(probs, n_candidates)
    member = _membership(model, top.probs, np.arange(1, max_size + 1))  # (images, candidates, sizes)
    return top, member * size_probs[:, None, 1:], size_probs[:, 0]


def _size_features(probs: np.ndarray) -> np.ndarray:
    """Per image: probability mass, its log, the sum of squared probabilities, and the top
    SIZE_FEATURES_TOP probabilities in decreasing order (as log-odds)."""
    p = np.asarray(probs, dtype=np.float64)
    mass = p.sum(axis=1)
    top = TopLabels(p, SIZE_FEATURES_TOP).probs
    return np.column_stack([mass, np.log(mass + 1e-3), (p ** 2).sum(axis=1), logit(top)])


def _member_features(top_probs: np.ndarray, sizes: np.ndarray) -> list:
    """The membership model's columns for candidates ranked 0.. with probabilities top_probs
    (images, candidates), at set sizes broadcastable against them: the label's log-odds,
    log(1 + rank), log(size), whether rank < size, and log-odds x inside (five arrays)."""
    log_odds = logit(top_probs)
    rank = np.arange(top_probs.shape[1]).reshape((1, -1) + (1,) * (top_probs.ndim - 2))  # along the candidates
    inside = (rank < sizes).astype(np.float64)
    return [log_odds, np.log1p(rank), np.log(np.asarray(sizes, dtype=np.float64)), inside, log_odds * inside]


def _membership(model: dict, top_probs: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """(images, candidates, sizes): P(y_d = 1 | |y| = s) for every candidate d and size s. The
    logistic regression's log-odds are summed column by column instead of building the
    (images x candidates x sizes, columns) design matrix, which would be five times larger."""
    columns = _member_features(top_probs[:, :, None], sizes[None, None, :])
    # a logistic regression's two rows: P(present) = sigmoid of their difference
    coef_rows, intercepts = np.asarray(model["member_coef"]), np.asarray(model["member_intercept"])
    coef = (coef_rows[1] - coef_rows[0]) / model["member_scale"]
    log_odds = (intercepts[1] - intercepts[0]) - coef @ model["member_mean"]
    for weight, column in zip(coef, columns):
        log_odds = log_odds + weight * column
    return 1.0 / (1.0 + np.exp(-log_odds))


def _fit_logistic(X: np.ndarray, target: np.ndarray, C: float, max_iter: int, classes=None) -> dict:
    """A (multinomial) logistic regression as arrays: classes, one row of coefficients and an
    intercept per class, and the standardisation. A target with one class (no image of another
    size, no absent candidate...) gets a constant model: the observed rate, clipped, for `classes`."""
    seen = np.unique(target)
    classes = np.asarray(classes if classes is not None else seen, dtype=int)
    if X.shape[0] == 0 or seen.size < 2:
        rates = np.array([np.mean(target == c) if target.size else 1.0 / classes.size for c in classes])
        rates = np.clip(rates, PROBABILITY_FLOOR, 1.0)
        return {"classes": classes, "coef": np.zeros((classes.size, X.shape[1])), "intercept": np.log(rates),
                "mean": np.zeros(X.shape[1]), "scale": np.ones(X.shape[1])}
    scaler = StandardScaler().fit(X)
    # one thread: the regressions are small, and OpenMP threads contend with the other folds' work
    with threadpool_limits(limits=1):
        model = LogisticRegression(C=C, max_iter=max_iter).fit(scaler.transform(X), target)
    coef, intercept = model.coef_, model.intercept_
    if model.classes_.size == 2:  # scikit-learn keeps one row of coefficients for two classes
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.r_[0.0, intercept]
    return {"classes": model.classes_.astype(int), "coef": coef, "intercept": intercept,
            "mean": scaler.mean_, "scale": scaler.scale_}


def _predict_logistic(model: dict, prefix: str, X: np.ndarray) -> np.ndarray:
    """Class probabilities (rows, classes) of a regression stored by _fit_logistic under `prefix`."""
    Z = (X - model[f"{prefix}_mean"]) / model[f"{prefix}_scale"]
    logits = Z @ np.asarray(model[f"{prefix}_coef"]).T + model[f"{prefix}_intercept"]
    logits -= logits.max(axis=1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(axis=1, keepdims=True)
