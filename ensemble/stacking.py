"""Second-level out-of-fold predictions: the stacker, like the members, predicts each pool image
only from a model that never saw it, over the same folds as the members."""
from __future__ import annotations

import time
from typing import Callable, Optional

import numpy as np

from fashion_stack.core.executor import Task
from fashion_stack.core.log import progress
from fashion_stack.core.metrics import best_global_threshold, micro_f1, score_probabilities
from fashion_stack.ensemble.stackers import make_stacker
from fashion_stack.features.stacker_inputs import MemberStack, StackerInputError


def second_level_oof(stacker_name: str, params: Optional[dict], member_stack_oof: MemberStack,
                     y_true: np.ndarray, folds, fold_records: Optional[list] = None,
                     run_units: Optional[Callable] = None) -> np.ndarray:
    """(images, labels) float32: row i predicted by `stacker_name` fitted on the other folds' rows.

    `folds`: fold number per row of `member_stack_oof`. If `fold_records` is a list, one record per
    fold is appended: {"fold", "seconds", "fallback_labels", **core.metrics.score_probabilities}.
    `run_units` (StageContext.run_units): hands the folds' fits to the run's executor as
    independent units (on Ray, one task per fold); None fits them here, in order.
    """
    folds = np.asarray(folds)
    if folds.shape != (len(member_stack_oof),):
        raise StackerInputError(f"need one fold number per pool image ({len(member_stack_oof)}), got {folds.shape}")
    fold_numbers = np.unique(folds)
    if fold_numbers.size < 2:
        raise StackerInputError(f"second-level OOF needs at least 2 folds, got {fold_numbers.tolist()}")
    y_true = np.asarray(y_true)
    tasks = [Task("stack", f"{stacker_name}/fold{int(fold)}", fit_fold,
                  (stacker_name, params, member_stack_oof.take(folds != fold), y_true[folds != fold],
                   member_stack_oof.take(folds == fold)))
             for fold in fold_numbers]
    if run_units is None:
        results = [task.fn(*task.args) for task in progress(tasks, desc=f"{stacker_name} folds", leave=False)]
    else:
        results = run_units(tasks)
    oof = np.empty((len(member_stack_oof), member_stack_oof.n_labels), dtype=np.float32)
    for fold, (probs, fallback, seconds) in zip(fold_numbers, results):
        held_out = folds == fold
        oof[held_out] = probs
        if fold_records is not None:
            fold_records.append({"fold": int(fold), "seconds": seconds, "fallback_labels": fallback,
                                 **score_probabilities(y_true[held_out], oof[held_out])})
    return oof


def fit_fold(stacker_name: str, params: Optional[dict], train: MemberStack, y_train: np.ndarray,
             held_out: MemberStack) -> tuple:
    """One fold's fit, a unit on its own: (held-out probabilities, fallback labels, seconds)."""
    started = time.perf_counter()
    stacker = make_stacker(stacker_name, **(params or {}))
    stacker.fit(train, y_train)
    probs = np.asarray(stacker.predict_proba(held_out), dtype=np.float32)
    return probs, list(stacker.fallback_labels_), time.perf_counter() - started


def cv_threshold_micro_f1(y_true: np.ndarray, probs: np.ndarray, folds) -> float:
    """micro-F1 of OOF probabilities with each fold's one global threshold chosen on the other
    folds' rows: the cross-validated counterpart of score_probabilities' micro_f1@best, whose
    threshold is tuned on the very rows it scores."""
    folds = np.asarray(folds)
    predicted = np.zeros(probs.shape, dtype=bool)
    for fold in np.unique(folds):
        held_out = folds == fold
        threshold, _ = best_global_threshold(y_true[~held_out], probs[~held_out])
        predicted[held_out] = probs[held_out] >= threshold
    return micro_f1(y_true, predicted)
