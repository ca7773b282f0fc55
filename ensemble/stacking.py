"""Second-level out-of-fold predictions: the stacker, like the members, predicts each pool image
only from a model that never saw it, over the same folds as the members."""
from __future__ import annotations

import time
from typing import Optional

import numpy as np

from core.log import progress
from core.metrics import best_global_threshold, micro_f1, score_probabilities
from ensemble.stackers import make_stacker
from features.stacker_inputs import MemberStack, StackerInputError


def second_level_oof(stacker_name: str, params: Optional[dict], member_stack_oof: MemberStack,
                     y_true: np.ndarray, folds, fold_records: Optional[list] = None) -> np.ndarray:
    """(images, labels) float32: row i predicted by `stacker_name` fitted on the other folds' rows.

    `folds`: fold number per row of `member_stack_oof`. If `fold_records` is a list, one record per
    fold is appended: {"fold", "seconds", "fallback_labels", **core.metrics.score_probabilities}.
    """
    folds = np.asarray(folds)
    if folds.shape != (len(member_stack_oof),):
        raise StackerInputError(f"need one fold number per pool image ({len(member_stack_oof)}), got {folds.shape}")
    fold_numbers = np.unique(folds)
    if fold_numbers.size < 2:
        raise StackerInputError(f"second-level OOF needs at least 2 folds, got {fold_numbers.tolist()}")
    y_true = np.asarray(y_true)
    oof = np.empty((len(member_stack_oof), member_stack_oof.n_labels), dtype=np.float32)
    for fold in progress(fold_numbers, desc=f"{stacker_name} folds", leave=False):
        held_out = folds == fold
        started = time.perf_counter()
        stacker = make_stacker(stacker_name, **(params or {}))
        stacker.fit(member_stack_oof.take(~held_out), y_true[~held_out])
        oof[held_out] = stacker.predict_proba(member_stack_oof.take(held_out))
        if fold_records is not None:
            fold_records.append({"fold": int(fold), "seconds": time.perf_counter() - started,
                                 "fallback_labels": list(stacker.fallback_labels_),
                                 **score_probabilities(y_true[held_out], oof[held_out])})
    return oof


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
