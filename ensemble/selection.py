"""An honest score for the decide stage's choice, and each stacker's paired change against the mean.

The decide stage scores every (source, rule) candidate by nested CV and keeps the best, so the
best candidate's own score is the maximum of many noisy scores: optimistic. The outer loop here
repeats the whole choice without the scored fold: for each fold f, every candidate is scored on
the other folds only, each of their rows predicted by the rule fitted on the folds other than f
and the row's own; the best candidate (same policy as the stage) then predicts fold f with the rule
fitted on all folds but f. The pooled predictions of the k chosen candidates give the headline:
fold f's labels never took part in the choice that predicts it. (As with any cross-fitted OOF, the
stackers' predictions for the other folds came from fits that included fold f's rows; the choice
itself never sees fold f's predictions or labels.)

Only per-image counts are kept (true positives and predicted labels per candidate), so the memory
is images x candidates x folds small integers, not label matrices.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd

from fashion_stack.core.metrics import f1_column, f1_from_counts
from fashion_stack.ensemble.comparison import paired_bootstrap_stats, stats_from_counts
from fashion_stack.ensemble.decision import make_rule
from fashion_stack.ensemble.label_sets import check_probabilities, check_truth

COUNT_DTYPE = np.int16  # per-image counts of at most a few hundred labels


@dataclass
class CandidateCounts:
    """Per-image counts of one (source, rule) candidate's label sets.

    nested: (images, 2) true positives and predicted labels of the nested-CV sets (row in fold f
    predicted by the rule fitted on the other folds). inner: (folds, images, 2) or None; inner[f]
    holds, for the rows outside fold f, the counts when the row is predicted by the rule fitted on
    the folds other than f and the row's own (rows of fold f: -1)."""

    source: str
    kind: str
    rule: str
    nested: np.ndarray
    inner: np.ndarray | None = None


def label_set_counts(y_true: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """(images, 2): true positives and predicted labels per image."""
    return np.column_stack([(y_true & predicted).sum(axis=1), predicted.sum(axis=1)]).astype(COUNT_DTYPE)


def pairwise_cv_counts(rule_name: str, probs, y_true, folds, params: dict | None = None) -> np.ndarray:
    """CandidateCounts.inner for one candidate: for each pair of folds {f, g}, the rule fitted on
    the other folds predicts both f and g (the same fit serves outer fold f's inner fold g and
    the reverse), so k folds cost k (k - 1) / 2 fits. Needs at least 3 folds."""
    probs = check_probabilities(probs)
    y_true = check_truth(y_true, probs.shape)
    folds = np.asarray(folds)
    fold_ids = list(np.unique(folds))
    if len(fold_ids) < 3:
        raise ValueError(f"the outer loop needs at least 3 folds (one scored, two to choose on), got {len(fold_ids)}")
    inner = np.full((len(fold_ids), probs.shape[0], 2), -1, dtype=COUNT_DTYPE)
    for a, b in combinations(range(len(fold_ids)), 2):
        in_a, in_b = folds == fold_ids[a], folds == fold_ids[b]
        fit_rows = ~(in_a | in_b)
        rule = make_rule(rule_name, **(params or {})).fit(probs[fit_rows], y_true[fit_rows])
        for outer, scored in ((a, in_b), (b, in_a)):
            inner[outer, scored] = label_set_counts(y_true[scored], rule.predict(probs[scored]))
    return inner


def outer_loop_choice(candidates: list, n_true: np.ndarray, folds, metric: str, choose) -> dict:
    """The honest score of the whole choice. `choose(frame, metric)` picks a row of a frame with
    columns source, kind, rule, micro_f1, samples_f1 (the decide stage's choose_best), so the outer
    loop applies the stage's own policy. Returns the pooled micro- and samples-F1 of the chosen
    candidates' predictions and, per outer fold, what was chosen and its inner score."""
    folds = np.asarray(folds)
    fold_ids = list(np.unique(folds))
    pooled = np.zeros((len(folds), 2), dtype=COUNT_DTYPE)
    per_fold = []
    for f, fold in enumerate(fold_ids):
        scored, others = folds == fold, folds != fold
        frame = pd.DataFrame([{"source": c.source, "kind": c.kind, "rule": c.rule,
                               **_scores(c.inner[f][others], n_true[others])} for c in candidates])
        best = choose(frame, metric)
        chosen = candidates[int(best.name)]
        pooled[scored] = chosen.nested[scored]
        per_fold.append({"fold": int(fold), "source": chosen.source, "kind": chosen.kind, "rule": chosen.rule,
                         f"inner_{f1_column(metric)}": float(best[f1_column(metric)]),
                         **{f"fold_{k}": v for k, v in _scores(chosen.nested[scored], n_true[scored]).items()}})
    return {**_scores(pooled, n_true), "per_fold": per_fold, "n_candidates": len(candidates)}


def compare_with_reference(candidates: list, reference: str, n_true: np.ndarray, folds, metric: str,
                           n_bootstrap: int, seed: int) -> pd.DataFrame:
    """For every stacker candidate other than `reference` (the mean), its nested-CV change in
    `metric` against the reference source under the same rule, with a 95% fold-paired bootstrap
    interval (images resampled within folds; the same resamples for every row)."""
    by_rule = {c.rule: c for c in candidates if c.kind == "stacker" and c.source == reference}
    rows = []
    for c in candidates:
        if c.kind != "stacker" or c.source == reference or c.rule not in by_rule:
            continue
        ours = stats_from_counts(c.nested[:, 0], n_true, c.nested[:, 1])
        theirs = stats_from_counts(by_rule[c.rule].nested[:, 0], n_true, by_rule[c.rule].nested[:, 1])
        low, high = paired_bootstrap_stats(ours, theirs, folds, metric, n_bootstrap, seed)
        delta = _scores(c.nested, n_true)[f1_column(metric)] - _scores(by_rule[c.rule].nested, n_true)[f1_column(metric)]
        rows.append({"source": c.source, "rule": c.rule, "reference": reference, f"delta_{f1_column(metric)}": delta,
                     "ci_low": low, "ci_high": high, "excludes_0": bool(low > 0 or high < 0)})
    return pd.DataFrame(rows)


def _scores(counts: np.ndarray, n_true: np.ndarray) -> dict:
    return {f1_column(metric): f1_from_counts(counts[:, 0], counts[:, 1], n_true, metric)
            for metric in ("micro", "samples")}
