"""Fold-score comparison, ablation and the HTML report on synthetic run directories built here
following docs/CONTRACTS.md."""
from __future__ import annotations

import re
import statistics

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from fashion_stack.core import atomic, predictions
from fashion_stack.core.config import AblationConfig, MemberConfig, PipelineConfig, StackConfig, dump_config
from fashion_stack.core.context import StageContext
from fashion_stack.core.metrics import score_probabilities
from fashion_stack.core.rundir import RunDir, mark_done
from fashion_stack.datasets.folds import write_folds
from fashion_stack.datasets.manifest import make_manifest
from fashion_stack.reports import ablation
from fashion_stack.reports.ablation import paired_bootstrap_interval, run_ablate
from fashion_stack.reports.compare import fold_score_table, paired_differences, run_compare
from fashion_stack.reports.html import SECTIONS, run_report
from fashion_stack.reports.run_data import RunDataError

LABEL_IDS = [str(i) for i in range(1, 7)]
GROUPS = ["category", "category", "category", "color", "color", "gender"]
MEMBERS = ["m_a", "m_b", "m_c"]
# per fold: micro_f1@best, samples_f1@best, loss; m_b has the best mean micro-F1
FOLD_SCORES = {
    "m_a": [(0.60, 0.55, 0.30), (0.62, 0.57, 0.29), (0.58, 0.52, 0.31)],
    "m_b": [(0.65, 0.60, 0.27), (0.61, 0.58, 0.28), (0.66, 0.62, 0.26)],
    "m_c": [(0.50, 0.45, 0.35), (0.55, 0.50, 0.33), (0.52, 0.47, 0.34)],
}
N_POOL, K = 72, 3
TEST_USABLE = ["0", "1", "2", "4"]  # test image 3 is missing


def build_run(tmp_path, stages=("prepare", "folds", "members", "stack", "decide")) -> StageContext:
    """A run directory holding the artifacts of `stages`, with noisy-truth member predictions."""
    rng = np.random.default_rng(0)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "label_map.csv").write_text("labelId,labelName,taskId,taskName\n" + "".join(
        f"{lab},name {lab},{g},{g}\n" for lab, g in zip(LABEL_IDS, GROUPS)))
    config = PipelineConfig(name="synthetic", members=[MemberConfig(name=m) for m in MEMBERS],
                            stack=StackConfig(stackers=["mean"]), ablation=AblationConfig(bootstrap=200))
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    atomic.write_text(run.root / "config.yaml", dump_config(config))
    pool = [f"p{i}" for i in range(N_POOL)]
    truth = (rng.random((N_POOL, len(LABEL_IDS))) < np.linspace(0.2, 0.6, len(LABEL_IDS))).astype(np.uint8)
    truth[:, 5] = 0  # a label that never occurs
    truth[truth.sum(axis=1) == 0, 0] = 1
    if "prepare" in stages:
        make_manifest(_manifest_rows(pool, truth)).to_parquet(run.manifest)
    if "folds" in stages:
        write_folds(run.folds, pool, np.arange(N_POOL) % K)
    qualities = {"m_a": 1.2, "m_b": 2.0, "m_c": 0.6}
    oof = {}
    for member in MEMBERS:
        logits = qualities[member] * (2.0 * truth - 1) + rng.normal(0, 1.2, truth.shape)
        oof[member] = predictions.make_table(pool, 1 / (1 + np.exp(-logits)), LABEL_IDS)
        if "members" in stages:
            predictions.write(run.member_dir(member) / "oof.parquet", oof[member])
            predictions.write(run.member_dir(member) / "test.parquet", predictions.make_table(
                TEST_USABLE, rng.random((len(TEST_USABLE), len(LABEL_IDS))), LABEL_IDS))
            mark_done(run.member_dir(member) / "fold0", "members-hash", run.folds_hash())
            atomic.write_json(run.member_dir(member) / "scores.json", _member_scores(member, truth, oof[member]))
            mark_done(run.member_dir(member), "members-hash", run.folds_hash(),  # finished, as its stage leaves it
                      artifacts=["oof.parquet", "test.parquet", "scores.json"])
    mean = predictions.make_table(pool, np.mean([oof[m].to_numpy() for m in MEMBERS], axis=0), LABEL_IDS)
    if "stack" in stages:
        predictions.write(run.stacker_dir("mean") / "oof.parquet", mean)
        atomic.write_json(run.stacker_dir("mean") / "scores.json",
                          {"stacker": "mean", "folds": [], "oof": score_probabilities(truth, mean.to_numpy())})
    if "decide" in stages:
        _write_decision(run, pool, mean.to_numpy() >= 0.4)
    return StageContext(config=config, run=run, data_dir=data_dir)


def _manifest_rows(pool, truth):
    rows = []
    for i, image_id in enumerate(pool):
        labels = " ".join(lab for lab, on in zip(LABEL_IDS, truth[i]) if on)
        rows.append(_row(image_id, "train" if i < 54 else "validation", labels, "ok"))
    rows.append(_row("bad1", "train", "1 2", "unreadable"))
    rows += [_row(str(i), "test", "", "missing" if i == 3 else "ok") for i in range(5)]
    return rows


def _row(image_id, split, labels, status):
    return dict(imageId=image_id, split=split, labels=labels, path=f"/img/{image_id}.jpg", width=8, height=8,
                mode="RGB", bytes=100, status=status, reason="" if status == "ok" else status)


def _member_scores(member, truth, oof):
    folds = [{"fold": k, "micro_f1@best": mi, "samples_f1@best": sa, "loss": lo, "micro_f1@0.5": mi,
              "best_threshold": 0.4, "mAP": 0.5, "n_images": N_POOL // K, "seconds": 1.0,
              "train_images_per_s": 10.0} for k, (mi, sa, lo) in enumerate(FOLD_SCORES[member])]
    return {"member": member, "folds": folds, "oof": score_probabilities(truth, oof.to_numpy())}


def _write_decision(run, pool, oof_labels):
    def label_csv(ids, matrix):
        return pd.DataFrame({"imageId": ids, "labels": [
            " ".join(lab for lab, on in zip(LABEL_IDS, row) if on) or "1" for row in matrix]})
    atomic.write_csv(run.decision_dir / "oof_labels.csv", label_csv(pool, oof_labels))
    atomic.write_csv(run.decision_dir / "test_labels.csv", label_csv(TEST_USABLE, oof_labels[:4]))
    atomic.write_json(run.decision_dir / "rule.json", {"source": "mean", "kind": "stacker", "rule": "global", "metric": "micro",
                                                       "params": {"threshold": 0.4}, "score": 0.71})
    scores = pd.DataFrame([(s, k, r, 0.6 + 0.01 * i, 0.55, 1.1, 0.1) for i, (s, k, r) in enumerate(
        [("m_b", "member", "global"), ("mean", "stacker", "per_label"), ("mean", "stacker", "global")])],
        columns=["source", "kind", "rule", "micro_f1", "samples_f1", "cardinality_error", "seconds"])
    atomic.write_csv(run.decision_dir / "scores.csv", scores)
    mark_done(run.decision_dir, "decision-hash", run.folds_hash(),
              artifacts=["rule.json", "scores.csv", "oof_labels.csv", "test_labels.csv"])


# ---- fold-score comparison -------------------------------------------------------------

def test_fold_score_table_equals_hand_computation(tmp_path):
    ctx = build_run(tmp_path, stages=("members",))
    table = fold_score_table(ctx.run)
    assert table.attrs["best_member"] == "m_b"
    for member, folds in FOLD_SCORES.items():
        rows = table[table["member"] == member].set_index("fold")
        for column, values in zip(["micro_f1", "samples_f1", "loss"], zip(*folds)):
            best_values = [f[["micro_f1", "samples_f1", "loss"].index(column)] for f in FOLD_SCORES["m_b"]]
            diffs = [v - b for v, b in zip(values, best_values)]
            assert [rows.loc[str(k), column] for k in range(K)] == pytest.approx(values)
            assert rows.loc["mean", column] == pytest.approx(statistics.mean(values))
            assert rows.loc["std", column] == pytest.approx(statistics.stdev(values))
            assert [rows.loc[str(k), f"d_{column}"] for k in range(K)] == pytest.approx(diffs)
            assert rows.loc["mean", f"d_{column}"] == pytest.approx(statistics.mean(diffs))
            assert rows.loc["std", f"d_{column}"] == pytest.approx(statistics.stdev(diffs))
        assert rows["best"].all() == (member == "m_b")


def test_paired_differences_count_folds_where_member_beats_best(tmp_path):
    differences = paired_differences(fold_score_table(build_run(tmp_path, stages=("members",)).run))
    m_a = differences[(differences["member"] == "m_a")].set_index("metric")
    assert set(differences["member"]) == {"m_a", "m_c"} and set(differences["vs"]) == {"m_b"}
    assert m_a.loc["micro_f1", "folds_better"] == 1  # fold 1: 0.62 > 0.61
    assert m_a.loc["loss", "folds_better"] == 0
    assert m_a.loc["micro_f1", "fold1"] == pytest.approx(0.01)


def test_fold_score_table_refuses_members_with_different_folds(tmp_path):
    ctx = build_run(tmp_path, stages=("members",))
    path = ctx.run.member_dir("m_c") / "scores.json"
    record = atomic.read_json(path)
    record["folds"] = record["folds"][:2]
    atomic.write_json(path, record)
    with pytest.raises(RunDataError, match=r"m_c/scores.json has folds \[0, 1\] but the best member 'm_b'"):
        fold_score_table(ctx.run)


def test_fold_score_table_without_members_says_which_stage(tmp_path):
    with pytest.raises(RunDataError, match="run --stages members"):
        fold_score_table(build_run(tmp_path, stages=()).run)


def test_run_compare_writes_its_artifacts(tmp_path):
    ctx = build_run(tmp_path, stages=("prepare", "folds", "members"))
    summary = run_compare(ctx)
    assert summary["best_member"] == "m_b" and summary["members"] == 3
    report = ctx.run.report_dir
    floor = json.loads((report / "frequency_floor.json").read_text())
    assert summary["frequency_floor"] == floor["oof"] and len(floor["folds"]) == len(floor["k"])
    assert "Frequency floor" in (report / "fold_scores.md").read_text()
    for name in ["fold_scores.csv", "fold_scores.md", "fold_scores.png", "paired_differences.csv"]:
        assert (report / name).stat().st_size > 0
    assert "Best member: **m_b**" in (report / "fold_scores.md").read_text()
    assert (report / "fold_scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- ablation ------------------------------------------------------------------------

def threshold_stand_in(rule_name, probs, y_true, folds, params):
    """A fixed-threshold decision with nested_cv_predict's signature: nothing to fit, so the
    expected labels are known exactly."""
    return np.asarray(probs) >= 0.5


def pool_truth(ctx) -> np.ndarray:
    """(images, labels) bool: the pool's labels, in the members' OOF row order."""
    manifest = pd.read_parquet(ctx.run.manifest).set_index("imageId")
    ids = list(predictions.read(ctx.run.member_dir(MEMBERS[0]) / "oof.parquet").index)
    return np.array([[lab in manifest.loc[i, "labels"].split() for lab in LABEL_IDS] for i in ids])


@pytest.fixture
def fixed_decision(monkeypatch):
    monkeypatch.setattr(ablation, "nested_cv_predict", threshold_stand_in)


def test_ablation_rows_and_scores_match_an_independent_computation(tmp_path, fixed_decision):
    ctx = build_run(tmp_path)
    summary = run_ablate(ctx)
    table = pd.read_csv(ctx.run.report_dir / "ablation.csv")
    assert summary["subsets"] == 7
    assert list(table["subset"]) == ["all members", "without m_a", "without m_b", "without m_c",
                                     "only m_a", "only m_b", "only m_c"]
    assert list(table["kind"]) == ["full"] + ["leave_one_out"] * 3 + ["single"] * 3
    oof = {m: predictions.read(ctx.run.member_dir(m) / "oof.parquet") for m in MEMBERS}
    truth = pool_truth(ctx)
    for _, row in table.iterrows():
        members = row["members"].split()
        labels = np.mean([oof[m].to_numpy() for m in members], axis=0) >= 0.5  # mean stacker
        assert row["micro_f1"] == pytest.approx(f1_score(truth, labels, average="micro"), abs=1e-6)
        assert row["samples_f1"] == pytest.approx(f1_score(truth, labels, average="samples", zero_division=0), abs=1e-6)
    full = table.iloc[0]
    assert (full["delta_micro_f1"], full["ci_low"], full["ci_high"]) == (0, 0, 0)
    assert table.loc[1:, "delta_micro_f1"].to_numpy() == pytest.approx(
        table.loc[1:, "micro_f1"].to_numpy() - full["micro_f1"])
    assert (table["ci_low"] <= table["delta_micro_f1"] + 1e-12).all()
    assert (table["delta_micro_f1"] <= table["ci_high"] + 1e-12).all()
    only_c = table[table["subset"] == "only m_c"].iloc[0]
    assert only_c["ci_high"] < 0  # the weakest member alone is clearly worse
    fold_deltas = only_c[[f"delta_fold{k}" for k in range(K)]].to_numpy(dtype=float)
    assert np.all(fold_deltas < 0)
    for name in ["ablation.md", "ablation.png"]:
        assert (ctx.run.report_dir / name).stat().st_size > 0


def test_ablation_refits_subsets_in_worker_processes_with_the_same_results(tmp_path, fixed_decision):
    tables = {}
    for workers in (1, 2):
        (tmp_path / f"workers{workers}").mkdir()
        ctx = build_run(tmp_path / f"workers{workers}")
        ctx.config.ablation.stacker, ctx.config.ablation.workers = "linear", workers  # a stacker that fits
        run_ablate(ctx)
        tables[workers] = pd.read_csv(ctx.run.report_dir / "ablation.csv")
    pd.testing.assert_frame_equal(tables[1], tables[2])
    # the linear stacker learnt something: not the members' mean
    mean = np.mean([predictions.read(ctx.run.member_dir(m) / "oof.parquet").to_numpy() for m in MEMBERS], axis=0)
    assert tables[2].loc[0, "micro_f1"] != pytest.approx(f1_score(pool_truth(ctx), mean >= 0.5, average="micro"),
                                                         abs=1e-9)


def test_ablation_leaves_each_group_out_as_a_whole(tmp_path, fixed_decision, caplog):
    ctx = build_run(tmp_path)
    ctx.config.ablation.groups = {"weak_pair": ["m_a", "m_c"], "everyone": list(MEMBERS)}
    summary = run_ablate(ctx)
    table = pd.read_csv(ctx.run.report_dir / "ablation.csv").set_index("subset")
    assert summary["subsets"] == 8  # the 7 rows above and one group; a group of every member has no row
    row = table.loc["without group weak_pair"]
    assert row["kind"] == "leave_group_out" and row["members"] == "m_b"
    # leaving the pair out is the same subset as keeping m_b alone, fitted independently above
    assert row["micro_f1"] == pytest.approx(table.loc["only m_b", "micro_f1"], abs=1e-12)
    assert "everyone" in caplog.text and "no row" in caplog.text


def test_ablation_group_names_absent_from_the_stack_are_listed(tmp_path, fixed_decision, caplog):
    ctx = build_run(tmp_path)  # an overlay that replaced the members list keeps its base's groups
    ctx.config.ablation.groups = {"typo": ["m_a", "m_x"], "gone": ["old_member"]}
    run_ablate(ctx)
    table = pd.read_csv(ctx.run.report_dir / "ablation.csv").set_index("subset")
    assert table.loc["without group typo", "members"] == "m_b m_c"
    assert "without group gone" not in table.index
    assert "ablation.groups.typo: ['m_x'] not in this run's stack" in caplog.text
    assert "ablation.groups.gone: none or all of its members" in caplog.text and "old_member" in caplog.text


def test_an_empty_ablation_group_is_refused_at_load(tmp_path):
    from fashion_stack.core.config import ConfigError, load_config
    path = tmp_path / "groups.yaml"
    path.write_text("name: x\nmembers: [{name: a}, {name: b}]\nablation: {groups: {pair: []}}\n")
    with pytest.raises(ConfigError, match=r"ablation.groups.pair is empty; list some of the config's members"):
        load_config(path)
    path.write_text("name: x\nmembers: [{name: a}, {name: b}]\nablation: {groups: {pair: [a, b]}}\n")
    assert load_config(path).ablation.groups == {"pair": ["a", "b"]}


def test_ablation_is_skipped_when_done_and_redone_on_request(tmp_path, fixed_decision, monkeypatch):
    ctx = build_run(tmp_path)
    run_ablate(ctx)
    assert run_ablate(ctx)["up_to_date"] is True
    ctx.redo = {"ablate"}
    assert run_ablate(ctx)["subsets"] == 7


def test_ablation_with_the_real_decision_rule(tmp_path):
    ctx = build_run(tmp_path)
    summary = run_ablate(ctx)
    table = pd.read_csv(ctx.run.report_dir / "ablation.csv")
    assert summary["rule"] == "global" and len(table) == 7
    assert table.iloc[0]["delta_micro_f1"] == 0


def test_ablation_without_decision_says_which_stage(tmp_path):
    ctx = build_run(tmp_path, stages=("prepare", "folds", "members"))
    with pytest.raises(RunDataError, match="run --stages decide"):
        run_ablate(ctx)


def brute_force_interval(truth, labels, reference, folds, n, seed):
    rng = np.random.default_rng(seed)
    deltas = []
    for _ in range(n):
        rows = np.concatenate([rng.choice(np.flatnonzero(folds == f), size=(folds == f).sum())
                               for f in np.unique(folds)])
        deltas.append(f1_score(truth[rows], labels[rows], average="micro")
                      - f1_score(truth[rows], reference[rows], average="micro"))
    return np.percentile(deltas, [2.5, 97.5])


def test_paired_bootstrap_agrees_with_a_brute_force_resampling():
    rng = np.random.default_rng(1)
    truth = rng.random((90, 5)) < 0.4
    reference = truth ^ (rng.random(truth.shape) < 0.15)
    labels = truth ^ (rng.random(truth.shape) < 0.25)
    folds = np.arange(90) % 3
    low, high = paired_bootstrap_interval(truth, labels, reference, folds, "micro", 3000, seed=0)
    expected = brute_force_interval(truth, labels, reference, folds, 800, seed=5)
    assert low == pytest.approx(expected[0], abs=0.015) and high == pytest.approx(expected[1], abs=0.015)
    assert low < high < 0
    assert paired_bootstrap_interval(truth, labels, labels, folds) == (0.0, 0.0)


# ---- HTML report ---------------------------------------------------------------------

def test_report_renders_every_section(tmp_path, fixed_decision):
    ctx = build_run(tmp_path)
    run_compare(ctx)
    run_ablate(ctx)
    summary = run_report(ctx)
    page = (ctx.run.report_dir / "index.html").read_text()
    assert summary["not_run"] == []
    assert "not run" not in page and "could not render" not in page
    for anchor, title, _ in SECTIONS:
        assert f'<section id="{anchor}"><h2>{title}</h2>' in page
    images = re.findall(r'<img src="([^"]+)"', page)
    assert set(images) == {"label_frequencies.png", "fold_scores.png", "stacking_gain.png", "ablation.png",
                           "cardinality.png", "threshold_curve.png"}
    for image in images:
        assert (ctx.run.report_dir / image).read_bytes()[:4] == b"\x89PNG"
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert "name 5" in page  # a best/worst label row carries the label name
    assert "Best member: <b>m_b</b>" in page


def test_report_marks_missing_inputs_not_run(tmp_path):
    ctx = build_run(tmp_path, stages=("prepare", "members"))
    summary = run_report(ctx)
    page = (ctx.run.report_dir / "index.html").read_text()
    assert summary["not_run"] == ["folds", "stacking", "decision", "ablation", "per-label", "cardinality",
                                  "threshold"]
    assert "fold_scores.csv is missing (made by --stages compare)" in page
    assert "rule.json is missing (made by --stages decide)" in page
    assert "ensemble/*/scores.json are missing (made by --stages stack)" in page


def test_report_on_an_empty_run_still_renders(tmp_path):
    ctx = build_run(tmp_path, stages=())
    summary = run_report(ctx)
    assert summary["not_run"] == [a for a, _, _ in SECTIONS if a != "config"]
    assert "manifest.parquet not found" in (ctx.run.report_dir / "index.html").read_text()
