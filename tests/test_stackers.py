"""Stackers: scikit-learn's estimator contract, save/load, fallbacks, second-level OOF hygiene,
gains over the mean where label correlation exists, and the stack stage on a tiny run."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.utils import estimator_checks

from core import atomic, predictions
from core.metrics import best_global_threshold
from ensemble import stackers as stackers_module
from ensemble.stackers import (STACKERS, MeanStacker, Stacker, WeightedMeanStacker,
                               XGBoostStacker, load_stacker, make_stacker)
from ensemble.stacking import second_level_oof
from ensemble.stage import run_stack
from features.stacker_inputs import StackerInputError, join_members
from stacking_fixtures import LABEL_IDS, correlated_truth, make_run, member_tables, noisy_members

FAST = {"mean": {}, "weighted": {}, "linear": {}, "xgboost": {"n_estimators": 30, "n_jobs": 1}}
CONTRACT_CHECKS = ["check_estimator_cloneable", "check_estimator_repr", "check_get_params_invariance",
                   "check_set_params", "check_no_attributes_set_in_init",
                   "check_parameters_default_constructible", "check_do_not_raise_errors_in_init_or_set_params"]


@pytest.fixture(scope="module")
def data():
    y = correlated_truth(600, seed=1)
    return noisy_members(y, seed=1), y


@pytest.mark.parametrize("check", CONTRACT_CHECKS)
@pytest.mark.parametrize("name", sorted(STACKERS))
def test_scikit_learn_estimator_checks_that_apply(name, check):
    # The rest of scikit-learn's checks feed 2-D X; stackers take (images, members, labels).
    getattr(estimator_checks, check)(name, make_stacker(name))


@pytest.mark.parametrize("name", sorted(STACKERS))
def test_fit_returns_self_and_unfitted_predict_refuses(name, data):
    probs, y = data
    stacker = make_stacker(name, **FAST[name])
    with pytest.raises(NotFittedError):
        stacker.predict_proba(probs)
    assert stacker.fit(probs, y) is stacker
    out = stacker.predict_proba(probs)
    assert out.dtype == np.float32 and out.shape == y.shape and np.all((out >= 0) & (out <= 1))
    with pytest.raises(NotFittedError):
        clone(stacker).predict_proba(probs)
    with pytest.raises(StackerInputError, match="fitted on 3 members x 8 labels"):
        stacker.predict_proba(probs[:, :2])


@pytest.mark.parametrize("name", sorted(STACKERS))
def test_save_load_round_trip_gives_identical_predictions(name, data, tmp_path):
    probs, y = data
    stacker = make_stacker(name, **FAST[name]).fit(probs, y)
    stacker.save(tmp_path / "model")
    loaded = load_stacker(tmp_path / "model")
    assert type(loaded) is type(stacker) and loaded.get_params() == stacker.get_params()
    np.testing.assert_array_equal(loaded.predict_proba(probs), stacker.predict_proba(probs))


def test_xgboost_boosters_are_saved_in_xgboost_format(data, tmp_path):
    probs, y = data
    XGBoostStacker(**FAST["xgboost"]).fit(probs, y).save(tmp_path)
    assert sorted(p.name for p in (tmp_path / "boosters").iterdir()) == [f"label_{j}.ubj" for j in range(8)]


def test_unknown_stacker_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown stacker 'ridge'; valid stackers: \['linear', 'mean', 'weighted', 'xgboost'\]"):
        make_stacker("ridge")


def test_mean_stacker_is_the_members_mean(data):
    probs, y = data
    np.testing.assert_allclose(MeanStacker().fit(probs, y).predict_proba(probs), probs.mean(axis=1), rtol=1e-6)


def test_weighted_mean_matches_a_brute_force_log_loss_search():
    y = correlated_truth(500, seed=4)
    probs = noisy_members(y, qualities=(0.5, 2.0), noise=1.0, seed=4)
    weights = WeightedMeanStacker().fit(probs, y).weights_
    grid = np.linspace(0, 1, 201)
    losses = [_log_loss(y, w * probs[:, 0] + (1 - w) * probs[:, 1]) for w in grid]
    assert weights[0] == pytest.approx(grid[int(np.argmin(losses))], abs=0.01)
    assert weights.sum() == pytest.approx(1.0) and weights.min() >= 0


def _log_loss(y, p):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))


@pytest.mark.parametrize("name, params, fallback_kind", [("xgboost", {"prior_margin": False}, "linear"),
                                                          ("xgboost", {"prior_margin": True}, "mean"),
                                                          ("linear", {}, "mean")])
def test_rare_labels_fall_back_and_are_listed(name, params, fallback_kind, data):
    probs, y = data
    y = y.copy()
    y[:, 6] = 0
    y[:4, 6] = 1  # 4 positives: below xgboost's 10, at linear's 3
    y[:, 7] = 0
    y[:2, 7] = 1  # 2 positives: below both
    stacker = make_stacker(name, **FAST[name], **params).fit(probs, y)
    assert stacker.fallback_labels_ == (["6", "7"] if name == "xgboost" else ["7"])
    kinds = [kind for kind, _ in stacker.label_models_]
    assert kinds[7] == "mean" and kinds[0] == name
    assert kinds[6] == (fallback_kind if name == "xgboost" else "linear")
    np.testing.assert_allclose(stacker.predict_proba(probs)[:, 7], probs[:, :, 7].mean(axis=1), rtol=1e-6)


@pytest.mark.parametrize("name", ["linear", "xgboost"])
def test_labels_fitted_in_parallel_predict_as_labels_fitted_one_at_a_time(name, data, monkeypatch):
    probs, y = data
    asked = []
    parallel = stackers_module.Parallel
    monkeypatch.setattr(stackers_module, "Parallel",
                        lambda n_jobs, **kwargs: asked.append(n_jobs) or parallel(n_jobs=n_jobs, **kwargs))
    one_at_a_time = make_stacker(name, **{**FAST[name], "n_jobs": 1}).fit(probs, y)
    two_at_a_time = make_stacker(name, **{**FAST[name], "n_jobs": 2}).fit(probs, y)
    # every map over labels (the linear stacker's C search makes more than one) uses the stacker's n_jobs
    assert asked and asked == [1] * (len(asked) // 2) + [2] * (len(asked) // 2)
    np.testing.assert_array_equal(two_at_a_time.predict_proba(probs), one_at_a_time.predict_proba(probs))


class _SpyStacker(Stacker):
    fitted_on: list = []

    def _fit(self, stack, y):
        _SpyStacker.fitted_on.append(set(stack.image_ids))

    def _predict(self, stack):
        return stack.mean


def test_second_level_oof_never_fits_on_the_predicted_fold(monkeypatch, data):
    probs, y = data
    monkeypatch.setitem(STACKERS, "spy", _SpyStacker)
    _SpyStacker.fitted_on = []
    ids = [f"i{k}" for k in range(len(y))]
    stack = join_members(member_tables(probs, ids), LABEL_IDS)
    folds = np.random.default_rng(0).integers(0, 4, len(y))
    records = []
    oof = second_level_oof("spy", None, stack, y, folds, records)
    assert [r["fold"] for r in records] == [0, 1, 2, 3]
    for fold, seen in enumerate(_SpyStacker.fitted_on):
        assert seen == {i for i, f in zip(ids, folds) if f != fold}
    np.testing.assert_allclose(oof, probs.mean(axis=1), rtol=1e-6)
    assert {"seconds", "micro_f1@best", "loss", "fallback_labels"} <= set(records[0])


def test_stackers_beat_the_mean_when_a_label_depends_on_others():
    y = correlated_truth(3000, seed=7)  # label 2 = label 0 AND label 1
    probs = noisy_members(y, qualities=(1.0, 1.5, 2.0), noise=1.5, seed=7)
    probs[:, :, 2] = noisy_members(y[:, 2:3], qualities=(0.3, 0.3, 0.3), seed=8)[:, :, 0]  # members barely see it
    train, test = slice(0, 2000), slice(2000, None)
    scores = {}
    for name in ("mean", "linear", "xgboost"):
        stacker = make_stacker(name, **({"n_jobs": 1} if name == "xgboost" else {})).fit(probs[train], y[train])
        scores[name] = best_global_threshold(y[test], stacker.predict_proba(probs[test]))[1]
    assert scores["linear"] > scores["mean"] + 0.01, scores
    assert scores["xgboost"] > scores["mean"] + 0.01, scores


def test_run_stack_writes_every_artifact_and_skips_when_done(tmp_path, monkeypatch):
    ctx = make_run(tmp_path, stackers=("mean", "xgboost"))
    summary = run_stack(ctx)
    assert set(summary["stackers"]) == {"mean", "xgboost"}
    for name in ("mean", "xgboost"):
        unit = ctx.run.stacker_dir(name)
        oof = predictions.read(unit / "oof.parquet", LABEL_IDS)
        test = predictions.read(unit / "test.parquet", LABEL_IDS)
        assert list(oof.index) == [f"p{i}" for i in range(120)] and list(test.index) == [f"t{i}" for i in range(30)]
        scores = atomic.read_json(unit / "scores.json")
        assert scores["stacker"] == name and [f["fold"] for f in scores["folds"]] == [0, 1, 2]
        assert {"oof", "seconds", "fallback_labels"} <= set(scores) and (unit / "DONE.json").exists()
        np.testing.assert_array_equal(load_stacker(unit / "model").predict_proba(_test_stack(ctx)), test.to_numpy())
    monkeypatch.setattr(stackers_module.MeanStacker, "fit", _refuse)
    again = run_stack(ctx)
    assert again["up_to_date"] and all(s["skipped"] for s in again["stackers"].values())
    ctx.redo = {"stack"}
    with pytest.raises(AssertionError, match="refit"):
        run_stack(ctx)


def _refuse(*args, **kwargs):
    raise AssertionError("refit")


def _test_stack(ctx):
    from features.stage import load_member_stacks
    return load_member_stacks(ctx)[1]


def test_run_stack_refuses_an_unknown_stacker_before_any_work(tmp_path):
    ctx = make_run(tmp_path, stackers=("mean", "ridge"))
    with pytest.raises(ValueError, match="unknown stacker 'ridge'"):
        run_stack(ctx)
    assert not ctx.run.stacker_dir("mean").exists()


# --- boosting / regressing from the members' mean -----------------------------------------------

def _held_out_log_loss(y, p):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))


def test_xgboost_whose_trees_learn_nothing_predicts_the_members_mean(data):
    probs, y = data
    # learning_rate 0: every tree's leaves are scaled to zero, so each booster is its prior alone
    stacker = XGBoostStacker(**FAST["xgboost"], learning_rate=0.0).fit(probs, y)
    np.testing.assert_allclose(stacker.predict_proba(probs), probs.mean(axis=1), atol=1e-5)


def test_xgboost_without_prior_margin_does_not_predict_the_mean_when_trees_learn_nothing(data):
    probs, y = data  # the contrast that shows the previous test measures the prior, not luck
    stacker = XGBoostStacker(**FAST["xgboost"], learning_rate=0.0, prior_margin=False).fit(probs, y)
    assert np.abs(stacker.predict_proba(probs) - probs.mean(axis=1)).max() > 0.2


def test_boosting_from_the_mean_beats_boosting_from_scratch_on_a_small_pool():
    y = correlated_truth(2300, seed=0)
    probs = noisy_members(y, seed=0)
    train, test = slice(0, 300), slice(300, None)
    losses = {prior: _held_out_log_loss(y[test], XGBoostStacker(prior_margin=prior, n_jobs=1)
                                        .fit(probs[train], y[train]).predict_proba(probs[test]))
              for prior in (True, False)}
    assert losses[True] < losses[False], losses


def test_linear_prior_offset_matches_scikit_learn_when_the_prior_is_constant():
    y = correlated_truth(400, seed=3)
    p = noisy_members(y, qualities=(1.0,), seed=3)[:, 0, :]
    probs = np.stack([p, 1 - p], axis=1)  # the members' mean is 0.5 everywhere: a zero offset
    assert np.allclose(probs.mean(axis=1), 0.5)
    with_offset = make_stacker("linear", C=0.5, n_context=0, n_jobs=1).fit(probs, y)
    plain = make_stacker("linear", C=0.5, n_context=0, n_jobs=1, prior_offset=False).fit(probs, y)
    assert isinstance(plain.label_models_[0][1].steps[-1][1], LogisticRegression)
    # both solvers stop at their tolerances (~3e-4 apart here); C=0.4 instead of 0.5 moves them 5e-3
    np.testing.assert_allclose(with_offset.predict_proba(probs), plain.predict_proba(probs), atol=1e-3)


def test_linear_auto_c_shrinks_to_calibrated_members_and_frees_miscalibrated_ones():
    rng = np.random.default_rng(0)
    logit = rng.normal(-1.0, 2.0, (300, 8))
    y = (rng.random(logit.shape) < 1 / (1 + np.exp(-logit))).astype(np.uint8)
    calibrated = np.stack([1 / (1 + np.exp(-(logit + rng.normal(0, 0.3, logit.shape)))) for _ in range(3)], axis=1)
    assert make_stacker("linear", n_jobs=1).fit(calibrated, y).C_ == min(stackers_module.LinearStacker.C_GRID)
    y = correlated_truth(1500, seed=0)
    miscalibrated = noisy_members(y, seed=0)  # members' mean sits far from the truth's frequencies
    assert make_stacker("linear", n_jobs=1).fit(miscalibrated, y).C_ == max(stackers_module.LinearStacker.C_GRID)


def test_linear_fixed_c_is_used_and_a_bad_c_is_refused(data):
    probs, y = data
    assert make_stacker("linear", C=0.3, n_jobs=1).fit(probs, y).C_ == 0.3
    with pytest.raises(ValueError, match="C must be a positive number or 'auto', got -1"):
        make_stacker("linear", C=-1).fit(probs, y)


@pytest.mark.parametrize("name, params", [("xgboost", {"prior_margin": False}), ("linear", {"prior_offset": False}),
                                          ("linear", {"C": 0.1})])
def test_save_load_round_trip_without_the_prior(name, params, data, tmp_path):
    probs, y = data
    stacker = make_stacker(name, **FAST[name], **params).fit(probs, y)
    stacker.save(tmp_path / "model")
    np.testing.assert_array_equal(load_stacker(tmp_path / "model").predict_proba(probs), stacker.predict_proba(probs))
