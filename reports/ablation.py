"""Ablation of the members: the full ensemble, each leave-one-member-out subset and each member
alone, refitting only the stacker and the decision rule on the cached member OOF predictions (no
CNN is retrained). Every score is nested: second-level OOF from the stacker, then the decision
rule fitted on the other folds and applied to each fold.

Interval of a subset's change against the full ensemble: ensemble.comparison's paired bootstrap,
images resampled within each fold; every subset sees the same resamples (same seed), so the
intervals are comparable.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from joblib import Parallel, delayed

from fashion_stack.core import atomic
from fashion_stack.core.config import as_plugin_spec
from fashion_stack.core.context import StageContext
from fashion_stack.core.lineage import digest
from fashion_stack.core.log import progress
from fashion_stack.core.metrics import METRIC_COLUMNS, f1_column, micro_f1, samples_f1
from fashion_stack.core.rundir import is_done, mark_done, upstream_digest
from fashion_stack.ensemble.comparison import paired_bootstrap_interval
from fashion_stack.ensemble.decide_stage import rule_params
from fashion_stack.ensemble.decision import nested_cv_predict
from fashion_stack.ensemble.stackers import STACKERS, stacker_params
from fashion_stack.ensemble.stacking import second_level_oof
from fashion_stack.features.stacker_inputs import MemberStack
from fashion_stack.features.stage import load_member_stacks, member_lineage
from fashion_stack.reports import plots
from fashion_stack.reports.run_data import (BEST_MEMBER_RULE, RunDataError, best_member, read_folds, read_manifest,
                                            true_labels)
from fashion_stack.reports.tables import markdown_table


def member_subsets(members: list, groups: dict = None) -> list:
    """(subset name, kind, members): the full set, each leave-one-out, each single member, then each
    of `groups` (name -> members) left out as a whole ("without group NAME"). A group is taken as
    far as its members are in the stack; one with none or all of them is left out of the table."""
    subsets = [("all members", "full", list(members))]
    if len(members) > 1:
        subsets += [(f"without {m}", "leave_one_out", [x for x in members if x != m]) for m in members]
        subsets += [(f"only {m}", "single", [m]) for m in members]
    for name, group in (groups or {}).items():
        group = set(group)
        kept = [x for x in members if x not in group]
        if 0 < len(kept) < len(members):
            subsets.append((f"without group {name}", "leave_group_out", kept))
    return subsets


def ablation_table(member_stack: MemberStack, y_true: np.ndarray, folds: np.ndarray, stacker_name: str,
                   stacker_settings: dict, rule_name: str, rule_settings: dict, metric: str = "micro",
                   n_bootstrap: int = 1000, seed: int = 0, groups: dict = None, workers: int = 1) -> pd.DataFrame:
    """One row per member subset (member_subsets: `groups` adds a row per group left out):
    nested-CV micro-F1 and samples-F1 overall and per fold, the change of `metric` against the
    full ensemble overall and per fold, and its bootstrap 95% interval. `y_true` and `folds` are in
    `member_stack.image_ids` order. `workers` subsets' stackers are refitted at a time, each in a
    process of its own (the decision rule, cheap, is fitted here)."""
    subsets = member_subsets(list(member_stack.member_names), groups)
    distinct = list(dict.fromkeys(tuple(members) for _, _, members in subsets))  # "without a" is "only b"
    # Worker processes take the place of the stacker's label threads (n_jobs), in the stackers that
    # fit label by label; the averages have next to nothing to fit and grid_cnn's TensorFlow uses
    # every core itself, so those run here (processes would only add their start-up).
    label_by_label = "n_jobs" in {f.name for f in STACKERS.settings(stacker_name)}
    workers = workers if label_by_label else 1
    settings = {**(stacker_settings or {}), "n_jobs": 1} if label_by_label and workers > 1 else stacker_settings
    jobs = [delayed(second_level_oof)(stacker_name, settings, select_members(member_stack, list(members)),
                                      y_true, folds)
            for members in distinct]
    if workers > 1:
        fitted = Parallel(n_jobs=min(workers, len(jobs)), backend="loky", return_as="generator")(jobs)
    else:
        fitted = (function(*args, **kwargs) for function, args, kwargs in jobs)
    labels_of: dict = {}
    for members, probs in zip(distinct, progress(fitted, total=len(distinct), desc="ablation subsets", unit="subset")):
        labels_of[members] = np.asarray(nested_cv_predict(rule_name, probs, y_true, folds, rule_settings), dtype=bool)
    full = labels_of[tuple(subsets[0][2])]
    rows = [_row(name, kind, members, labels_of[tuple(members)], full, y_true, folds, metric,
                 n_bootstrap, seed) for name, kind, members in subsets]
    return pd.DataFrame(rows)


def select_members(member_stack: MemberStack, members: list) -> MemberStack:
    """The stack with only `members`' columns, in the given order."""
    positions = [member_stack.member_names.index(m) for m in members]
    return MemberStack(member_stack.image_ids, tuple(members), member_stack.label_ids,
                       member_stack.probs[:, positions, :], member_stack.label_groups)


def _row(name, kind, members, labels, full_labels, y_true, folds, metric, n_bootstrap, seed) -> dict:
    score = micro_f1 if metric == "micro" else samples_f1
    row = {"subset": name, "kind": kind, "members": " ".join(members), "n_members": len(members),
           METRIC_COLUMNS["micro"]: micro_f1(y_true, labels), METRIC_COLUMNS["samples"]: samples_f1(y_true, labels)}
    row[f"delta_{f1_column(metric)}"] = score(y_true, labels) - score(y_true, full_labels)
    low, high = paired_bootstrap_interval(y_true, labels, full_labels, folds, metric, n_bootstrap, seed)
    row.update({"ci_low": low, "ci_high": high})
    for fold in np.unique(folds):
        rows = folds == fold
        row[f"{f1_column(metric)}_fold{fold}"] = score(y_true[rows], labels[rows])
        row[f"delta_fold{fold}"] = score(y_true[rows], labels[rows]) - score(y_true[rows], full_labels[rows])
    return row


def run_ablate(ctx: StageContext) -> dict:
    log = ctx.logger("ablate")
    rule = atomic.read_json(_require(ctx.run.decision_dir / "rule.json", "decide"))
    decision = upstream_digest(ctx.run.decision_dir, "decide")  # a finished, intact decision only
    stacker_name = _stacker_of(rule, ctx.config.ablation.stacker)
    unit = ctx.run.report_dir / "ablation"
    # the chosen rule is part of the hash: a redone decide stage may pick another one
    # ... but not how many subsets are refitted at a time, which changes no result
    settings = {k: v for k, v in ctx.config.to_dict()["ablation"].items() if k != "workers"}
    config_hash = digest({"ablation": settings})
    # inputs: the members' recorded outputs, the pool's labels and the decision (its chosen stacker
    # and rule); when they change the ablation is recomputed without asking
    inputs_hash = {**member_lineage(ctx), "decision": decision}
    paths = [ctx.run.report_dir / f"ablation.{ext}" for ext in ("csv", "md", "png")]
    if is_done(unit, config_hash, ctx.run.folds_hash(), redo=ctx.redo_stage("ablate"), inputs_hash=inputs_hash):
        log.info("ablation already done under this config; skipped (--redo ablate recomputes)")
        return {"up_to_date": True, "path": str(paths[0])}
    label_space = ctx.label_space()
    member_stack, _ = load_member_stacks(ctx)  # the stack stage's own loading and checks
    folds = read_folds(ctx.run).loc[list(member_stack.image_ids)].to_numpy()
    y_true = true_labels(read_manifest(ctx.run), member_stack.image_ids, label_space, ctx.config.data.pool)
    metric = ctx.config.decision.metric
    table = ablation_table(member_stack, y_true, folds, stacker_name,
                           stacker_params(_configured(ctx.config.stack.stackers, stacker_name)), rule["rule"],
                           rule_params(_configured(ctx.config.decision.rules, rule["rule"]), ctx, label_space), metric,
                           ctx.config.ablation.bootstrap, ctx.config.ablation.seed, ctx.config.ablation.groups,
                           ctx.config.ablation.workers)
    in_stack = set(member_stack.member_names)
    for name, group in ctx.config.ablation.groups.items():
        absent = [m for m in group if m not in in_stack]
        if f"without group {name}" not in set(table["subset"]):
            log.warning("ablation.groups.%s: none or all of its members are in this run's stack; no row for it "
                        "(not in the stack: %s)", name, absent or "none")
        elif absent:
            log.warning("ablation.groups.%s: %s not in this run's stack; the group's row leaves out the rest",
                        name, absent)
    _write(ctx, table, stacker_name, rule, metric)
    mark_done(unit, config_hash, ctx.run.folds_hash(), inputs_hash=inputs_hash, subsets=len(table), artifacts=paths)
    full = table.iloc[0]
    log.info("ablation: %d subsets; full ensemble %s-F1 %.4f", len(table), metric, full[f1_column(metric)])
    return {"subsets": len(table), "stacker": stacker_name, "rule": rule["rule"],
            f"full_{f1_column(metric)}": float(full[f1_column(metric)]), "path": str(paths[0])}


def _configured(specs, name: str):
    """The configured entry (name and settings) called `name`, else the bare name (defaults)."""
    return next((spec for spec in map(as_plugin_spec, specs) if spec.name == name), name)


def _stacker_of(rule: dict, setting: str = "chosen") -> str:
    """ablation.stacker: a stacker's name, or "chosen": the decision's stacker (a member chosen as
    the source means no stacker was run: its subsets combine members by the mean)."""
    if setting != "chosen":
        return setting
    return rule["source"] if rule.get("kind", "stacker") == "stacker" else "mean"


def _require(path, stage: str):
    if not path.exists():
        raise RunDataError(f"{path} not found; run --stages {stage} first")
    return path


def _write(ctx: StageContext, table: pd.DataFrame, stacker_name: str, rule: dict, metric: str) -> None:
    report = ctx.run.report_dir
    atomic.write_csv(report / "ablation.csv", table)
    head = (f"# Ablation\n\nStacker **{stacker_name}**, decision rule **{rule['rule']}** (chosen source "
            f"{rule['source']}), refitted on the cached member OOF predictions for each member subset. "
            f"Scores are nested-CV over the folds. delta = subset - full ensemble ({metric}-F1); "
            f"interval: 95% paired bootstrap over images resampled within folds "
            f"({ctx.config.ablation.bootstrap} resamples, seed {ctx.config.ablation.seed}).\n\n")
    best = best_member(ctx.run, metric, among={m.name for m in ctx.config.members})  # the config's members
    if best is not None:  # the run's one definition; the "only <member>" rows are nested-CV through the stacker
        head += (f"Best member: **{best[0]}** ({metric}-F1@best {best[1]:.4f}), "
                 f"{BEST_MEMBER_RULE.format(metric=metric)}; its row here is `only {best[0]}`.\n\n")
    shown = table[["subset", "kind", *METRIC_COLUMNS.values(), f"delta_{f1_column(metric)}", "ci_low", "ci_high"]]
    atomic.write_text(report / "ablation.md", head + markdown_table(shown) + "\n## Per fold\n\n"
                      + markdown_table(table.drop(columns=["members", "n_members"])))
    others = table.iloc[1:] if len(table) > 1 else table
    plots.interval_bars(report / "ablation.png", list(others["subset"]), others[f"delta_{f1_column(metric)}"],
                        others["ci_low"], others["ci_high"], xlabel=f"change in {metric}-F1 vs all members",
                        title=f"Ablation ({stacker_name} + {rule['rule']}), 95% paired bootstrap")
