"""The honest headline (an outer loop that repeats the whole choice without the scored fold), the
pairwise fits it rests on, and the paired comparison of each stacker with the mean."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fashion_stack.core.metrics import f1_from_counts
from fashion_stack.ensemble.decide_stage import choose_best
from fashion_stack.ensemble.decision import RULES, DecisionRule
from fashion_stack.ensemble.selection import (CandidateCounts, compare_with_reference, label_set_counts, outer_loop_choice,
                                pairwise_cv_counts)


class _SpyRule(DecisionRule):
    """Predicts each image's top label; records the rows it was fitted on (by their first column)."""

    fitted_on: list = []

    def __init__(self, min_labels=1, max_labels=23, metric="micro"):
        self.min_labels, self.max_labels, self.metric = min_labels, max_labels, metric

    def _fit(self, probs, y_true):
        _SpyRule.fitted_on.append(set(np.round(probs[:, 0] * 1e6).astype(int)))
        self.seen_ = True

    def _predict(self, probs):
        return probs >= probs.max(axis=1, keepdims=True)


def test_pairwise_fits_leave_out_both_folds_and_predict_each_for_the_other(monkeypatch):
    monkeypatch.setitem(RULES, "spy", _SpyRule)
    _SpyRule.fitted_on = []
    n = 60
    probs = np.column_stack([np.arange(n) / 1e6, np.random.default_rng(0).random((n, 3))])
    y = np.random.default_rng(1).random((n, 4)) < 0.5
    folds = np.arange(n) % 4
    inner = pairwise_cv_counts("spy", probs, y, folds)
    assert len(_SpyRule.fitted_on) == 6  # k (k - 1) / 2 fits for k = 4
    pairs = [(a, b) for a in range(4) for b in range(a + 1, 4)]
    for (a, b), rows in zip(pairs, _SpyRule.fitted_on):
        assert rows == set(np.flatnonzero((folds != a) & (folds != b)))
    expected = label_set_counts(y, probs >= probs.max(axis=1, keepdims=True))
    for f in range(4):
        assert (inner[f][folds == f] == -1).all()  # the scored fold is not scored in its own choice
        np.testing.assert_array_equal(inner[f][folds != f], expected[folds != f])
    with pytest.raises(ValueError, match="at least 3 folds"):
        pairwise_cv_counts("spy", probs, y, folds % 2)


def _micro(candidate, y) -> float:
    return f1_from_counts(candidate.nested[:, 0], candidate.nested[:, 1], y.sum(axis=1), "micro")


def _candidates(y, folds, qualities, seed=0, kind="stacker"):
    """Candidates whose label sets are the truth with each cell flipped at rate 1 - quality; nested
    and inner counts drawn independently (as refits would)."""
    rng = np.random.default_rng(seed)
    out = []
    for c, quality in enumerate(qualities):
        def draw():
            return label_set_counts(y, np.where(rng.random(y.shape) < quality, y, ~y))
        inner = np.stack([np.where((folds == f)[:, None], -1, draw()) for f in np.unique(folds)])
        out.append(CandidateCounts(f"s{c}", kind, "global", draw(), inner))
    return out


def test_outer_loop_is_not_fooled_by_the_best_of_many_equal_candidates():
    rng = np.random.default_rng(0)
    y = rng.random((300, 20)) < 0.3
    folds = np.arange(300) % 3
    candidates = _candidates(y, folds, [0.8] * 30)  # 30 equally good candidates: any gap is luck
    nested = np.array([_micro(c, y) for c in candidates])
    honest = outer_loop_choice(candidates, y.sum(axis=1), folds, "micro", choose_best)
    # the naive headline is the maximum of 30 noisy scores; the outer loop's is one draw like any other
    assert nested.max() - nested.mean() > nested.std()
    assert honest["micro_f1"] < nested.max()
    assert abs(honest["micro_f1"] - nested.mean()) < 4 * nested.std()
    assert [c["fold"] for c in honest["per_fold"]] == [0, 1, 2] and honest["n_candidates"] == 30


def test_outer_loop_reports_a_clear_winner_at_its_own_nested_score():
    rng = np.random.default_rng(1)
    y = rng.random((300, 20)) < 0.3
    folds = np.arange(300) % 3
    candidates = _candidates(y, folds, [0.7, 0.95, 0.7])
    honest = outer_loop_choice(candidates, y.sum(axis=1), folds, "micro", choose_best)
    assert {c["source"] for c in honest["per_fold"]} == {"s1"}
    assert honest["micro_f1"] == pytest.approx(_micro(candidates[1], y))


def test_outer_loop_applies_the_stage_policy_stackers_before_members():
    rng = np.random.default_rng(2)
    y = rng.random((300, 20)) < 0.3
    folds = np.arange(300) % 3
    candidates = _candidates(y, folds, [0.99], kind="member") + _candidates(y, folds, [0.8], seed=1)
    honest = outer_loop_choice(candidates, y.sum(axis=1), folds, "micro", choose_best)
    assert {c["kind"] for c in honest["per_fold"]} == {"stacker"}


def test_comparison_with_the_mean_brackets_the_change_and_separates_a_real_gain():
    rng = np.random.default_rng(3)
    y = rng.random((600, 20)) < 0.3
    folds = np.arange(600) % 3
    mean, better, same = _candidates(y, folds, [0.8, 0.9, 0.8], seed=3)
    mean.source = "mean"
    twin = CandidateCounts("twin", "stacker", "global", mean.nested.copy())
    table = compare_with_reference([mean, better, same, twin], "mean", y.sum(axis=1), folds, "micro", 500, 0)
    rows = table.set_index("source")
    assert list(rows.index) == ["s1", "s2", "twin"]
    assert (rows["ci_low"] <= rows["delta_micro_f1"]).all() and (rows["delta_micro_f1"] <= rows["ci_high"]).all()
    assert rows.loc["s1", "excludes_0"] and rows.loc["s1", "ci_low"] > 0
    assert rows.loc["twin", ["delta_micro_f1", "ci_low", "ci_high"]].tolist() == [0.0, 0.0, 0.0]
    assert not rows.loc["twin", "excludes_0"]
    assert isinstance(table, pd.DataFrame)
