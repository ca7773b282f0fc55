"""Fold-score comparison of the members: member x fold table (micro-F1, sample-F1, loss), mean and
standard deviation per member, the best member, and fold-paired differences against it.

Paired by fold because every member is scored on the same fold's images: the fold-to-fold spread
(some folds are simply harder) cancels in the difference, which is what tells whether one member
is really better than another.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fashion_stack.core import atomic
from fashion_stack.core.context import StageContext
from fashion_stack.core.rundir import derived_stage
from fashion_stack.core.rundir import RunDir
from fashion_stack.features.stage import member_units
from fashion_stack.reports import plots
from fashion_stack.core.metrics import frequency_floor
from fashion_stack.reports.run_data import (BEST_MEMBER_RULE, RunDataError, best_member, read_folds, read_manifest,
                                            true_labels)
from fashion_stack.reports.tables import markdown_table

METRICS = {"micro_f1": "micro_f1@best", "samples_f1": "samples_f1@best", "loss": "loss"}
BEST_BY = "micro_f1"  # the competition's metric
DIFF = {m: f"d_{m}" for m in METRICS}  # paired difference member - best, same fold


def member_score_files(run: RunDir, members=None) -> list:
    """members/<m>/scores.json of the named members (a run's config: what the run is made of, not
    what an earlier config left on disk), or, with members=None, of every member folder there."""
    if members is None:
        return sorted((run.root / "members").glob("*/scores.json"))
    return [run.member_dir(name) / "scores.json" for name in members]


def member_fold_scores(run: RunDir, members=None) -> pd.DataFrame:
    """Long table: member, fold, micro_f1, samples_f1, loss, read from members/<m>/scores.json of
    `members` (None: every member folder)."""
    paths = member_score_files(run, members)
    absent = [path for path in paths if not path.is_file()]
    if not paths or absent:
        raise RunDataError(f"{absent[0] if absent else run.root / 'members'}: no <member>/scores.json; "
                           "run --stages members first")
    rows = []
    for path in paths:
        record = atomic.read_json(path)
        member = path.parent.name  # the folder is the member's name (a copied folder keeps an old "member")
        for position, fold in enumerate(record.get("folds", [])):
            missing = [key for key in ["fold", *METRICS.values()] if key not in fold]
            if missing:
                raise RunDataError(f"{path}: folds[{position}] lacks {missing}; rerun --redo members")
            rows.append({"member": member, "fold": int(fold["fold"]),
                         **{name: float(fold[key]) for name, key in METRICS.items()}})
        if not record.get("folds"):
            raise RunDataError(f"{path}: no per-fold scores; rerun --redo members")
    return pd.DataFrame(rows)


def fold_score_table(run: RunDir | str | Path, members=None) -> pd.DataFrame:
    """Member x fold rows, then a "mean" and a "std" (sample, ddof=1) row per member.

    Columns: member, fold ("0".."k-1", "mean", "std"), micro_f1, samples_f1, loss, best (bool),
    d_micro_f1, d_samples_f1, d_loss (member minus the best member on the same fold; on the
    mean/std rows, the mean and std of those paired differences). attrs["best_member"] names the
    member with the highest mean micro-F1.
    """
    run = run if isinstance(run, RunDir) else RunDir(run)
    scores = member_fold_scores(run, members)
    means = scores.groupby("member", sort=False)[list(METRICS)].mean()
    chosen = best_member(run, BEST_BY.split("_")[0], among=set(means.index))  # the run's one definition
    best = chosen[0] if chosen else str(means[BEST_BY].idxmax())
    _check_same_folds(scores, best, run)
    best_scores = scores[scores["member"] == best].set_index("fold")[list(METRICS)]
    blocks = []
    for member, block in scores.groupby("member", sort=False):
        block = block.sort_values("fold").reset_index(drop=True)
        paired = block[list(METRICS)].to_numpy() - best_scores.loc[block["fold"]].to_numpy()
        block[list(DIFF.values())] = paired
        summary = pd.DataFrame([block[list(METRICS) + list(DIFF.values())].mean(),
                                block[list(METRICS) + list(DIFF.values())].std(ddof=1)])
        summary.insert(0, "fold", ["mean", "std"])
        summary.insert(0, "member", member)
        block["fold"] = block["fold"].astype(str)
        blocks += [block, summary]
    table = pd.concat(blocks, ignore_index=True)
    table.insert(5, "best", table["member"] == best)
    table.attrs["best_member"] = best
    return table


def _check_same_folds(scores: pd.DataFrame, best: str, run: RunDir) -> None:
    folds_of = scores.groupby("member")["fold"].apply(lambda f: sorted(f))
    for member, folds in folds_of.items():
        if folds != folds_of[best]:
            raise RunDataError(
                f"{run.member_dir(member) / 'scores.json'} has folds {folds} but the best member {best!r} "
                f"has {folds_of[best]}; fold-paired differences need the same folds (finish the members stage)")


def paired_differences(table: pd.DataFrame) -> pd.DataFrame:
    """Per member (except the best) and metric: each fold's difference vs the best member, their
    mean and std, and on how many folds the member beat the best (lower loss counts as better)."""
    best = table.attrs["best_member"]
    per_fold = table[~table["fold"].isin(["mean", "std"]) & (table["member"] != best)]
    rows = []
    for member, block in per_fold.groupby("member", sort=False):
        for metric, diff in DIFF.items():
            values = block[diff].to_numpy()
            better = values < 0 if metric == "loss" else values > 0
            rows.append({"member": member, "vs": best, "metric": metric,
                         **{f"fold{f}": v for f, v in zip(block["fold"], values)},
                         "mean": values.mean(), "std": values.std(ddof=1) if values.size > 1 else np.nan,
                         "folds_better": int(better.sum()), "folds": int(values.size)})
    return pd.DataFrame(rows)


def member_correlations(ctx: StageContext) -> pd.DataFrame:
    """Every pair of members: the Pearson correlation of their OOF logits (log-odds, over every
    image x label cell) and of their errors (truth minus probability, per cell). Members whose
    errors correlate near 1 make the same mistakes: a stacker has little to combine."""
    from fashion_stack.core import predictions  # the members' OOF tables
    fold_of = read_folds(ctx.run)
    ids = list(fold_of.index)
    label_space = ctx.label_space()
    truth = true_labels(read_manifest(ctx.run), ids, label_space, ctx.config.data.pool).astype(np.float64)
    names = [m.name for m in ctx.config.members if (ctx.run.member_dir(m.name) / "oof.parquet").is_file()]
    probs = {name: predictions.read(ctx.run.member_dir(name) / "oof.parquet", label_space.label_ids)
             .reindex(ids).to_numpy(np.float64) for name in names}
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            rows.append({"member_a": a, "member_b": b,
                         "logit_correlation": _correlation(_logit(probs[a]), _logit(probs[b])),
                         "error_correlation": _correlation(truth - probs[a], truth - probs[b])})
    return pd.DataFrame(rows, columns=["member_a", "member_b", "logit_correlation", "error_correlation"])


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else float("nan")


def frequency_floor_scores(ctx: StageContext) -> dict:
    """The out-of-fold frequency floor (top-k most frequent labels for every image) on the pool."""
    fold_of = read_folds(ctx.run)
    truth = true_labels(read_manifest(ctx.run), list(fold_of.index), ctx.label_space(), ctx.config.data.pool)
    return frequency_floor(truth, fold_of.to_numpy(), ctx.config.decision.metric, ctx.config.decision.max_labels)


def _compare_outputs(ctx: StageContext) -> list:
    return [ctx.run.report_dir / name for name in ("fold_scores.csv", "fold_scores.md", "fold_scores.png",
                                                    "paired_differences.csv", "frequency_floor.json",
                                                    "member_correlation.csv")]


def configured_members(ctx: StageContext) -> list:
    return [m.name for m in ctx.config.members]


@derived_stage("compare", inputs=lambda ctx: member_score_files(ctx.run, configured_members(ctx))
               + [ctx.run.folds, ctx.run.manifest], outputs=_compare_outputs, config_sections=("decision",),
               upstream=member_units)
def run_compare(ctx: StageContext) -> dict:
    log = ctx.logger("compare")
    table = fold_score_table(ctx.run, configured_members(ctx))
    best = table.attrs["best_member"]
    report = ctx.run.report_dir
    atomic.write_csv(report / "fold_scores.csv", table)
    differences = paired_differences(table)
    atomic.write_csv(report / "paired_differences.csv", differences)
    floor = frequency_floor_scores(ctx)
    atomic.write_json(report / "frequency_floor.json", floor)
    correlations = member_correlations(ctx)
    atomic.write_csv(report / "member_correlation.csv", correlations)
    atomic.write_text(report / "fold_scores.md", _markdown(table, differences, floor, correlations))
    per_fold = table[~table["fold"].isin(["mean", "std"])]
    plots.fold_points(report / "fold_scores.png",
                      {m: list(b["micro_f1"]) for m, b in per_fold.groupby("member", sort=False)},
                      ylabel="micro-F1 at best threshold", best=best,
                      title="micro-F1 per fold (points), mean ± std (bars)")
    log.info("fold scores of %d member(s); best %s", table["member"].nunique(), best)
    chosen = best_member(ctx.run, "micro", among={best})
    return {"members": int(table["member"].nunique()), "best_member": best,
            "best_member_micro_f1@best": chosen[1] if chosen else None, "frequency_floor": floor["oof"],
            "path": str(report / "fold_scores.csv")}


def _markdown(table: pd.DataFrame, differences: pd.DataFrame, floor: dict, correlations: pd.DataFrame = None) -> str:
    summary = table[table["fold"] == "mean"].drop(columns=["fold"]).copy()
    stds = table[table["fold"] == "std"].set_index("member")
    for metric in METRICS:
        summary[f"{metric}_std"] = summary["member"].map(stds[metric])
    summary = summary[["member", "best"] + [c for m in METRICS for c in (m, f"{m}_std")] + list(DIFF.values())]
    parts = [f"# Fold scores\n\nBest member: **{table.attrs['best_member']}**, "
             f"{BEST_MEMBER_RULE.format(metric='micro')}. "
             "Std is the sample standard deviation over folds; d_* are fold-paired differences "
             "member - best.\n\n"
             f"Frequency floor (the top-k most frequent labels of the other folds for every image, k "
             f"chosen on those folds: {floor['k']}): out-of-fold F1 {floor['oof']:.4f}, per fold "
             f"{', '.join(f'{v:.4f}' for v in floor['folds'])}.\n\n## Per member\n\n", markdown_table(summary),
             "\n## Per fold\n\n", markdown_table(table)]
    if not differences.empty:
        parts += ["\n## Paired differences vs the best member\n\n", markdown_table(differences)]
    if correlations is not None and not correlations.empty:
        parts += ["\n## Members' pairwise correlation (OOF logits; errors = truth - probability)\n\n",
                  markdown_table(correlations)]
    return "".join(parts)
