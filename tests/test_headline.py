"""The last screen states the chosen candidate's nested score as a maximum over candidates and
puts the honest (outer-loop) headline beside it."""
from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from fashion_stack.core import atomic
from fashion_stack.core.rundir import RunDir
from fashion_stack.reports.summary import final_screen


def _screen(tmp_path, honest) -> str:
    run = RunDir(tmp_path / "run")
    atomic.write_csv(run.decision_dir / "scores.csv", pd.DataFrame(
        {"source": ["m1", "mean", "mean"], "kind": ["member", "stacker", "stacker"], "rule": ["global", "global", "gfm"],
         "micro_f1": [0.50, 0.55, 0.56], "samples_f1": [0.5, 0.54, 0.57]}))
    atomic.write_json(run.decision_dir / "rule.json", {"source": "mean", "kind": "stacker", "rule": "gfm",
                                                       "metric": "micro", "score": 0.56, "honest": honest})
    return final_screen(SimpleNamespace(run=run, config=SimpleNamespace(decision=SimpleNamespace(metric="micro"), members=[])), {"stack": {"stackers": {"mean": {"micro_f1@best": 0.57}}}})


def test_the_last_screen_shows_the_honest_headline_beside_the_maximum(tmp_path):
    honest = {"method": "outer loop", "micro_f1": 0.5432, "samples_f1": 0.5123, "n_candidates": 3,
              "per_fold": [{"fold": 0, "source": "mean", "rule": "gfm"}, {"fold": 1, "source": "mean", "rule": "global"}]}
    screen = _screen(tmp_path, honest)
    assert "nested-CV micro-F1 0.5600 (the best of 3 candidates on the same folds, so optimistic)" in screen
    assert ("Honest headline (outer loop: the choice repeated without each scored fold): micro-F1 0.5432, "
            "sample-F1 0.5123; the folds chose mean+gfm, mean+global") in screen
    assert "micro-F1@best (threshold tuned on the scored rows): mean=0.5700" in screen


def test_the_last_screen_says_when_there_is_no_honest_headline(tmp_path):
    screen = _screen(tmp_path, {"method": None, "reason": "outer loop off or fewer than 3 folds"})
    assert "Honest headline: not measured (outer loop off or fewer than 3 folds)" in screen


# ---- the stack's gain over its best member (issue 21) -------------------------------------------

import numpy as np  # noqa: E402

from fashion_stack.core.metrics import micro_f1  # noqa: E402
from fashion_stack.ensemble.decide_stage import compare_headline_with_best_member, headline_counts  # noqa: E402
from fashion_stack.ensemble.selection import CandidateCounts, label_set_counts  # noqa: E402


def _candidates(seed=0, n=300, labels=6):
    """Truth, folds and three candidates: two members (one better) and a stacker better than both."""
    rng = np.random.default_rng(seed)
    y = rng.random((n, labels)) < 0.3
    folds = np.arange(n) % 3
    def noisy(flip):  # truth with a share of cells flipped
        return y ^ (rng.random(y.shape) < flip)
    sets = {("weak", "member"): noisy(0.30), ("strong", "member"): noisy(0.20), ("mean", "stacker"): noisy(0.10)}
    counts = [CandidateCounts(s, k, "global", label_set_counts(y, p)) for (s, k), p in sets.items()]
    return y, folds, sets, counts


def test_headline_against_the_best_member_equals_a_direct_computation():
    y, folds, sets, counts = _candidates()
    honest = {"per_fold": [{"fold": 0, "source": "mean", "kind": "stacker", "rule": "global"},
                           {"fold": 1, "source": "strong", "kind": "member", "rule": "global"},
                           {"fold": 2, "source": "mean", "kind": "stacker", "rule": "global"}]}
    headline = np.where((folds == 1)[:, None], sets[("strong", "member")], sets[("mean", "stacker")])
    np.testing.assert_array_equal(headline_counts(counts, honest, folds), label_set_counts(y, headline))
    row = compare_headline_with_best_member(counts, honest, y.sum(axis=1), folds, "micro", 500, 0)
    assert row["best_member"] == "strong"  # the better member, by its nested score
    assert row["headline"] == pytest.approx(micro_f1(y, headline))
    assert row["best_member_nested"] == pytest.approx(micro_f1(y, sets[("strong", "member")]))
    assert row["delta_micro_f1"] == pytest.approx(micro_f1(y, headline) - micro_f1(y, sets[("strong", "member")]))
    assert row["delta_fold1"] == pytest.approx(0.0)  # that fold chose the member itself
    assert row["ci_low"] > 0 and row["excludes_0"]  # a stacker with half the member's errors on 2 of 3 folds
    assert row["ci_low"] < row["delta_micro_f1"] < row["ci_high"]


def test_the_last_screen_states_the_gain_over_the_best_member_with_its_interval(tmp_path):
    honest = {"method": "outer loop", "micro_f1": 0.60, "samples_f1": 0.58, "n_candidates": 3,
              "per_fold": [{"fold": 0, "source": "mean", "rule": "gfm"}],
              "vs_best_member": {"headline": 0.60, "best_member": "m1", "best_member_rule": "global",
                                 "best_member_nested": 0.58, "delta_micro_f1": 0.02, "ci_low": 0.011,
                                 "ci_high": 0.029, "excludes_0": True}}
    screen = _screen(tmp_path, honest)
    assert ("Stack gain over the best member: honest headline 0.6000 against m1 + global 0.5800 (nested, the best of its rules): "
            "+0.0200, 95% fold-paired interval [+0.0110, +0.0290]") in screen
