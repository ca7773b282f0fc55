"""core.metrics against scikit-learn (and brute force where scikit-learn has no equivalent)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import average_precision_score, f1_score, log_loss

from fashion_stack.core import metrics

ZERO_DIVISIONS = (0.0, 1.0)


def _random_case(seed: int, n_images: int = 60, n_labels: int = 12):
    rng = np.random.default_rng(seed)
    y_true = (rng.random((n_images, n_labels)) < 0.25).astype(np.uint8)
    y_pred = (rng.random((n_images, n_labels)) < 0.3).astype(np.uint8)
    return y_true, y_pred


def _edge_case():
    """Empty rows (no true, no predicted, neither), an all-zero label column, a perfect row."""
    y_true = np.array([
        [0, 0, 0, 0],  # nothing true, nothing predicted: zero_division
        [0, 0, 0, 0],  # nothing true, one predicted
        [1, 1, 0, 0],  # true labels, nothing predicted
        [1, 0, 1, 0],  # perfect
        [0, 1, 1, 0],
    ], dtype=np.uint8)
    y_pred = np.array([
        [0, 0, 0, 0],
        [0, 0, 1, 0],
        [0, 0, 0, 0],
        [1, 0, 1, 0],
        [1, 1, 0, 0],
    ], dtype=np.uint8)
    return y_true, y_pred


CASES = [_random_case(seed) for seed in range(4)] + [_edge_case()]


def _sk(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        return fn(*args, **kwargs)


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("zero_division", ZERO_DIVISIONS)
def test_f1_variants_equal_sklearn(case, zero_division):
    y_true, y_pred = CASES[case]
    assert metrics.micro_f1(y_true, y_pred, zero_division) == pytest.approx(
        _sk(f1_score, y_true, y_pred, average="micro", zero_division=zero_division))
    assert metrics.samples_f1(y_true, y_pred, zero_division) == pytest.approx(
        _sk(f1_score, y_true, y_pred, average="samples", zero_division=zero_division))
    np.testing.assert_allclose(
        metrics.per_label_f1(y_true, y_pred, zero_division),
        _sk(f1_score, y_true, y_pred, average=None, zero_division=zero_division))
    per_image = [_sk(f1_score, t, p, zero_division=zero_division) for t, p in zip(y_true, y_pred)]
    np.testing.assert_allclose(metrics.sample_f1s(y_true, y_pred, zero_division), per_image)


@pytest.mark.parametrize("zero_division", ZERO_DIVISIONS)
def test_all_zero_matrices_follow_zero_division(zero_division):
    empty = np.zeros((3, 5), dtype=np.uint8)
    for name, average in (("micro_f1", "micro"), ("samples_f1", "samples")):
        ours = getattr(metrics, name)(empty, empty, zero_division)
        assert ours == _sk(f1_score, empty, empty, average=average, zero_division=zero_division)


def test_f1_dispatches_by_metric_and_rejects_unknown():
    y_true, y_pred = CASES[0]
    assert metrics.f1(y_true, y_pred, "micro") == metrics.micro_f1(y_true, y_pred)
    assert metrics.f1(y_true, y_pred, "samples") == metrics.samples_f1(y_true, y_pred)
    with pytest.raises(ValueError, match="micro"):
        metrics.f1(y_true, y_pred, "macro")


def test_metrics_reject_non_matrix_input():
    with pytest.raises(ValueError, match="2-D"):
        metrics.micro_f1(np.zeros(4), np.zeros(4))


def _scores_with_ties(seed: int, n_images: int = 80, n_labels: int = 9):
    rng = np.random.default_rng(seed)
    y_true = (rng.random((n_images, n_labels)) < 0.3).astype(np.uint8)
    # scores on a coarse grid so that many tie; positives a little higher so AP is not trivial
    scores = np.round(rng.random((n_images, n_labels)) * 0.6 + 0.4 * y_true * rng.random((n_images, n_labels)), 1)
    return y_true, scores


@pytest.mark.parametrize("seed", range(4))
def test_average_precision_equals_sklearn_with_ties(seed):
    y_true, scores = _scores_with_ties(seed)
    y_true[:, 0] = 0  # a label without positives: NaN here, dropped by mAP
    ours = metrics.average_precision_per_label(y_true, scores)
    assert np.isnan(ours[0])
    reference = [average_precision_score(y_true[:, j], scores[:, j]) for j in range(1, y_true.shape[1])]
    np.testing.assert_allclose(ours[1:], reference)
    assert metrics.mean_average_precision(y_true, scores) == pytest.approx(np.mean(reference))
    assert metrics.mean_average_precision(y_true[:, 1:], scores[:, 1:]) == pytest.approx(
        average_precision_score(y_true[:, 1:], scores[:, 1:], average="macro"))


def test_map_is_nan_without_any_positive():
    assert np.isnan(metrics.mean_average_precision(np.zeros((4, 3)), np.random.default_rng(0).random((4, 3))))


@pytest.mark.parametrize("case", range(len(CASES)))
def test_cardinality_error_equals_brute_force(case):
    y_true, y_pred = CASES[case]
    reference = np.mean([abs(int(t.sum()) - int(p.sum())) for t, p in zip(y_true, y_pred)])
    assert metrics.cardinality_error(y_true, y_pred) == pytest.approx(reference)


@pytest.mark.parametrize("metric,average", [("micro", "micro"), ("samples", "samples")])
def test_best_global_threshold_equals_exhaustive_grid(metric, average):
    rng = np.random.default_rng(3)
    y_true = (rng.random((50, 7)) < 0.3).astype(np.uint8)
    probs = np.clip(0.5 * y_true + 0.6 * rng.random((50, 7)), 0, 1)
    grid = np.linspace(0.05, 0.95, 19)
    threshold, score = metrics.best_global_threshold(y_true, probs, metric, grid)
    reference = [_sk(f1_score, y_true, probs >= th, average=average, zero_division=0.0) for th in grid]
    assert score == pytest.approx(max(reference))
    assert threshold == pytest.approx(grid[int(np.argmax(reference))])


def test_score_probabilities_bundle_matches_sklearn():
    rng = np.random.default_rng(5)
    y_true = (rng.random((40, 6)) < 0.3).astype(np.uint8)
    probs = np.clip(0.5 * y_true + 0.5 * rng.random((40, 6)), 0.01, 0.99)
    bundle = metrics.score_probabilities(y_true, probs)
    assert bundle["loss"] == pytest.approx(log_loss(y_true.ravel(), probs.ravel()))
    assert bundle["micro_f1@0.5"] == pytest.approx(f1_score(y_true, probs >= 0.5, average="micro"))
    threshold = bundle["best_threshold"]
    assert bundle["micro_f1@best"] == pytest.approx(f1_score(y_true, probs >= threshold, average="micro"))
    assert bundle["samples_f1@best"] == pytest.approx(
        _sk(f1_score, y_true, probs >= threshold, average="samples", zero_division=0.0))
    assert bundle["mAP"] == pytest.approx(average_precision_score(y_true, probs, average="macro"))
    assert bundle["n_images"] == 40


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("average", ["micro", "samples"])
def test_f1_from_counts_equals_sklearn(case, average):
    y_true, y_pred = CASES[case]
    t, p = y_true.astype(bool), y_pred.astype(bool)
    ours = metrics.f1_from_counts((t & p).sum(axis=1), p.sum(axis=1), t.sum(axis=1), average)
    assert ours == pytest.approx(_sk(f1_score, y_true, y_pred, average=average, zero_division=0.0))
    with pytest.raises(ValueError, match="micro"):
        metrics.f1_from_counts([1], [1], [1], "weighted")


def test_frequency_floor_is_out_of_fold_and_picks_k_on_training_folds():
    from fashion_stack.core.metrics import frequency_floor
    rng = np.random.default_rng(0)
    y = rng.random((90, 8)) < np.array([0.9, 0.8, 0.6, 0.3, 0.2, 0.1, 0.05, 0.02])
    fold_of = np.arange(90) % 3
    floor = frequency_floor(y, fold_of, max_k=8)
    for fold, k in enumerate(floor["k"]):
        train = fold_of != fold
        ranking = np.argsort(-y[train].sum(axis=0), kind="stable")
        # brute force: the k that maximises training-fold micro-F1
        scores = [f1_score(y[train], np.tile(np.isin(np.arange(8), ranking[:kk]), (train.sum(), 1)), average="micro")
                  for kk in range(1, 9)]
        assert k == int(np.argmax(scores)) + 1
        held = fold_of == fold
        pred = np.tile(np.isin(np.arange(8), ranking[:k]), (held.sum(), 1))
        assert floor["folds"][fold] == pytest.approx(f1_score(y[held], pred, average="micro"))
