"""The last screen states the chosen candidate's nested score as a maximum over candidates and
puts the honest (outer-loop) headline beside it."""
from __future__ import annotations

from types import SimpleNamespace

import pandas as pd

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
    return final_screen(SimpleNamespace(run=run), {"stack": {"stackers": {"mean": {"micro_f1@best": 0.57}}}})


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
