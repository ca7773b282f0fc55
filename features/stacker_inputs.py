"""Stacker inputs: members' prediction tables joined by imageId into one (images, members, labels)
array, and the small per-label design matrix the stackers learn from.

Per label the stacker sees: each member's probability, their mean / max / spread, the mean
probability of a few context labels (the labels whose predictions best explain this label's truth
on the training rows; chosen by the stacker, so the selection is fitted on training folds only),
group context (the label's rank in its group and the group's top and total probability) and a
cardinality cue (the sum of all mean probabilities: the expected number of labels).
A few good columns per label instead of all labels x members is what makes one model per label
affordable (benchmarks/bench_stacker.py measures both).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from fashion_stack.core.predictions import PredictionError, check_table


class StackerInputError(ValueError):
    """Members' tables that cannot be stacked (ids, columns, fold hashes or values disagree)."""


def _examples(ids, limit: int = 10) -> str:
    ids = sorted(map(str, ids))
    more = f" (+{len(ids) - limit} more)" if len(ids) > limit else ""
    return f"{ids[:limit]}{more}"


@dataclass(frozen=True, eq=False)
class MemberStack:
    """Member probabilities aligned by imageId: probs[i, m, j] is member m's P(label j | image i)."""

    image_ids: tuple  # str, row order of probs
    member_names: tuple
    label_ids: tuple
    probs: np.ndarray  # float32 (images, members, labels)
    label_groups: Optional[tuple] = None  # group name per label, None for an ungrouped space

    def __post_init__(self):
        shape = (len(self.image_ids), len(self.member_names), len(self.label_ids))
        if self.probs.shape != shape:
            raise StackerInputError(f"probs has shape {self.probs.shape}, ids/members/labels say {shape}")
        if self.label_groups is not None and len(self.label_groups) != len(self.label_ids):
            raise StackerInputError("label_groups needs one group name per label")

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def n_members(self) -> int:
        return len(self.member_names)

    @property
    def n_labels(self) -> int:
        return len(self.label_ids)

    def take(self, rows) -> "MemberStack":
        """The stack restricted to `rows` (integer positions or a boolean mask), e.g. one fold."""
        rows = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows)
        ids = np.asarray(self.image_ids, dtype=object)[rows]
        return MemberStack(tuple(ids), self.member_names, self.label_ids, self.probs[rows],
                           self.label_groups)

    # Row-wise aggregates, computed once per stack for all labels; label_features slices them.
    @cached_property
    def mean(self) -> np.ndarray:
        return self.probs.mean(axis=1)

    @cached_property
    def max(self) -> np.ndarray:
        return self.probs.max(axis=1)

    @cached_property
    def spread(self) -> np.ndarray:
        return self.probs.std(axis=1)

    @cached_property
    def expected_count(self) -> np.ndarray:
        return self.mean.sum(axis=1, dtype=np.float32)

    @cached_property
    def group_context(self) -> Optional[tuple]:
        """(rank of the label in its group by mean probability, 0 = top; the group's top
        probability; the group's summed probability), each (images, labels); None without groups."""
        if self.label_groups is None:
            return None
        groups = np.asarray(self.label_groups, dtype=object)
        rank = np.empty_like(self.mean)
        top = np.empty_like(self.mean)
        total = np.empty_like(self.mean)
        for group in np.unique(groups):
            cols = np.flatnonzero(groups == group)
            block = self.mean[:, cols]
            order = np.argsort(-block, axis=1, kind="stable")
            rank[:, cols] = np.argsort(order, axis=1, kind="stable")
            top[:, cols] = block.max(axis=1, keepdims=True)
            total[:, cols] = block.sum(axis=1, keepdims=True)
        return rank, top, total


def join_members(tables: Mapping[str, pd.DataFrame], label_ids: Sequence[str],
                 folds_hashes: Optional[Mapping[str, Optional[str]]] = None, *,
                 expected_ids: Optional[Sequence[str]] = None,
                 expected_folds_hash: Optional[str] = None,
                 label_groups: Optional[Sequence[str]] = None) -> MemberStack:
    """Join members' prediction tables by imageId.

    Rows follow `expected_ids` when given (each member must hold exactly those ids), else the first
    member's order (every other member must hold the same id set; any row order is fine).
    Refused, naming member and ids: missing / extra / duplicated ids, label columns other than
    `label_ids`, non-finite values (XGBoost would read NaN as 'missing' without a word), and fold
    hashes that differ between members or from `expected_folds_hash`.
    """
    if not tables:
        raise StackerInputError("no member tables to stack; configure at least one member")
    label_ids = tuple(str(lid) for lid in label_ids)
    _check_folds_hashes(folds_hashes, expected_folds_hash)
    for name, table in tables.items():
        try:
            check_table(table, where=f"member {name!r}", label_ids=label_ids)
        except PredictionError as err:
            raise StackerInputError(str(err)) from None
    first_name = next(iter(tables))
    row_ids = pd.Index([str(i) for i in expected_ids]) if expected_ids is not None else tables[first_name].index
    reference = "the expected ids" if expected_ids is not None else f"member {first_name!r}"
    if row_ids.has_duplicates:
        raise StackerInputError(f"{reference}: duplicated imageIds {_examples(row_ids[row_ids.duplicated()])}")
    probs = np.empty((len(row_ids), len(tables), len(label_ids)), dtype=np.float32)
    for m, (name, table) in enumerate(tables.items()):
        _check_same_ids(name, table.index, row_ids, reference)
        probs[:, m, :] = table.reindex(row_ids).to_numpy(dtype=np.float32)
    groups = tuple(label_groups) if label_groups is not None else None
    return MemberStack(tuple(row_ids), tuple(tables), label_ids, probs, groups)


def _check_same_ids(name: str, ids: pd.Index, row_ids: pd.Index, reference: str) -> None:
    missing = row_ids.difference(ids)
    extra = ids.difference(row_ids)
    if len(missing) or len(extra):
        raise StackerInputError(
            f"member {name!r}: imageIds differ from {reference}: missing {len(missing)} "
            f"{_examples(missing)}, extra {len(extra)} {_examples(extra)}. Every member must "
            "predict the same images; rerun the members stage for this member.")


def _check_folds_hashes(folds_hashes, expected: Optional[str]) -> None:
    if not folds_hashes:
        return
    distinct = set(folds_hashes.values()) | ({expected} if expected is not None else set())
    if len(distinct) > 1:
        detail = ", ".join(f"{name}: {h}" for name, h in folds_hashes.items())
        wanted = f"; the run's folds.csv has {expected}" if expected is not None else ""
        raise StackerInputError(
            f"members were trained on different fold assignments ({detail}){wanted}. "
            "Out-of-fold rows are only comparable under one folds.csv: redo the members stage.")


def base_feature_names(stack: MemberStack) -> list:
    """Names of the columns every label gets, before its context labels."""
    names = [f"member:{m}" for m in stack.member_names] + ["mean", "max", "spread"]
    if stack.label_groups is not None:
        names += ["group_rank", "group_top", "group_sum"]
    return names + ["expected_count"]


# Columns that hold probabilities (the linear stacker works on their logits).
PROBABILITY_FEATURES = ("member:", "mean", "max", "group_top", "context:")


def label_features(stack: MemberStack, label_index: int,
                   context_labels: Sequence[int] = ()) -> tuple:
    """(X float32 (images, features), feature names) for one label.

    `context_labels`: indices of other labels whose mean probability joins as a column
    (see select_context_labels).
    """
    j = int(label_index)
    columns = [stack.probs[:, :, j], stack.mean[:, j, None], stack.max[:, j, None],
               stack.spread[:, j, None]]
    if stack.group_context is not None:
        columns += [part[:, j, None] for part in stack.group_context]
    columns.append(stack.expected_count[:, None])
    context_labels = np.asarray(context_labels, dtype=int)
    if context_labels.size:
        columns.append(stack.mean[:, context_labels])
    names = base_feature_names(stack) + [f"context:{stack.label_ids[k]}" for k in context_labels]
    return np.concatenate(columns, axis=1).astype(np.float32, copy=False), names


def select_context_labels(stack: MemberStack, y_true: np.ndarray, n_context: int) -> np.ndarray:
    """(labels, n_context) indices: for each label, the other labels whose mean probability is
    most correlated (in absolute value) with this label's truth on these rows.

    Fitted on training rows only, so a fold's context never peeks at its own truth.
    """
    n_context = min(int(n_context), stack.n_labels - 1)
    if n_context <= 0:
        return np.zeros((stack.n_labels, 0), dtype=int)
    truth = _standardise(np.asarray(y_true, dtype=np.float32))
    predicted = _standardise(stack.mean)
    corr = np.abs(truth.T @ predicted) / max(len(stack), 1)  # (labels truth, labels predicted)
    np.fill_diagonal(corr, -1.0)
    return np.argsort(-corr, axis=1, kind="stable")[:, :n_context]


def _standardise(matrix: np.ndarray) -> np.ndarray:
    centred = matrix - matrix.mean(axis=0)
    scale = matrix.std(axis=0)
    # constant columns (a label never seen in these rows) carry no correlation
    return np.divide(centred, scale, out=np.zeros_like(centred), where=scale > 0)


# ---------------------------------------------------------------- long format: one row per (image, label)

LABEL_FEATURE = "label"  # the long-format column holding the label's index: a categorical feature


def long_features(stack: MemberStack, label_frequency: np.ndarray, context_labels=None) -> tuple:
    """(X float32 (images x labels, features), feature names): one row per (image, label), image
    major (row i * labels + j), for a stacker that learns one model across all labels.

    Per row: each member's probability and its rank within the image (0 = the member's top label),
    pairwise products of the members' probabilities, their mean / max / spread, the label's index
    (categorical, LABEL_FEATURE) and `label_frequency` (its rate in the training rows), and
    image-level summaries: the sum of mean probabilities (a cardinality cue), the image's top mean
    probability, and with groups the label's rank in its group and the group's top and sum.
    `context_labels` (labels, c) indices (select_context_labels): the mean probability of each
    label's k-th context label joins as column context:k, so one model can still use the labels
    that best explain each label."""
    label_frequency = np.asarray(label_frequency, dtype=np.float32)
    if label_frequency.shape != (stack.n_labels,):
        raise StackerInputError(f"label_frequency needs one rate per label ({stack.n_labels}), "
                                f"got shape {label_frequency.shape}")
    n, labels = len(stack), stack.n_labels
    probs = stack.probs
    columns = [probs[:, m, :] for m in range(stack.n_members)]
    columns += [np.argsort(np.argsort(-probs[:, m, :], axis=1, kind="stable"), axis=1, kind="stable")
                for m in range(stack.n_members)]
    pairs = [(a, b) for a in range(stack.n_members) for b in range(a + 1, stack.n_members)]
    columns += [probs[:, a, :] * probs[:, b, :] for a, b in pairs]
    columns += [stack.mean, stack.max, stack.spread,
                np.broadcast_to(np.arange(labels), (n, labels)),
                np.broadcast_to(label_frequency, (n, labels)),
                np.broadcast_to(stack.expected_count[:, None], (n, labels)),
                np.broadcast_to(stack.mean.max(axis=1, keepdims=True), (n, labels))]
    names = ([f"member:{m}" for m in stack.member_names] + [f"rank:{m}" for m in stack.member_names]
             + [f"product:{stack.member_names[a]}*{stack.member_names[b]}" for a, b in pairs]
             + ["mean", "max", "spread", LABEL_FEATURE, "label_frequency", "expected_count", "image_top"])
    if stack.group_context is not None:
        columns += list(stack.group_context)
        names += ["group_rank", "group_top", "group_sum"]
    if context_labels is not None and np.asarray(context_labels).size:
        context_labels = np.asarray(context_labels, dtype=int)
        if context_labels.ndim != 2 or context_labels.shape[0] != labels:
            raise StackerInputError(f"context_labels must be (labels, c) = ({labels}, c), got {context_labels.shape}")
        columns += [stack.mean[:, context_labels[:, k]] for k in range(context_labels.shape[1])]
        names += [f"context:{k + 1}" for k in range(context_labels.shape[1])]
    X = np.empty((n, labels, len(columns)), dtype=np.float32)
    for k, column in enumerate(columns):
        X[:, :, k] = column
    return X.reshape(n * labels, len(columns)), names
