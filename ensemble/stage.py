"""The stack stage: for each configured stacker, second-level OOF over the pool (same folds as the
members), a full-pool model applied to the members' test predictions, scores and timing."""
from __future__ import annotations

import time

from fashion_stack.core import atomic, predictions
from fashion_stack.core.context import StageContext
from fashion_stack.core.lineage import digest
from fashion_stack.core.metrics import BEST_MICRO_F1, score_probabilities
from fashion_stack.core.rundir import is_done, mark_done
from fashion_stack.datasets.folds import read_folds
from fashion_stack.datasets.manifest import read_manifest
from fashion_stack.ensemble.stackers import make_stacker, stacker_params
from fashion_stack.ensemble.stacking import cv_threshold_micro_f1, second_level_oof
from fashion_stack.features.stage import load_member_stacks, member_lineage, pool_truth


def run_stack(ctx: StageContext) -> dict:
    log = ctx.logger("stack")
    folds_hash = ctx.run.folds_hash()
    # the members' recorded outputs and the pool's labels are this stage's inputs (core.lineage):
    # a member added or retrained, or a label edited, makes the stackers out of date (recomputed),
    # while a changed stack config needs --redo stack; an unfinished member is refused by name
    manifest = read_manifest(ctx.run.manifest)  # read once: the lineage, the test ids and the truth come from it
    inputs_hash = member_lineage(ctx, manifest)
    # every stacker's settings, complete and checked: an unknown name or a bad setting fails here,
    # before any work
    params = {spec.name: stacker_params(spec) for spec in ctx.config.stack.stackers}
    # each stacker is its own unit, hashed on its own settings: adding or tuning one stacker
    # leaves the others' finished work alone
    config_hash = {name: stacker_hash(name, params[name]) for name in params}
    todo = [name for name in params
            if not is_done(ctx.run.stacker_dir(name), config_hash[name], folds_hash, redo=ctx.redo_stage("stack"),
                           inputs_hash=inputs_hash)]
    summary = {}
    if todo:
        oof_stack, test_stack = load_member_stacks(ctx, manifest)
        folds = read_folds(ctx.run.folds).reindex(list(oof_stack.image_ids)).to_numpy()
        y_true = pool_truth(ctx, oof_stack.image_ids, manifest)
    for name in params:
        unit = ctx.run.stacker_dir(name)
        if name in todo:
            scores = _run_stacker(ctx, name, params[name], oof_stack, test_stack, y_true, folds)
            mark_done(unit, config_hash[name], folds_hash, inputs_hash=inputs_hash, seconds=scores["seconds"],
                      oof=scores["oof"], artifacts=["oof.parquet", "test.parquet", "scores.json", "model"])
        else:
            log.info("stacker %s already done under this config and folds; skipped", name)
            scores = atomic.read_json(unit / "scores.json")
        summary[name] = {BEST_MICRO_F1: scores["oof"][BEST_MICRO_F1],
                         "micro_f1@cv_threshold": scores["oof"].get("micro_f1@cv_threshold"), "seconds": scores["seconds"],
                         "fallback_labels": len(scores["fallback_labels"]), "skipped": name not in todo}
    return {"stackers": summary, "up_to_date": not todo}


def _run_stacker(ctx, name, params, oof_stack, test_stack, y_true, folds) -> dict:
    log = ctx.logger("stack")
    unit = ctx.run.stacker_dir(name)
    started = time.perf_counter()
    fold_records = []
    oof = second_level_oof(name, params, oof_stack, y_true, folds, fold_records, run_units=ctx.run_units)
    predictions.write(unit / "oof.parquet", predictions.make_table(oof_stack.image_ids, oof, oof_stack.label_ids))
    full_pool = make_stacker(name, **params).fit(oof_stack, y_true)
    full_pool.save(unit / "model")
    test = full_pool.predict_proba(test_stack)
    predictions.write(unit / "test.parquet", predictions.make_table(test_stack.image_ids, test, test_stack.label_ids))
    # micro_f1@best tunes its threshold on the rows it scores; micro_f1@cv_threshold does not
    oof_scores = {**score_probabilities(y_true, oof), "micro_f1@cv_threshold": cv_threshold_micro_f1(y_true, oof, folds)}
    scores = {"stacker": name, "folds": fold_records, "oof": oof_scores,
              "seconds": time.perf_counter() - started,
              "fallback_labels": list(full_pool.fallback_labels_)}
    atomic.write_json(unit / "scores.json", scores)
    log.info("stacker %s: OOF micro-F1@best %.4f in %.1f s; %d label(s) on a fallback model%s",
             name, scores["oof"][BEST_MICRO_F1], scores["seconds"], len(scores["fallback_labels"]),
             f" ({scores['fallback_labels'][:20]})" if scores["fallback_labels"] else "")
    return scores


def stacker_hash(name: str, params: dict) -> str:
    """The unit's config hash: the stacker's name and every one of its settings."""
    return digest({"stacker": name, "params": params})
