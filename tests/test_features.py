"""Stacker inputs: the join by imageId and its refusals, the per-label features against
brute-force references, and the features stage on a tiny run."""
from __future__ import annotations

import numpy as np
import pytest

from fashion_stack.core import atomic
from fashion_stack.core.rundir import read_done
from fashion_stack.features.stacker_inputs import (StackerInputError, join_members, label_features,
                                     select_context_labels)
from fashion_stack.features.stage import run_features
from stacking_fixtures import (GROUPS, LABEL_IDS, correlated_truth, make_run, member_tables,
                                     noisy_members)

IDS = [f"img{i}" for i in range(40)]


@pytest.fixture
def tables():
    return member_tables(noisy_members(correlated_truth(len(IDS))), IDS)


def test_join_aligns_by_image_id_so_reordered_rows_give_identical_features(tables):
    reference = join_members(tables, LABEL_IDS, label_groups=GROUPS)
    shuffled = dict(tables, b=tables["b"].sample(frac=1.0, random_state=3))
    assert list(shuffled["b"].index) != IDS
    joined = join_members(shuffled, LABEL_IDS, label_groups=GROUPS)
    assert joined.image_ids == tuple(IDS)
    np.testing.assert_array_equal(joined.probs, reference.probs)
    for j in range(len(LABEL_IDS)):
        np.testing.assert_array_equal(label_features(joined, j, [0, 1])[0], label_features(reference, j, [0, 1])[0])
    np.testing.assert_array_equal(joined.probs[:, 1, :], tables["b"].loc[IDS].to_numpy())


def test_join_follows_expected_ids_order(tables):
    order = IDS[::-1]
    joined = join_members(tables, LABEL_IDS, expected_ids=order)
    assert joined.image_ids == tuple(order)
    np.testing.assert_array_equal(joined.probs[:, 0, :], tables["a"].loc[order].to_numpy())


@pytest.mark.parametrize("damage, message", [
    (lambda t: t.drop(index=["img3", "img7"]), r"member 'b'.*missing 2 \['img3', 'img7'\]"),
    (lambda t: t.rename(index={"img5": "stranger"}), r"member 'b'.*missing 1 \['img5'\], extra 1 \['stranger'\]"),
    (lambda t: t.iloc[[0] + list(range(len(t)))], r"member 'b'.*duplicated imageIds \['img0'\]"),
    (lambda t: _set_cell(t, "img9", np.nan), r"member 'b'.*non-finite.*\['img9'\]"),
    (lambda t: _set_cell(t, "img2", -np.inf), r"member 'b'.*non-finite.*\['img2'\]"),
    (lambda t: t.rename(columns={"8": "99"}), r"member 'b'.*label columns.*missing \['8'\].*extra \['99'\]"),
    (lambda t: t[list(reversed(t.columns))], r"member 'b'.*label columns.*order"),
])
def test_join_refuses_damaged_member_naming_member_and_ids(tables, damage, message):
    tables["b"] = damage(tables["b"]).astype(np.float32)
    tables["b"].index.name = "imageId"
    with pytest.raises(StackerInputError, match=message):
        join_members(tables, LABEL_IDS)


def _set_cell(table, image_id, value):
    table = table.copy()
    table.loc[image_id, "3"] = value
    return table


def test_join_refuses_ids_other_than_expected(tables):
    with pytest.raises(StackerInputError, match=r"member 'a'.*missing 1 \['img40'\]"):
        join_members(tables, LABEL_IDS, expected_ids=IDS + ["img40"])


def test_join_refuses_mismatched_fold_hashes(tables):
    with pytest.raises(StackerInputError, match=r"different fold assignments \(a: h1, b: h2, c: h1\)"):
        join_members(tables, LABEL_IDS, {"a": "h1", "b": "h2", "c": "h1"})
    with pytest.raises(StackerInputError, match="the run's folds.csv has h0"):
        join_members(tables, LABEL_IDS, {"a": "h1", "b": "h1", "c": "h1"}, expected_folds_hash="h0")
    join_members(tables, LABEL_IDS, {"a": "h1", "b": "h1", "c": "h1"}, expected_folds_hash="h1")


def test_label_features_match_a_brute_force_reference(tables):
    stack = join_members(tables, LABEL_IDS, label_groups=GROUPS)
    j, context = 4, [0, 7]
    X, names = label_features(stack, j, context)
    assert names == ["member:a", "member:b", "member:c", "mean", "max", "spread", "group_rank",
                     "group_top", "group_sum", "expected_count", "context:1", "context:8"]
    same_group = [k for k, g in enumerate(GROUPS) if g == GROUPS[j]]
    for i in range(len(IDS)):
        member_probs = [float(tables[m].loc[IDS[i], LABEL_IDS[j]]) for m in "abc"]
        mean_row = [np.mean([tables[m].loc[IDS[i], lid] for m in "abc"]) for lid in LABEL_IDS]
        group_means = [mean_row[k] for k in same_group]
        expected = member_probs + [np.mean(member_probs), max(member_probs), np.std(member_probs),
                                   sum(g > mean_row[j] for g in group_means), max(group_means),
                                   sum(group_means), sum(mean_row), mean_row[0], mean_row[7]]
        np.testing.assert_allclose(X[i], expected, rtol=1e-5, atol=1e-6)


def test_label_features_without_groups_omit_group_columns(tables):
    X, names = label_features(join_members(tables, LABEL_IDS), 0)
    assert not any(name.startswith("group") for name in names) and X.shape == (len(IDS), len(names))


def test_context_labels_are_the_most_correlated_other_labels():
    y = correlated_truth(400, seed=2)
    stack = join_members(member_tables(noisy_members(y, qualities=(3.0, 3.0, 3.0)), range(400)), LABEL_IDS)
    context = select_context_labels(stack, y, 2)
    assert set(context[2]) == {0, 1}  # label 2 = label 0 AND label 1
    corr = np.abs(np.corrcoef(y.T.astype(float), stack.mean.T)[:8, 8:])
    np.fill_diagonal(corr, -1)
    for label in range(8):  # the chosen labels carry the top correlations (ties within float32 noise)
        np.testing.assert_allclose(corr[label, context[label]], np.sort(corr[label])[::-1][:2], atol=1e-5)


def test_run_features_validates_the_run_and_records_its_summary(tmp_path):
    ctx = make_run(tmp_path)
    summary = run_features(ctx)
    assert summary == {"members": 2, "member_names": ["a", "b"], "oof_rows": 120, "test_rows": 30}
    assert read_done(ctx.run.root / "stages" / "features")["summary"] == summary
    assert run_features(ctx)["up_to_date"]  # nothing changed: skipped


def test_run_features_refuses_a_member_trained_on_other_folds(tmp_path):
    ctx = make_run(tmp_path)
    atomic.write_json(ctx.run.member_dir("b") / "fold0" / "DONE.json", {"config_hash": "x", "folds_hash": "stale"})
    with pytest.raises(StackerInputError, match=r"b: stale.*the run's folds.csv has"):
        run_features(ctx)
