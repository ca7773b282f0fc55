"""The decide stage: score every decision rule on every OOF source by nested CV, keep the best.

Sources are the members' OOF and the stackers' second-level OOF. Each rule is scored on a
source by fitting it on the other folds' rows and predicting each fold in turn (the run's own
folds), so no score comes from a row that helped fit the rule. The best stacker source + rule
(members only when no stacker exists) is then fitted on that source's whole OOF and applied to
its test predictions.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fashion_stack.core import atomic, predictions
from fashion_stack.core.config import as_plugin_spec
from fashion_stack.core.context import StageContext
from fashion_stack.core.labels import LabelSpace
from fashion_stack.core.log import progress
from fashion_stack.core.metrics import METRIC_COLUMNS, cardinality_error, f1_column, micro_f1, samples_f1
from fashion_stack.core.rundir import is_done, is_finished, mark_done, upstream_digest
from fashion_stack.datasets.folds import read_folds
from fashion_stack.datasets.manifest import pool_labels, read_manifest
from fashion_stack.ensemble.decision import RULES, make_rule, nested_cv_predict
from fashion_stack.features.stage import pool_labels_digest
from fashion_stack.ensemble.selection import (CandidateCounts, compare_with_reference, label_set_counts, outer_loop_choice,
                                pairwise_cv_counts)

STAGE = "decide"
MADE_BY = {"member": "members", "stacker": "stack"}  # the stage that makes each kind of source
REFERENCE_STACKER = "mean"  # what every other stacker is compared with, pair by pair


@dataclass(frozen=True)
class Source:
    name: str
    kind: str  # "member" | "stacker"
    folder: Path

    @property
    def oof(self) -> Path:
        return self.folder / "oof.parquet"

    @property
    def test(self) -> Path:
        return self.folder / "test.parquet"


def run_decide(ctx: StageContext) -> dict:
    out_dir = ctx.run.decision_dir
    config_hash = ctx.config.section_hash("decision")
    folds_hash = ctx.run.folds_hash()
    # every candidate source's recorded hash and the pool's labels are inputs (core.lineage): a new
    # or refitted member or stacker, or an edited label, makes the decision out of date
    # (recomputed); a changed decision config needs --redo decide
    inputs_hash = decision_inputs(ctx, _candidate_sources(ctx))
    if is_done(out_dir, config_hash, folds_hash, redo=ctx.redo_stage(STAGE), inputs_hash=inputs_hash):
        ctx.logger(STAGE).info("decision already done under this config; skipped")
        return {**_summary(atomic.read_json(out_dir / "rule.json"), out_dir), "up_to_date": True}
    label_space = ctx.label_space()
    rules = configured_rules(ctx)
    params = {name: rule_params(spec, ctx, label_space) for name, spec in rules.items()}  # bad names or settings fail now
    sources = find_sources(ctx)
    manifest = read_manifest(ctx.run.manifest)
    fold_table = read_folds(ctx.run.folds)
    rows, counts = [], []
    outer_loop = _outer_loop_wanted(ctx, fold_table)
    pool_ids = None
    for source in progress(sources, desc="decide: sources", disable=len(sources) < 2):
        oof = predictions.read(source.oof, label_space.label_ids)
        # every candidate's per-image counts must line up for the outer loop and the paired comparisons
        pool_ids = oof.index if pool_ids is None else pool_ids
        oof = _same_images(oof, pool_ids, source)
        y_true = truth_for(manifest, oof.index, label_space, ctx.config.data.pool, where=str(source.oof))
        fold_of = folds_for(fold_table, oof.index, where=str(source.oof))
        probs = oof.to_numpy()
        for rule_name in params:
            start = time.perf_counter()
            predicted = nested_cv_predict(rule_name, probs, y_true, fold_of, params[rule_name])
            rows.append(_score_row(source, rule_name, y_true, predicted, time.perf_counter() - start))
            inner = pairwise_cv_counts(rule_name, probs, y_true, fold_of, params[rule_name]) if outer_loop else None
            counts.append(CandidateCounts(source.name, source.kind, rule_name, label_set_counts(y_true, predicted), inner))
            ctx.logger(STAGE).info("%s %s: micro-F1 %.4f, samples-F1 %.4f", source.name, rule_name,
                                   rows[-1]["micro_f1"], rows[-1]["samples_f1"])
    scores = pd.DataFrame(rows)
    atomic.write_csv(out_dir / "scores.csv", scores)
    n_true = y_true.sum(axis=1)
    honest = _honest_headline(ctx, counts, n_true, fold_of, outer_loop)
    if honest.get("method") is not None:
        honest["vs_best_member"] = _write_comparison_with_best_member(ctx, counts, honest, n_true, fold_of)
        atomic.write_json(out_dir / "selection.json", honest)
    _write_comparison_with_mean(ctx, counts, n_true, fold_of)
    record = _apply_best(ctx, choose_best(scores, ctx.config.decision.metric), sources, label_space,
                         manifest, fold_table, honest=honest)
    mark_done(out_dir, config_hash, folds_hash, inputs_hash=inputs_hash, source=record["source"], rule=record["rule"],
              metric=record["metric"], score=record["score"],
              artifacts=["rule.json", "scores.csv", "selection.json", "oof_labels.csv", "test_labels.csv"])
    return _summary(record, out_dir)


def _outer_loop_wanted(ctx: StageContext, fold_table: pd.Series) -> bool:
    if not ctx.config.decision.outer_loop:
        ctx.logger(STAGE).info("decision.outer_loop is off: the chosen candidate's score is the best of "
                               "the candidates' nested-CV scores, not an honest estimate")
        return False
    if fold_table.nunique() < 3:
        ctx.logger(STAGE).info("only %d folds: the outer loop needs 3 (one scored, two to choose on); "
                               "no honest headline for the chosen candidate", fold_table.nunique())
        return False
    return True


def _same_images(oof: pd.DataFrame, pool_ids: pd.Index, source: Source) -> pd.DataFrame:
    """`oof` in `pool_ids` order; refused, naming the source and ids, when its images differ."""
    if len(oof.index) != len(pool_ids) or not oof.index.isin(pool_ids).all():
        missing, extra = pool_ids.difference(oof.index), oof.index.difference(pool_ids)
        raise ValueError(f"{source.oof}: its imageIds differ from the first source's (missing {list(missing[:10])}, "
                         f"extra {list(extra[:10])}); every source must predict the same pool: rerun it with --redo")
    return oof.reindex(pool_ids)


def _honest_headline(ctx: StageContext, counts: list, n_true, fold_of, outer_loop: bool) -> dict:
    """decision/selection.json and the record for rule.json: the chosen candidate's score from the
    outer loop (ensemble.selection), or why there is none."""
    metric = ctx.config.decision.metric
    if not outer_loop:
        honest = {"method": None, "reason": "outer loop off or fewer than 3 folds"}
    else:
        honest = {"method": "outer loop: for each fold, the whole (source, rule) choice repeated on the "
                            "other folds, then that choice scores the fold",
                  **outer_loop_choice(counts, n_true, fold_of, metric, choose_best)}
        ctx.logger(STAGE).info("honest headline (outer loop over %d candidates): micro-F1 %.4f, samples-F1 %.4f; "
                               "chosen per fold: %s", honest["n_candidates"], honest["micro_f1"], honest["samples_f1"],
                               [f"{c['source']}+{c['rule']}" for c in honest["per_fold"]])
    atomic.write_json(ctx.run.decision_dir / "selection.json", honest)
    return honest


def headline_counts(counts: list, honest: dict, fold_of) -> np.ndarray:
    """Per-image counts of the honest headline: each fold's rows from the candidate the outer
    loop chose for that fold (selection.json's per_fold)."""
    by_key = {(c.source, c.kind, c.rule): c for c in counts}
    pooled = np.zeros_like(counts[0].nested)
    for choice in honest["per_fold"]:
        scored = np.asarray(fold_of) == choice["fold"]
        pooled[scored] = by_key[(choice["source"], choice["kind"], choice["rule"])].nested[scored]
    return pooled


def compare_headline_with_best_member(counts: list, honest: dict, n_true, fold_of, metric: str,
                                      n_bootstrap: int, seed: int, best_name: str | None = None) -> dict | None:
    """The honest headline against the best single member (ensemble.comparison.BEST_MEMBER_RULE names
    it; `best_name` None: the member with the best nested score) under its best rule by nested CV (a
    maximum over the rules, so the member's figure is if anything optimistic): the difference, a 95%
    fold-paired bootstrap interval (images resampled within folds), each fold's difference and their
    t interval. None when no member was scored."""
    from fashion_stack.core.metrics import f1_from_counts
    from fashion_stack.ensemble.comparison import fold_paired, paired_bootstrap_stats, stats_from_counts
    members = [c for c in counts if c.kind == "member" and best_name in (None, c.source)]
    if not members:
        return None
    score = lambda c: f1_from_counts(c[:, 0], c[:, 1], n_true, metric)  # noqa: E731
    best = max(members, key=lambda c: score(c.nested))
    ours = headline_counts(counts, honest, fold_of)
    low, high = paired_bootstrap_stats(stats_from_counts(ours[:, 0], n_true, ours[:, 1]),
                                       stats_from_counts(best.nested[:, 0], n_true, best.nested[:, 1]),
                                       fold_of, metric, n_bootstrap, seed)
    fold_of = np.asarray(fold_of)
    folds = sorted(np.unique(fold_of).tolist())
    per_fold = [f1_from_counts(ours[fold_of == f, 0], ours[fold_of == f, 1], n_true[fold_of == f], metric)
                - f1_from_counts(best.nested[fold_of == f, 0], best.nested[fold_of == f, 1], n_true[fold_of == f],
                                 metric) for f in folds]
    _, t_low, t_high = fold_paired(per_fold)
    return {"system": "honest headline (outer loop)", "headline": score(ours),
            "best_member": best.source, "best_member_rule": best.rule, "best_member_nested": score(best.nested),
            f"delta_{metric}_f1": score(ours) - score(best.nested), "ci_low": low, "ci_high": high,
            "excludes_0": bool(low > 0 or high < 0), "n_bootstrap": n_bootstrap,
            **{f"delta_fold{f}": d for f, d in zip(folds, per_fold)}, "fold_t_low": t_low, "fold_t_high": t_high}


def _write_comparison_with_best_member(ctx: StageContext, counts: list, honest: dict, n_true, fold_of) -> dict | None:
    """decision/vs_best_member.csv: is the stack's gain over its best member real?"""
    from fashion_stack.ensemble.comparison import best_member
    ablation, metric = ctx.config.ablation, ctx.config.decision.metric
    named = best_member(ctx.run, metric, among=[m.name for m in ctx.config.members])
    row = compare_headline_with_best_member(counts, honest, n_true, fold_of, metric, ablation.bootstrap,
                                            ablation.seed, best_name=named[0] if named else None)
    if row is not None:
        atomic.write_csv(ctx.run.decision_dir / "vs_best_member.csv", pd.DataFrame([row]))
        ctx.logger(STAGE).info("honest headline %.4f against the best member %s + %s %.4f: %+.4f [%+.4f, %+.4f]",
                               row["headline"], row["best_member"], row["best_member_rule"],
                               row["best_member_nested"], row[f"delta_{ctx.config.decision.metric}_f1"],
                               row["ci_low"], row["ci_high"])
    return row


def _write_comparison_with_mean(ctx: StageContext, counts: list, n_true, fold_of) -> None:
    """decision/vs_mean.csv: each stacker's nested-CV change against the mean stacker under the same
    rule, with a 95% fold-paired bootstrap interval (when the mean stacker is configured)."""
    if REFERENCE_STACKER not in configured_stackers(ctx):
        return
    ablation = ctx.config.ablation
    table = compare_with_reference(counts, REFERENCE_STACKER, n_true, fold_of, ctx.config.decision.metric,
                                   ablation.bootstrap, ablation.seed)
    atomic.write_csv(ctx.run.decision_dir / "vs_mean.csv", table)


def decision_inputs(ctx: StageContext, candidates: list) -> dict:
    """Each candidate's recorded hash ("unfinished" while it has no DONE.json: it is not scored,
    and finishing it makes the decision out of date) and the pool labels' digest."""
    inputs = {f"{source.kind} {source.name}": upstream_digest(source.folder, MADE_BY[source.kind])
              if is_finished(source.folder) else "unfinished" for source in candidates}
    inputs["pool labels"] = pool_labels_digest(ctx)
    return inputs


def find_sources(ctx: StageContext) -> list:
    """Members' and stackers' folders that are finished (a DONE.json: an oof.parquet alone may be
    the leftover of a killed run), in config order."""
    candidates = _candidate_sources(ctx)
    present = [source for source in candidates if is_finished(source.folder)]
    skipped = [f"{source.kind} {source.name}" for source in candidates if not is_finished(source.folder)]
    if skipped:
        ctx.logger(STAGE).info("not finished (no DONE.json) yet: %s; not scored", ", ".join(skipped))
    if not present:
        raise FileNotFoundError(f"{ctx.run.root}: no member or stacker oof.parquet to decide on; "
                                "run the members (and stack) stages first")
    return present


def _candidate_sources(ctx: StageContext) -> list:
    return ([Source(m.name, "member", ctx.run.member_dir(m.name)) for m in ctx.config.members]
            + [Source(name, "stacker", ctx.run.stacker_dir(name)) for name in configured_stackers(ctx)])


def configured_stackers(ctx: StageContext) -> list:
    return [as_plugin_spec(spec).name for spec in ctx.config.stack.stackers]


def configured_rules(ctx: StageContext) -> dict:
    """{rule name: its PluginSpec}, in config order."""
    return {as_plugin_spec(spec).name: as_plugin_spec(spec) for spec in ctx.config.decision.rules}


def rule_params(spec, ctx: StageContext, label_space: LabelSpace) -> dict:
    """Every constructor argument of a configured rule (a core.config.PluginSpec or a bare name):
    its own settings (checked, defaults filled), the decision config's shared ones, the groups."""
    spec = as_plugin_spec(spec)
    decision = ctx.config.decision
    params = {**RULES.resolve(spec.name, spec.params, where=f"decision.{spec.name}"),
              "min_labels": decision.min_labels, "max_labels": decision.max_labels, "metric": decision.metric}
    if "groups" in RULES[spec.name]().get_params():
        params["groups"] = label_space.groups
    return params


def folds_for(fold_table: pd.Series, image_ids: pd.Index, where: str) -> np.ndarray:
    missing = image_ids.difference(fold_table.index)
    if len(missing):
        raise ValueError(f"{where}: imageId(s) {list(missing[:10])} have no fold in folds.csv; "
                         "the OOF was made under other folds: rerun it with --redo")
    return fold_table.reindex(image_ids).to_numpy()


def truth_for(manifest: pd.DataFrame, image_ids: pd.Index, label_space: LabelSpace, pool: str,
              where: str) -> np.ndarray:
    """Multi-hot truth in `image_ids` order, joined by imageId among the pool's splits."""
    try:
        return pool_labels(manifest, list(image_ids), label_space, pool)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err


def _score_row(source: Source, rule_name: str, y_true, predicted, seconds: float) -> dict:
    return {"source": source.name, "kind": source.kind, "rule": rule_name,
            METRIC_COLUMNS["micro"]: micro_f1(y_true, predicted), METRIC_COLUMNS["samples"]: samples_f1(y_true, predicted),
            "cardinality_error": cardinality_error(y_true, predicted), "seconds": round(seconds, 3)}


def choose_best(scores: pd.DataFrame, metric: str) -> pd.Series:
    """The best stacker row by the metric; member rows only when no stacker was scored.
    Ties go to the earlier row (config order)."""
    pool = scores[scores["kind"] == "stacker"]
    if pool.empty:
        pool = scores
    return pool.loc[pool[METRIC_COLUMNS[metric]].idxmax()]


def _apply_best(ctx, best: pd.Series, sources, label_space, manifest, fold_table, honest: dict | None = None) -> dict:
    """Write the chosen rule's honest OOF label sets (nested CV again: keeping every candidate's
    would hold sources x rules boolean matrices), then fit it on the whole OOF for the test set."""
    out_dir, metric = ctx.run.decision_dir, ctx.config.decision.metric
    source = next(s for s in sources if s.name == best["source"] and s.kind == best["kind"])
    oof = predictions.read(source.oof, label_space.label_ids)
    test = predictions.read(source.test, label_space.label_ids)
    y_true = truth_for(manifest, oof.index, label_space, ctx.config.data.pool, where=str(source.oof))
    params = rule_params(configured_rules(ctx)[best["rule"]], ctx, label_space)
    oof_pred = nested_cv_predict(best["rule"], oof.to_numpy(), y_true,
                                 folds_for(fold_table, oof.index, where=str(source.oof)), params)
    rule = make_rule(best["rule"], **params).fit(oof.to_numpy(), y_true)
    record = {"source": source.name, "kind": source.kind, "rule": best["rule"], "metric": metric,
              "score": float(best[METRIC_COLUMNS[metric]]),
              "params": {k: v for k, v in rule.get_params().items() if k != "groups"},
              "fitted": rule.fitted_params(), "n_oof": len(oof), "n_test": len(test),
              "n_candidates": int(len(ctx.config.decision.rules) * len(sources)), "honest": honest}
    atomic.write_csv(out_dir / "oof_labels.csv", label_table(oof.index, oof_pred, label_space))
    atomic.write_csv(out_dir / "test_labels.csv", label_table(test.index, rule.predict(test.to_numpy()), label_space))
    atomic.write_json(out_dir / "rule.json", record)
    return record


class LabelSetsError(ValueError):
    """A decision label-set CSV that is missing or malformed; the message names the file."""


def read_label_sets(path: str | Path) -> dict:
    """decision/{oof,test}_labels.csv (imageId, space-separated labels) -> {imageId: [labelId, ...]}
    in file order: the reader of what label_table writes."""
    path = Path(path)
    if not path.exists():
        raise LabelSetsError(f"{path} not found; run --stages decide first")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if not {"imageId", "labels"} <= set(frame.columns):
        raise LabelSetsError(f"{path}: needs columns imageId,labels; has {list(frame.columns)}")
    dupes = frame["imageId"][frame["imageId"].duplicated()].unique()
    if len(dupes):
        raise LabelSetsError(f"{path}: duplicated imageId(s) {list(dupes[:10])}")
    return {image_id.strip(): labels.split() for image_id, labels in zip(frame["imageId"], frame["labels"])}


def label_table(image_ids, predicted: np.ndarray, label_space: LabelSpace) -> pd.DataFrame:
    """imageId, labels (space-separated labelIds in label-space order)."""
    labels = [" ".join(row) for row in label_space.decode(predicted)]
    return pd.DataFrame({"imageId": list(image_ids), "labels": labels})


def _summary(record: dict, out_dir: Path) -> dict:
    honest = record.get("honest") or {}
    metric = record["metric"]
    return {"source": record["source"], "rule": record["rule"], "metric": metric,
            "score": record["score"], f"honest_{f1_column(metric)}": honest.get(f1_column(metric)),
            "decision_dir": str(out_dir)}
