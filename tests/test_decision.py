"""Decision rules against brute force and exhaustive references; the estimator contract; the
nested CV; the decide stage on a tiny hand-made run directory."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import (check_get_params_invariance, check_no_attributes_set_in_init,
                                            check_parameters_default_constructible, check_set_params)

from fashion_stack.core import atomic, metrics, predictions
from fashion_stack.core.config import DecisionConfig, MemberConfig, PipelineConfig, StackConfig
from fashion_stack.core.context import StageContext
from fashion_stack.core.rundir import RunDir, mark_done
from fashion_stack.datasets.folds import write_folds
from fashion_stack.datasets.manifest import make_manifest
from fashion_stack.ensemble import decision
from fashion_stack.ensemble.decide_stage import run_decide
from fashion_stack.ensemble.decision import RULES, make_rule, nested_cv_predict
from plugin_harness import RULE_ROWS
from fashion_stack.ensemble.label_sets import (enforce_cardinality, expected_f1_of_top_k, per_label_threshold_search,
                                 threshold_grid)

GROUPS_12 = np.array(["category"] * 4 + ["gender"] * 2 + ["color"] * 6, dtype=object)


def _problem(seed: int, n_images: int = 120, n_labels: int = 12, rate: float = 0.2):
    rng = np.random.default_rng(seed)
    y_true = rng.random((n_images, n_labels)) < rate
    probs = np.clip(0.45 * y_true + 0.55 * rng.random((n_images, n_labels)) ** 2, 0, 1)
    return probs.astype(np.float32), y_true


def _rule_kwargs(name: str, n_labels: int = 12, groups=GROUPS_12) -> dict:
    """The harness row's settings, and the label groups for a rule that takes them."""
    takes_groups = "groups" in RULES[name]().get_params()
    return {**RULE_ROWS[name], **({"groups": groups[:n_labels]} if takes_groups else {})}


# ---------------------------------------------------------------- expected F1: brute force

def _all_subsets(n_labels: int) -> np.ndarray:
    return np.array(list(itertools.product([0, 1], repeat=n_labels)), dtype=bool)


def _brute_expected_f1(p: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """E[F1] of each candidate set in `chosen` (sets x labels), summing over all 2^L truths."""
    truths = _all_subsets(p.size)
    weight = np.prod(np.where(truths, p, 1 - p), axis=1)
    overlap = chosen.astype(int) @ truths.T.astype(int)
    denom = chosen.sum(axis=1)[:, None] + truths.sum(axis=1)[None, :]
    f1 = np.divide(2.0 * overlap, denom, out=np.zeros(overlap.shape), where=denom > 0)
    return f1 @ weight


def _probability_rows(n_labels: int) -> np.ndarray:
    rng = np.random.default_rng(n_labels)
    return np.vstack([rng.random((4, n_labels)), rng.random((2, n_labels)) ** 4,
                      np.full((1, n_labels), 1e-4), np.full((1, n_labels), 0.9999),
                      np.full((1, n_labels), 0.5), np.r_[np.ones(n_labels // 2), np.zeros(n_labels - n_labels // 2)]])


@pytest.mark.parametrize("n_labels", [1, 2, 5, 8, 10])
def test_expected_f1_of_top_k_equals_brute_force(n_labels):
    rows = _probability_rows(n_labels)
    ours = expected_f1_of_top_k(rows, max_k=n_labels)
    for row, expected in zip(rows, ours):
        order = np.argsort(-row, kind="stable")
        prefixes = np.zeros((n_labels, n_labels), dtype=bool)
        for k in range(1, n_labels + 1):
            prefixes[k - 1, order[:k]] = True
        np.testing.assert_allclose(expected, _brute_expected_f1(row, prefixes), atol=1e-12)


@pytest.mark.parametrize("n_labels,min_labels,max_labels", [(6, 1, 23), (9, 1, 23), (10, 2, 4), (8, 3, 3)])
def test_expected_f1_rule_picks_the_best_of_all_subsets(n_labels, min_labels, max_labels):
    rows = _probability_rows(n_labels)
    rule = make_rule("expected_f1", min_labels=min_labels, max_labels=max_labels)
    predicted = rule.fit(rows, rows > 0.5).predict(rows)
    subsets = _all_subsets(n_labels)
    sizes = subsets.sum(axis=1)
    allowed = subsets[(sizes >= min_labels) & (sizes <= min(max_labels, n_labels))]
    for row, chosen in zip(rows, predicted):
        best = _brute_expected_f1(row, allowed).max()
        assert _brute_expected_f1(row, chosen[None, :])[0] == pytest.approx(best, abs=1e-12)


def _full_distribution(p: np.ndarray) -> np.ndarray:
    """P(count = r), r = 0..len(p), for independent labels, one convolution per label."""
    dist = np.ones(1)
    for q in p:
        dist = np.convolve(dist, [1 - q, q])
    return dist


def _reference_expected_f1(row: np.ndarray, max_k: int) -> np.ndarray:
    """E[F1] of each top-k prefix from the full count distributions of the prefix and the rest."""
    ranked = np.sort(row)[::-1]
    out = []
    for k in range(1, max_k + 1):
        hits, others = _full_distribution(ranked[:k]), _full_distribution(ranked[k:])
        a, r = np.arange(k + 1)[:, None], np.arange(row.size - k + 1)[None, :]
        out.append((np.outer(hits, others) * 2 * a / (k + a + r)).sum())
    return np.array(out)


@pytest.mark.parametrize("n_labels,max_k", [(10, 3), (12, 1)])
def test_expected_f1_of_a_few_top_labels_equals_brute_force(n_labels, max_k):
    # the labels outside the top max_k (the rest) include near-certain ones in some rows
    rows = _probability_rows(n_labels)
    ours = expected_f1_of_top_k(rows, max_k=max_k)
    for row, expected in zip(rows, ours):
        order = np.argsort(-row, kind="stable")
        prefixes = np.zeros((max_k, n_labels), dtype=bool)
        for k in range(1, max_k + 1):
            prefixes[k - 1, order[:k]] = True
        np.testing.assert_allclose(expected, _brute_expected_f1(row, prefixes), atol=1e-12)


def test_expected_f1_over_many_labels_equals_full_count_distributions():
    # 200 labels, too many for brute force: sparse rows (a few likely labels and a long tail of
    # unlikely ones that add up to several, as on the real data, where the decoder keeps only the
    # likely counts of the labels outside the top 23) and dense ones
    rng = np.random.default_rng(5)
    sparse = rng.random((6, 200)) * rng.uniform(0.02, 0.1, (6, 1))
    sparse[:, :6] = rng.uniform(0.3, 0.99, (6, 6))
    dense = np.vstack([rng.random((2, 200)), np.full((1, 200), 0.5), rng.random((1, 200)) ** 0.1])
    rows = np.vstack([sparse, dense])
    ours = expected_f1_of_top_k(rows, max_k=23, chunk=3)  # small chunks: sparse rows are not held to dense widths
    for row, expected in zip(rows, ours):
        np.testing.assert_allclose(expected, _reference_expected_f1(row, 23), atol=1e-12)


# ---------------------------------------------------------------- per-label thresholds: exhaustive

def _exhaustive_coordinate_pass(probs, y_true, base, metric):
    """Label by label, every threshold that changes anything (each distinct probability and one
    above all), scored with core.metrics on the whole matrix."""
    current = base.copy()
    best_scores = []
    for label in range(probs.shape[1]):
        candidates = np.r_[np.unique(probs[:, label]), np.inf]
        scored = []
        for threshold in candidates:
            trial = current.copy()
            trial[:, label] = probs[:, label] >= threshold
            scored.append(metrics.f1(y_true, trial, metric))
        best = int(np.argmax(scored))
        current[:, label] = probs[:, label] >= candidates[best]
        best_scores.append(scored[best])
    return np.array(best_scores)


@pytest.mark.parametrize("metric", ["micro", "samples"])
@pytest.mark.parametrize("seed", [0, 1])
def test_per_label_search_equals_exhaustive_search(metric, seed):
    probs, y_true = _problem(seed, n_images=60, n_labels=8, rate=0.25)
    probs = np.round(probs, 1)  # many ties: cuts inside tie runs must be skipped
    y_true[:, 3] = False  # a label without positives
    base = probs >= 0.4
    thresholds, scores = per_label_threshold_search(probs, y_true, base, metric)
    np.testing.assert_allclose(scores, _exhaustive_coordinate_pass(probs, y_true, base, metric))
    # the thresholds reproduce the scores they report
    assert metrics.f1(y_true, probs >= thresholds[None, :], metric) == pytest.approx(scores[-1])


def test_per_label_shrinkage_pulls_rare_labels_to_the_global_threshold():
    probs, y_true = _problem(2, n_images=200)
    y_true[:, 0] = False
    y_true[:3, 1] = True
    y_true[3:, 1] = False
    rule = make_rule("per_label", shrinkage=50.0).fit(probs, y_true)
    assert rule.thresholds_[0] == pytest.approx(rule.global_threshold_)
    gap = np.abs(rule.thresholds_ - rule.global_threshold_)
    raw_gap = np.abs(rule.raw_thresholds_ - rule.global_threshold_)
    assert np.all(gap <= raw_gap + 1e-12)
    unshrunk = make_rule("per_label", shrinkage=0.0).fit(probs, y_true)
    np.testing.assert_allclose(unshrunk.thresholds_[1:], unshrunk.raw_thresholds_[1:])


# ---------------------------------------------------------------- threshold rules: exhaustive grid

@pytest.mark.parametrize("metric", ["micro", "samples"])
@pytest.mark.parametrize("min_labels,max_labels", [(1, 23), (2, 3)])
def test_global_threshold_is_the_best_of_its_grid_after_the_clamp(metric, min_labels, max_labels):
    probs, y_true = _problem(3)
    rule = make_rule("global", metric=metric, min_labels=min_labels, max_labels=max_labels, n_thresholds=19)
    rule.fit(probs, y_true)
    reference = [metrics.f1(y_true, enforce_cardinality(probs, probs >= t, min_labels, max_labels), metric)
                 for t in threshold_grid(19)]
    assert rule.train_score_ == pytest.approx(max(reference))
    assert metrics.f1(y_true, rule.predict(probs), metric) == pytest.approx(rule.train_score_)


@pytest.mark.parametrize("name", ["global", "group", "topk"])
@pytest.mark.parametrize("metric", ["micro", "samples"])
def test_fitted_score_equals_the_metric_of_the_predictions(name, metric):
    probs, y_true = _problem(4)
    rule = make_rule(name, metric=metric, max_labels=4, **_rule_kwargs(name)).fit(probs, y_true)
    assert metrics.f1(y_true, rule.predict(probs), metric) == pytest.approx(rule.train_score_)


def test_enforce_cardinality_equals_row_by_row_reference():
    rng = np.random.default_rng(5)
    probs = rng.random((50, 9))
    chosen = rng.random((50, 9)) < rng.random((50, 1))
    out = enforce_cardinality(probs, chosen, 2, 4)
    for p, c, o in zip(probs, chosen, out):
        order = np.argsort(-p)
        if c.sum() < 2:
            extra = [j for j in order if not c[j]][:2 - c.sum()]
            expected = c.copy()
            expected[extra] = True
        elif c.sum() > 4:
            expected = np.zeros(9, dtype=bool)
            expected[[j for j in order if c[j]][:4]] = True
        else:
            expected = c
        np.testing.assert_array_equal(o, expected)


# ---------------------------------------------------------------- label counts on every rule

ADVERSARIAL = {
    "all tiny": lambda shape: np.full(shape, 1e-6, dtype=np.float32),
    "all huge": lambda shape: np.full(shape, 1 - 1e-6, dtype=np.float32),
    "zeros and ones": lambda shape: (np.random.default_rng(0).random(shape) < 0.5).astype(np.float32),
    "random": lambda shape: np.random.default_rng(1).random(shape).astype(np.float32),
}


@pytest.mark.parametrize("name", RULE_ROWS)
@pytest.mark.parametrize("limits", [(1, 23), (3, 5), (2, 2)])
def test_every_rule_keeps_min_to_max_labels(name, limits):
    min_labels, max_labels = limits
    n_labels = 30
    groups = np.array(["category"] * 10 + ["gender"] * 3 + ["color"] * 17, dtype=object)
    kwargs = _rule_kwargs(name, n_labels, groups)
    train_probs, train_true = _problem(6, n_images=80, n_labels=n_labels)
    for what, make in ADVERSARIAL.items():
        probs = make((40, n_labels))
        for fit_on in ((train_probs, train_true), (probs, probs > 0.5)):
            rule = make_rule(name, min_labels=min_labels, max_labels=max_labels, **kwargs).fit(*fit_on)
            counts = rule.predict(probs).sum(axis=1)
            assert counts.min() >= min_labels and counts.max() <= max_labels, (what, counts)


def test_more_min_labels_than_labels_keeps_every_label():
    probs, y_true = _problem(7, n_labels=5)
    for name in RULE_ROWS:
        rule = make_rule(name, min_labels=8, max_labels=10, **_rule_kwargs(name, 5)).fit(probs, y_true)
        assert rule.predict(probs).all()


# ---------------------------------------------------------------- group rule

def test_group_rule_picks_exactly_one_category_and_one_gender():
    probs, y_true = _problem(8)
    rule = make_rule("group", groups=GROUPS_12).fit(probs, y_true)
    for what, make in ADVERSARIAL.items():
        predicted = rule.predict(make((40, 12)))
        assert np.all(predicted[:, GROUPS_12 == "category"].sum(axis=1) == 1), what
        assert np.all(predicted[:, GROUPS_12 == "gender"].sum(axis=1) == 1), what
    predicted = rule.predict(probs)
    for group in ("category", "gender"):
        columns = np.flatnonzero(GROUPS_12 == group)
        np.testing.assert_array_equal(np.flatnonzero(predicted[:, columns]) % len(columns),
                                      np.argmax(probs[:, columns], axis=1))


def test_group_rule_tops_up_from_the_other_labels_not_from_a_second_category():
    probs, y_true = _problem(8)
    rule = make_rule("group", groups=GROUPS_12, min_labels=5).fit(probs, y_true)
    confusing = np.where(GROUPS_12 == "color", 0.01, 0.9)[None, :].repeat(3, axis=0)
    predicted = rule.predict(confusing)
    assert np.all(predicted.sum(axis=1) == 5)
    assert np.all(predicted[:, GROUPS_12 == "category"].sum(axis=1) == 1)
    assert np.all(predicted[:, GROUPS_12 == "gender"].sum(axis=1) == 1)


def test_group_rule_without_groups_is_the_global_rule():
    probs, y_true = _problem(9)
    plain = make_rule("global").fit(probs, y_true)
    for groups in (None, np.array(["color"] * 12, dtype=object)):
        grouped = make_rule("group", groups=groups).fit(probs, y_true)
        assert grouped.threshold_ == plain.threshold_
        np.testing.assert_array_equal(grouped.predict(probs), plain.predict(probs))


def test_group_rule_rejects_groups_of_the_wrong_length():
    probs, y_true = _problem(9)
    with pytest.raises(ValueError, match="one group name per label"):
        make_rule("group", groups=GROUPS_12[:5]).fit(probs, y_true)


# ---------------------------------------------------------------- estimator contract

@pytest.mark.parametrize("name", RULE_ROWS)
def test_scikit_learn_contract(name):
    rule = make_rule(name, min_labels=2, max_labels=5, **_rule_kwargs(name))
    cls_name = type(rule).__name__
    check_no_attributes_set_in_init(cls_name, rule)
    check_parameters_default_constructible(cls_name, rule)
    check_get_params_invariance(cls_name, rule)
    check_set_params(cls_name, rule)
    twin = clone(rule)
    assert twin is not rule and twin.get_params().keys() == rule.get_params().keys()
    assert twin.set_params(**rule.get_params()).get_params()["max_labels"] == 5
    with pytest.raises(NotFittedError):
        twin.predict(np.full((2, 12), 0.5))
    probs, y_true = _problem(10)
    assert rule.fit(probs, y_true) is rule
    assert rule.predict(probs).dtype == bool
    assert all(key.endswith("_") for key in rule.fitted_params())
    with pytest.raises(ValueError, match="fitted on 12 labels"):
        rule.predict(probs[:, :5])


def test_bad_inputs_get_clear_errors():
    probs, y_true = _problem(11)
    with pytest.raises(ValueError, match="valid decision rules: .*expected_f1.*global"):
        make_rule("globl")
    with pytest.raises(ValueError, match=r"row\(s\) \[3\].*logits"):
        bad = probs.copy()
        bad[3, 2] = 1.5
        make_rule("global").fit(bad, y_true)
    with pytest.raises(ValueError, match="0/1 multi-hot"):
        make_rule("global").fit(probs, y_true * 2)
    with pytest.raises(ValueError, match="metric"):
        make_rule("global", metric="macro").fit(probs, y_true)
    with pytest.raises(ValueError, match="min_labels <= max_labels"):
        make_rule("topk", min_labels=5, max_labels=2).fit(probs, y_true)


# ---------------------------------------------------------------- nested CV

class _SpyRule(decision.GlobalThreshold):
    """Records which rows (by the row id hidden in column 0) each fit saw and each predict got."""
    log: list = []

    def _fit(self, probs, y_true):
        super()._fit(probs, y_true)
        self.seen_ = set(np.rint(probs[:, 0] * 1000).astype(int))

    def _predict(self, probs):
        _SpyRule.log.append((self.seen_, set(np.rint(probs[:, 0] * 1000).astype(int))))
        return super()._predict(probs)


def test_nested_cv_never_fits_on_the_fold_it_predicts(monkeypatch):
    monkeypatch.setitem(RULES, "_spy", _SpyRule)  # registered for this test only
    probs, y_true = _problem(12, n_images=90)
    probs[:, 0] = np.arange(90) / 1000  # row ids survive the float32 round trip at this scale
    folds = np.arange(90) % 3
    _SpyRule.log.clear()
    predicted = nested_cv_predict("_spy", probs, y_true, folds)
    assert len(_SpyRule.log) == 3
    for seen, asked in _SpyRule.log:
        assert not seen & asked
        assert seen | asked == set(range(90))
    # and each fold's rows equal a rule fitted by hand on the other folds
    for fold in range(3):
        held = folds == fold
        by_hand = make_rule("global").fit(probs[~held], y_true[~held]).predict(probs[held])
        np.testing.assert_array_equal(predicted[held], by_hand)


def test_nested_cv_needs_two_folds_and_one_per_row():
    probs, y_true = _problem(13)
    with pytest.raises(ValueError, match="2 distinct folds"):
        nested_cv_predict("global", probs, y_true, np.zeros(len(probs)))
    with pytest.raises(ValueError, match="one fold id per row"):
        nested_cv_predict("global", probs, y_true, np.zeros(3))


# ---------------------------------------------------------------- the decide stage

def _tiny_run(tmp_path, stackers=("mean",)):
    """A label map with groups, a manifest, folds, one member and the given stackers."""
    label_ids = [str(i) for i in range(1, 13)]
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    pd.DataFrame({"labelId": label_ids, "labelName": [f"label {i}" for i in label_ids],
                  "taskId": "1", "taskName": list(GROUPS_12)}).to_csv(data_dir / "label_map.csv", index=False)
    probs, y_true = _problem(14, n_images=90)
    test_probs, _ = _problem(15, n_images=20)
    train_ids = [f"img{i}" for i in range(90)]
    test_ids = [str(1000 + i) for i in range(20)]
    run = RunDir(tmp_path / "run")
    labels = [" ".join(np.array(label_ids)[row]) for row in y_true]
    manifest = make_manifest([  # not the OOF's order: joins by id
        {"imageId": image_id, "split": split, "labels": text, "path": f"{image_id}.jpg", "width": 8, "height": 8,
         "mode": "RGB", "bytes": 100, "status": "ok", "reason": ""}
        for image_id, split, text in zip(train_ids[::-1] + test_ids, ["train"] * 90 + ["test"] * 20,
                                         labels[::-1] + [""] * 20)])
    atomic.write_parquet(run.manifest, manifest)
    write_folds(run.folds, train_ids, np.arange(90) % 3)
    shuffled = np.random.default_rng(0).permutation(90)
    for folder, noise in [(run.member_dir("m1"), 0.3)] + [(run.stacker_dir(s), 0.0) for s in stackers]:
        oof = np.clip(probs + noise * np.random.default_rng(1).random(probs.shape), 0, 1)
        predictions.write(folder / "oof.parquet",
                          predictions.make_table(np.array(train_ids)[shuffled], oof[shuffled], label_ids))
        predictions.write(folder / "test.parquet", predictions.make_table(test_ids, test_probs, label_ids))
        mark_done(folder, "source-config", run.folds_hash())  # finished, as its stage would leave it
    config = PipelineConfig(members=[MemberConfig(name="m1")], stack=StackConfig(stackers=list(stackers)),
                            decision=DecisionConfig(rules=["global", "per_label", "expected_f1", "group", "topk"]))
    return StageContext(config=config, run=run, data_dir=data_dir), y_true, train_ids


def test_run_decide_on_a_tiny_run(tmp_path):
    ctx, y_true, train_ids = _tiny_run(tmp_path)
    summary = run_decide(ctx)
    out = ctx.run.decision_dir
    scores = pd.read_csv(out / "scores.csv")
    assert list(scores.columns) == ["source", "kind", "rule", "micro_f1", "samples_f1",
                                    "cardinality_error", "seconds"]
    assert len(scores) == 2 * 5 and set(scores["kind"]) == {"member", "stacker"}
    stacker_rows = scores[scores["kind"] == "stacker"]
    best = stacker_rows.loc[stacker_rows["micro_f1"].idxmax()]
    rule = atomic.read_json(out / "rule.json")
    assert (rule["source"], rule["rule"]) == (best["source"], best["rule"]) == (summary["source"], summary["rule"])
    assert rule["score"] == pytest.approx(best["micro_f1"])
    # oof_labels.csv holds the nested-CV label sets: rescoring them gives the reported score
    oof_labels = pd.read_csv(out / "oof_labels.csv", dtype=str, keep_default_na=False).set_index("imageId")
    label_ids = [str(i) for i in range(1, 13)]
    predicted = np.array([[lid in text.split() for lid in label_ids]
                          for text in oof_labels.reindex(train_ids)["labels"]])
    assert metrics.micro_f1(y_true, predicted) == pytest.approx(best["micro_f1"])
    test_labels = pd.read_csv(out / "test_labels.csv", dtype=str, keep_default_na=False)
    counts = test_labels["labels"].str.split().str.len()
    assert len(test_labels) == 20 and counts.between(1, 23).all()
    assert (out / "DONE.json").exists()
    # the honest headline: 3 folds, the outer loop chose once per fold among every candidate
    honest = rule["honest"]
    assert honest == atomic.read_json(out / "selection.json") and honest["n_candidates"] == len(scores)
    assert [c["fold"] for c in honest["per_fold"]] == [0, 1, 2]
    assert 0 < honest["micro_f1"] <= 1 and summary["honest_micro_f1"] == honest["micro_f1"]
    # beside vs_mean.csv: the honest headline against the best member's best nested score
    versus = pd.read_csv(out / "vs_best_member.csv").iloc[0]
    member_rows = scores[scores["kind"] == "member"]
    assert versus["best_member_nested"] == pytest.approx(member_rows["micro_f1"].max())
    assert versus["headline"] == pytest.approx(honest["micro_f1"])
    assert versus["delta_micro_f1"] == pytest.approx(honest["micro_f1"] - member_rows["micro_f1"].max())
    assert honest["vs_best_member"]["best_member"] == versus["best_member"] == "m1"
    # a rerun skips; a redo recomputes: new files and a new DONE record, not only a DONE.json
    stamps = {name: (out / name).stat().st_mtime_ns for name in ("scores.csv", "rule.json", "selection.json")}
    finished = atomic.read_json(out / "DONE.json")["finished_at"]
    run_decide(ctx)
    assert {name: (out / name).stat().st_mtime_ns for name in stamps} == stamps
    ctx.redo = {"decide"}
    run_decide(ctx)
    assert all((out / name).stat().st_mtime_ns != stamp for name, stamp in stamps.items())
    assert atomic.read_json(out / "DONE.json")["finished_at"] > finished
    redone = pd.read_csv(out / "scores.csv")
    assert redone.drop(columns="seconds").equals(scores.drop(columns="seconds"))  # recomputed, and deterministic


def test_run_decide_compares_each_stacker_with_the_mean_and_skips_the_outer_loop_below_3_folds(tmp_path):
    ctx, _, train_ids = _tiny_run(tmp_path, stackers=("mean", "other"))
    write_folds(ctx.run.folds, train_ids, np.arange(90) % 2)
    for source in ("m1", "mean", "other"):  # the sources were made under the new folds
        folder = ctx.run.member_dir(source) if source == "m1" else ctx.run.stacker_dir(source)
        mark_done(folder, "source-config", ctx.run.folds_hash())
    ctx.config.decision.rules = ["global", "topk"]
    summary = run_decide(ctx)
    assert summary["honest_micro_f1"] is None
    assert atomic.read_json(ctx.run.decision_dir / "rule.json")["honest"]["method"] is None
    table = pd.read_csv(ctx.run.decision_dir / "vs_mean.csv")
    assert list(table["source"]) == ["other", "other"] and list(table["rule"]) == ["global", "topk"]
    assert (table["delta_micro_f1"] == 0).all()  # the fixture gives both stackers the same OOF


def test_run_decide_falls_back_to_members_without_stackers(tmp_path):
    ctx, _, _ = _tiny_run(tmp_path, stackers=())
    ctx.config.decision.rules = ["global", "topk"]
    summary = run_decide(ctx)
    assert summary["source"] == "m1"
    assert set(pd.read_csv(ctx.run.decision_dir / "scores.csv")["kind"]) == {"member"}


def test_run_decide_names_ids_missing_from_the_folds(tmp_path):
    ctx, _, train_ids = _tiny_run(tmp_path)
    write_folds(ctx.run.folds, train_ids[5:], np.arange(85) % 3)
    with pytest.raises(ValueError, match="img0.*no fold"):
        run_decide(ctx)


def test_run_decide_rejects_an_unknown_rule_before_any_work(tmp_path):
    ctx, _, _ = _tiny_run(tmp_path)
    ctx.config.decision.rules = ["global", "treshold"]
    with pytest.raises(ValueError, match="valid decision rules"):
        run_decide(ctx)
    assert not (ctx.run.decision_dir / "scores.csv").exists()


def test_run_decide_names_ids_missing_from_the_manifest(tmp_path):
    ctx, _, _ = _tiny_run(tmp_path)
    manifest = pd.read_parquet(ctx.run.manifest)
    atomic.write_parquet(ctx.run.manifest, manifest[manifest["imageId"] != "img7"])
    with pytest.raises(ValueError, match="oof.parquet.*img7"):
        run_decide(ctx)
