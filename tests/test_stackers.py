"""Stackers: scikit-learn's estimator contract, save/load, fallbacks, second-level OOF hygiene,
gains over the mean where label correlation exists, and the stack stage on a tiny run."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.utils import estimator_checks

from fashion_stack.core import atomic, predictions
from fashion_stack.core.metrics import best_global_threshold
from fashion_stack.ensemble import stackers as stackers_module
from fashion_stack.ensemble.stackers import (STACKERS, MeanStacker, Stacker, WeightedMeanStacker,
                               XGBoostStacker, load_stacker, make_stacker, per_label)
from fashion_stack.ensemble.stacking import second_level_oof
from fashion_stack.ensemble.stage import run_stack
from fashion_stack.features.stacker_inputs import StackerInputError, join_members, long_features
from plugin_harness import STACKER_ROWS, rows
from stacking_fixtures import GROUPS, LABEL_IDS, correlated_truth, make_run, member_tables, noisy_members

QUICK_XGB, QUICK_LONG, QUICK_GRID = STACKER_ROWS["xgboost"], STACKER_ROWS["xgboost_long"], STACKER_ROWS["grid_cnn"]
CONTRACT_CHECKS = ["check_estimator_cloneable", "check_estimator_repr", "check_get_params_invariance",
                   "check_set_params", "check_no_attributes_set_in_init",
                   "check_parameters_default_constructible", "check_do_not_raise_errors_in_init_or_set_params"]


@pytest.fixture(scope="module")
def data():
    y = correlated_truth(600, seed=1)
    return noisy_members(y, seed=1), y


@pytest.mark.parametrize("check", CONTRACT_CHECKS)
@pytest.mark.parametrize("name, quick", rows(STACKER_ROWS))
def test_scikit_learn_estimator_checks_that_apply(name, quick, check):
    # The rest of scikit-learn's checks feed 2-D X; stackers take (images, members, labels).
    getattr(estimator_checks, check)(name, make_stacker(name, **quick))


@pytest.mark.parametrize("name, quick", rows(STACKER_ROWS))
def test_fit_returns_self_and_unfitted_predict_refuses(name, quick, data):
    probs, y = data
    stacker = make_stacker(name, **quick)
    with pytest.raises(NotFittedError):
        stacker.predict_proba(probs)
    assert stacker.fit(probs, y) is stacker
    out = stacker.predict_proba(probs)
    assert out.dtype == np.float32 and out.shape == y.shape and np.all((out >= 0) & (out <= 1))
    with pytest.raises(NotFittedError):
        clone(stacker).predict_proba(probs)
    with pytest.raises(StackerInputError, match="fitted on 3 members x 8 labels"):
        stacker.predict_proba(probs[:, :2])


@pytest.mark.parametrize("name, quick", rows(STACKER_ROWS))
def test_save_load_round_trip_gives_identical_predictions(name, quick, data, tmp_path):
    probs, y = data
    stacker = make_stacker(name, **quick).fit(probs, y)
    stacker.save(tmp_path / "model")
    loaded = load_stacker(tmp_path / "model")
    assert type(loaded) is type(stacker) and loaded.get_params() == stacker.get_params()
    np.testing.assert_array_equal(loaded.predict_proba(probs), stacker.predict_proba(probs))


def test_xgboost_boosters_are_saved_in_xgboost_format(data, tmp_path):
    probs, y = data
    XGBoostStacker(**QUICK_XGB).fit(probs, y).save(tmp_path)
    assert sorted(p.name for p in (tmp_path / "boosters").iterdir()) == [f"label_{j}.ubj" for j in range(8)]


def test_unknown_stacker_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown stacker 'ridge'; valid stackers: \['grid_cnn', 'linear', 'mean', 'weighted', 'xgboost', 'xgboost_long'\]"):
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


@pytest.mark.parametrize("name, params, fallback, kind_of_label_6", [
    ("xgboost", {**QUICK_XGB, "prior_margin": False}, ["6", "7"], "linear"),
    ("xgboost", {**QUICK_XGB, "prior_margin": True}, ["6", "7"], "mean"),
    ("linear", {}, ["7"], "linear")])
def test_rare_labels_fall_back_and_are_listed(name, params, fallback, kind_of_label_6, data):
    probs, y = data
    y = y.copy()
    y[:, 6] = 0
    y[:4, 6] = 1  # 4 positives: below xgboost's 10, at linear's 3
    y[:, 7] = 0
    y[:2, 7] = 1  # 2 positives: below both
    stacker = make_stacker(name, **params).fit(probs, y)
    assert stacker.fallback_labels_ == fallback
    kinds = [kind for kind, _ in stacker.label_models_]
    assert kinds[7] == "mean" and kinds[0] == name and kinds[6] == kind_of_label_6
    np.testing.assert_allclose(stacker.predict_proba(probs)[:, 7], probs[:, :, 7].mean(axis=1), rtol=1e-6)


@pytest.mark.parametrize("name, quick", [("linear", {}), ("xgboost", QUICK_XGB)])
def test_labels_fitted_in_parallel_predict_as_labels_fitted_one_at_a_time(name, quick, data, monkeypatch):
    probs, y = data
    asked = []
    parallel = per_label.Parallel
    monkeypatch.setattr(per_label, "Parallel",
                        lambda n_jobs, **kwargs: asked.append(n_jobs) or parallel(n_jobs=n_jobs, **kwargs))
    one_at_a_time = make_stacker(name, **{**quick, "n_jobs": 1}).fit(probs, y)
    two_at_a_time = make_stacker(name, **{**quick, "n_jobs": 2}).fit(probs, y)
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


@pytest.fixture(scope="module")
def dependent_label():
    y = correlated_truth(3000, seed=7)  # label 2 = label 0 AND label 1
    probs = noisy_members(y, qualities=(1.0, 1.5, 2.0), noise=1.5, seed=7)
    probs[:, :, 2] = noisy_members(y[:, 2:3], qualities=(0.3, 0.3, 0.3), seed=8)[:, :, 0]  # members barely see it
    train, test = slice(0, 2000), slice(2000, None)
    mean = best_global_threshold(y[test], probs[test].mean(axis=1))[1]
    return probs, y, train, test, mean


# the grid's larger batches halve its steps per epoch (this test is about what it learns, not how fast)
@pytest.mark.parametrize("name, params", [("linear", {}), ("xgboost", {"n_jobs": 1}), ("xgboost_long", {"n_jobs": 1}),
                                          ("grid_cnn", {"batch_size": 256})])
def test_stackers_beat_the_mean_when_a_label_depends_on_others(name, params, dependent_label):
    probs, y, train, test, mean_score = dependent_label
    stacker = make_stacker(name, **params).fit(probs[train], y[train])
    score = best_global_threshold(y[test], stacker.predict_proba(probs[test]))[1]
    assert score > mean_score + 0.01, (score, mean_score)


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
    unit = ctx.run.stacker_dir("mean")
    stamp, finished = (unit / "oof.parquet").stat().st_mtime_ns, atomic.read_json(unit / "DONE.json")["finished_at"]
    with monkeypatch.context() as patched:
        patched.setattr(stackers_module.MeanStacker, "fit", _refuse)
        again = run_stack(ctx)
        assert again["up_to_date"] and all(s["skipped"] for s in again["stackers"].values())
        ctx.redo = {"stack"}
        with pytest.raises(AssertionError, match="refit"):
            run_stack(ctx)
    redone = run_stack(ctx)  # the redo recomputed: new artifacts and a new DONE record
    assert not any(s["skipped"] for s in redone["stackers"].values())
    assert (unit / "oof.parquet").stat().st_mtime_ns != stamp
    assert atomic.read_json(unit / "DONE.json")["finished_at"] > finished


def _refuse(*args, **kwargs):
    raise AssertionError("refit")


def _test_stack(ctx):
    from fashion_stack.features.stage import load_member_stacks
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
    stacker = XGBoostStacker(**QUICK_XGB, learning_rate=0.0).fit(probs, y)
    np.testing.assert_allclose(stacker.predict_proba(probs), probs.mean(axis=1), atol=1e-5)


def test_xgboost_without_prior_margin_does_not_predict_the_mean_when_trees_learn_nothing(data):
    probs, y = data  # the contrast that shows the previous test measures the prior, not luck
    stacker = XGBoostStacker(**QUICK_XGB, learning_rate=0.0, prior_margin=False).fit(probs, y)
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


@pytest.mark.parametrize("name, params", [("xgboost", {**QUICK_XGB, "prior_margin": False}),
                                          ("linear", {"prior_offset": False}), ("linear", {"C": 0.1})])
def test_save_load_round_trip_without_the_prior(name, params, data, tmp_path):
    probs, y = data
    stacker = make_stacker(name, **params).fit(probs, y)
    stacker.save(tmp_path / "model")
    np.testing.assert_array_equal(load_stacker(tmp_path / "model").predict_proba(probs), stacker.predict_proba(probs))


# --- the long-format and grid stackers ------------------------------------------------------------

def test_long_features_hold_one_row_per_image_and_label(data):
    probs, y = data
    stack = join_members(member_tables(probs[:5], [f"i{k}" for k in range(5)]), LABEL_IDS, label_groups=GROUPS)
    frequency = y.mean(axis=0)
    context = np.tile(np.arange(2), (8, 1))  # every label's context: labels 0 and 1
    X, names = long_features(stack, frequency, context)
    assert X.shape == (5 * 8, len(names)) and X.dtype == np.float32
    column = {name: X[:, k] for k, name in enumerate(names)}
    for i, j in [(0, 0), (3, 5), (4, 7)]:
        row = i * 8 + j  # image major
        assert [column[f"member:{m}"][row] for m in "abc"] == pytest.approx(probs[i, :, j].tolist())
        assert column["label"][row] == j and column["label_frequency"][row] == pytest.approx(frequency[j])
        assert column["rank:b"][row] == int((probs[i, 1] > probs[i, 1, j]).sum())  # 0 = member b's top label
        assert column["product:a*c"][row] == pytest.approx(probs[i, 0, j] * probs[i, 2, j])
        assert column["expected_count"][row] == pytest.approx(probs[i].mean(axis=0).sum())
        assert column["image_top"][row] == pytest.approx(probs[i].mean(axis=0).max())
        assert column["context:2"][row] == pytest.approx(probs[i, :, 1].mean())
    assert {"group_rank", "group_top", "group_sum"} <= set(names)
    with pytest.raises(StackerInputError, match="one rate per label"):
        long_features(stack, frequency[:3])


def test_long_format_lets_a_rare_label_learn_from_the_common_ones():
    # every member is overconfident in the same way on every label; label 7 has 6 positives, too
    # few for a model of its own (the per-label booster keeps the mean), enough to share one
    rng = np.random.default_rng(3)
    y = (rng.random((2400, 8)) < np.r_[np.linspace(0.2, 0.5, 7), 0.004]).astype(np.uint8)
    logits = 3.0 * (2.0 * y - 1.0)[:, None, :] + rng.normal(0.0, 2.0, (2400, 2, 8))
    probs = (1 / (1 + np.exp(-2.5 * logits))).astype(np.float32)  # calibrated would be 1x, not 2.5x
    train, test = slice(0, 1200), slice(1200, None)
    per_label = XGBoostStacker(n_jobs=1).fit(probs[train], y[train])
    long = make_stacker("xgboost_long", n_jobs=1).fit(probs[train], y[train])
    assert "7" in per_label.fallback_labels_ and long.fallback_labels_ == []
    mean_loss = _log_loss(y[test, 7], probs[test, :, 7].mean(axis=1))
    long_loss = _log_loss(y[test, 7], long.predict_proba(probs[test])[:, 7])
    assert long_loss < 0.7 * mean_loss, (long_loss, mean_loss)


def test_long_format_whose_trees_learn_nothing_predicts_the_members_mean(data):
    probs, y = data
    stacker = make_stacker("xgboost_long", **{**QUICK_LONG, "learning_rate": 0.0}).fit(probs, y)
    np.testing.assert_allclose(stacker.predict_proba(probs), probs.mean(axis=1), atol=1e-5)


def test_long_format_rows_come_in_chunks_with_the_same_model(data):
    probs, y = data
    whole = make_stacker("xgboost_long", **QUICK_LONG, chunk_images=10_000).fit(probs, y)
    chunked = make_stacker("xgboost_long", **QUICK_LONG, chunk_images=64).fit(probs, y)
    np.testing.assert_allclose(chunked.predict_proba(probs), whole.predict_proba(probs), atol=1e-6)


def test_grid_stacker_that_learns_nothing_predicts_the_mean_log_odds(data):
    probs, y = data
    # learning rate 0: the weights stay at their start, the shared mix of 1/members and a zero correction
    stacker = make_stacker("grid_cnn", **{**QUICK_GRID, "learning_rate": 0.0}).fit(probs, y)
    p = np.clip(probs.astype(np.float64), 1e-6, 1 - 1e-6)
    mean_log_odds = np.log(p / (1 - p)).mean(axis=1)
    np.testing.assert_allclose(stacker.predict_proba(probs), 1 / (1 + np.exp(-mean_log_odds)), atol=1e-5)


def test_grid_stacker_is_seeded_and_stops_on_inner_training_rows(data, monkeypatch):
    probs, y = data
    import keras
    seen = []
    fit = keras.Model.fit
    monkeypatch.setattr(keras.Model, "fit", lambda self, x, y, validation_data, **kw: seen.append(
        (len(x), len(validation_data[0]))) or fit(self, x, y, validation_data=validation_data, **kw))
    first = make_stacker("grid_cnn", **QUICK_GRID).fit(probs[:500], y[:500])
    again = make_stacker("grid_cnn", **QUICK_GRID).fit(probs[:500], y[:500])
    other = make_stacker("grid_cnn", **QUICK_GRID, seed=1).fit(probs[:500], y[:500])
    assert seen[0] == (400, 100)  # early stopping watches a fifth of the training rows, never others
    np.testing.assert_array_equal(first.predict_proba(probs[500:]), again.predict_proba(probs[500:]))
    assert np.abs(first.predict_proba(probs[500:]) - other.predict_proba(probs[500:])).max() > 1e-4
    assert 1 <= first.best_epoch_ <= QUICK_GRID["epochs"]


def test_long_format_learns_on_each_images_candidates_and_keeps_the_mean_elsewhere(data):
    probs, y = data
    stacker = make_stacker("xgboost_long", **QUICK_LONG, candidates=3).fit(probs, y)
    out, mean = stacker.predict_proba(probs), probs.mean(axis=1)
    top3 = np.argsort(-mean, axis=1)[:, :3]
    inside = np.zeros(mean.shape, dtype=bool)
    np.put_along_axis(inside, top3, True, axis=1)
    np.testing.assert_array_equal(out[~inside], mean[~inside].astype(np.float32))
    assert np.abs(out[inside] - mean[inside]).mean() > 0.01


def test_cv_threshold_score_chooses_each_folds_threshold_on_the_other_folds(data):
    from sklearn.metrics import f1_score

    from fashion_stack.core.metrics import THRESHOLD_GRID
    from fashion_stack.ensemble.stacking import cv_threshold_micro_f1
    probs, y = data
    p = probs.mean(axis=1)
    folds = np.arange(len(y)) % 3
    predicted = np.zeros(y.shape, dtype=bool)
    for fold in range(3):
        other = folds != fold
        best = max(THRESHOLD_GRID, key=lambda t: f1_score(y[other], p[other] >= t, average="micro"))
        predicted[~other] = p[~other] >= best
    assert cv_threshold_micro_f1(y, p, folds) == pytest.approx(f1_score(y, predicted, average="micro"))


def test_grid_fits_that_share_a_compiled_network_equal_a_fit_on_a_new_one(data):
    probs, y = data
    params = {**QUICK_GRID, "seed": 7}  # an architecture no other test builds: the first fit's network is new
    first = make_stacker("grid_cnn", **params).fit(probs[:300], y[:300])
    make_stacker("grid_cnn", **params).fit(probs[300:], y[300:])  # trains the shared network on other rows
    again = make_stacker("grid_cnn", **params).fit(probs[:300], y[:300])  # the shared network, reset
    np.testing.assert_array_equal(again.predict_proba(probs), first.predict_proba(probs))
