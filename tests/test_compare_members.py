"""benchmarks.compare_members: members of several run directories on the same folds, fold-paired."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from benchmarks import compare_members
from fashion_stack.ensemble.comparison import fold_paired


def _member(run, name, folds, oof, folds_hash="abc"):
    member_dir = run / "members" / name
    for n, score in enumerate(folds):
        (member_dir / f"fold{n}").mkdir(parents=True)
        (member_dir / f"fold{n}" / "DONE.json").write_text(json.dumps(
            {"folds_hash": folds_hash, "scores": {"fold": n, "micro_f1@best": score}}))
    (member_dir / "scores.json").write_text(json.dumps({"oof": {"micro_f1@best": oof}}))


def test_fold_paired_interval_equals_scipys_paired_t_interval():
    a, b = np.array([0.571, 0.580, 0.570, 0.566]), np.array([0.560, 0.566, 0.562, 0.561])
    mean, low, high = fold_paired(a - b)
    reference = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert (low, high) == pytest.approx((reference.low, reference.high))
    assert mean == pytest.approx((a - b).mean())


def test_members_of_two_runs_are_compared_fold_by_fold(tmp_path, capsys):
    _member(tmp_path / "a", "base", [0.56, 0.57, 0.55], 0.560)
    _member(tmp_path / "b", "wide", [0.58, 0.58, 0.56], 0.574)
    assert compare_members.main([f"{tmp_path / 'a'}:base", f"{tmp_path / 'b'}:wide"]) == 0
    out = capsys.readouterr().out
    wide = next(line for line in out.splitlines() if line.startswith("| wide"))
    assert "0.5800 0.5800 0.5600" in wide and "+0.0133" in wide and "0.5740" in wide
    assert out.index("| wide") < out.index("| base")  # best OOF first


def test_a_member_on_other_folds_is_refused(tmp_path):
    _member(tmp_path / "a", "base", [0.56, 0.57, 0.55], 0.560)
    _member(tmp_path / "b", "other", [0.58, 0.58, 0.56], 0.574, folds_hash="xyz")
    with pytest.raises(SystemExit, match="not on the baseline's folds"):
        compare_members.main([f"{tmp_path / 'a'}:base", f"{tmp_path / 'b'}:other"])
    with pytest.raises(SystemExit, match="run the members stage"):
        compare_members.main([f"{tmp_path / 'a'}:missing"])


def test_plot_draws_one_bar_per_candidate_with_its_interval(tmp_path, capsys, monkeypatch):
    _member(tmp_path / "a", "base", [0.56, 0.57, 0.55], 0.560)
    _member(tmp_path / "b", "wide", [0.58, 0.58, 0.56], 0.574)
    _member(tmp_path / "b", "narrow", [0.55, 0.56, 0.55], 0.553)
    drawn = {}
    import fashion_stack.reports.plots as plots
    real = plots.interval_bars

    def spy(path, names, values, low, high, **kwargs):
        drawn.update(names=list(names), values=list(values), low=list(low), high=list(high))
        return real(path, names, values, low, high, **kwargs)

    monkeypatch.setattr(plots, "interval_bars", spy)
    png = tmp_path / "vs_base.png"
    assert compare_members.main([f"{tmp_path / 'a'}:base", f"{tmp_path / 'b'}:wide", f"{tmp_path / 'b'}:narrow",
                                 "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The baseline is not a bar; each candidate's bar is its fold-paired mean and t interval.
    assert drawn["names"] == ["wide", "narrow"]
    for name, folds in (("wide", [0.58, 0.58, 0.56]), ("narrow", [0.55, 0.56, 0.55])):
        i = drawn["names"].index(name)
        expected = fold_paired(np.subtract(folds, [0.56, 0.57, 0.55]))
        assert (drawn["values"][i], drawn["low"][i], drawn["high"][i]) == pytest.approx(expected)
