"""Decision rules: per-label probabilities -> one label set per image, min_labels..max_labels each.

Every rule follows scikit-learn's estimator contract: `__init__` stores its arguments, `fit(probs,
y_true)` validates and learns attributes ending in `_`, `predict(probs)` returns a boolean matrix
and refuses to run unfitted. Rules are registered by name (`make_rule("global")`).

Most rules end up choosing, for each image, its k most probable labels for some k (a threshold on
one image's probabilities keeps a prefix of them). They are therefore fitted on counts: with the
running number of true labels along each image's ranking, any choice of k per image is scored in
O(images), which is what lets the threshold searches be exhaustive over their grids.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar, Optional

import numpy as np
from annotated_types import Ge, Gt
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from fashion_stack.core.config import as_plugin_spec
from fashion_stack.core.log import progress
from fashion_stack.core.metrics import MAX_LABELS, METRICS, f1_from_counts
from fashion_stack.core.registry import Registry
from fashion_stack.ensemble.gfm import fit_joint_model, predict_sets
from fashion_stack.ensemble.label_sets import (TopLabels, check_probabilities, check_truth, counts_at_thresholds,
                                 enforce_cardinality, expected_f1_of_ranking, per_label_threshold_search,
                                 threshold_grid)

RULES = Registry("decision rule", name_attribute="rule_name")
EXCLUSIVE_GROUPS = ("category", "gender")  # exactly one of each on 98% of the real images


register_rule = RULES.register
# a rule's settings as a dataclass: __init__ from the fields; scikit-learn's repr, no __eq__
rule_settings = dataclass(eq=False, repr=False)


def make_rule(name: str, **params) -> "DecisionRule":
    return RULES.create(name, **params)


# ---------------------------------------------------------------- rules

@rule_settings
class DecisionRule(BaseEstimator):
    """Shared contract; subclasses implement `_fit` and `_predict`.

    A rule's settings are its dataclass fields with their defaults and constraints, declared once
    (core.registry): YAML sets them as `{name: per_label, params: {shrinkage: 20}}`. The fields in
    `provided` come from the decision config (metric, min_labels, max_labels, shared by every
    rule) or from the run (the label groups), not from a rule's params."""

    rule_name: ClassVar[str] = ""
    provided: ClassVar[tuple] = ("min_labels", "max_labels", "metric", "groups")

    min_labels: int = 1
    max_labels: int = MAX_LABELS
    metric: str = "micro"

    def fit(self, probs, y_true):
        self._check_params()
        probs = check_probabilities(probs)
        y_true = check_truth(y_true, probs.shape)
        self.n_labels_ = probs.shape[1]
        self._fit(probs, y_true)
        return self

    def predict(self, probs) -> np.ndarray:
        check_is_fitted(self)
        probs = check_probabilities(probs)
        if probs.shape[1] != self.n_labels_:
            raise ValueError(f"{type(self).__name__} was fitted on {self.n_labels_} labels, "
                             f"got a matrix with {probs.shape[1]}")
        return self._predict(probs)

    def fitted_params(self) -> dict:
        """The learned attributes, JSON-ready (for decision/rule.json)."""
        check_is_fitted(self)
        return {name: _jsonable(value) for name, value in vars(self).items()
                if name.endswith("_") and not name.startswith("_")}

    def _check_params(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"{type(self).__name__}: metric={self.metric!r}; use one of {METRICS}")
        if not (isinstance(self.min_labels, (int, np.integer)) and isinstance(self.max_labels, (int, np.integer))
                and 1 <= self.min_labels <= self.max_labels):
            raise ValueError(f"{type(self).__name__}: need integers 1 <= min_labels <= max_labels, "
                             f"got {self.min_labels!r} and {self.max_labels!r}")

    def _enforce(self, probs, chosen, **kwargs) -> np.ndarray:
        return enforce_cardinality(probs, chosen, self.min_labels, self.max_labels, **kwargs)

    def _fit(self, probs, y_true):
        raise NotImplementedError

    def _predict(self, probs):
        raise NotImplementedError


@register_rule("global")
@rule_settings
class GlobalThreshold(DecisionRule):
    """One threshold for every label, the best of a grid for the metric after the 1..23 clamp."""

    n_thresholds: Annotated[int, Ge(1)] = 199  # the grid: n evenly spaced thresholds in (0, 1)

    def _fit(self, probs, y_true):
        self.threshold_, self.train_score_ = _fit_threshold(probs, y_true, [], self)

    def _predict(self, probs):
        return self._enforce(probs, probs >= self.threshold_)


@register_rule("per_label")
@rule_settings
class PerLabelThresholds(DecisionRule):
    """A threshold per label, searched with the others at the global threshold, then shrunk
    toward the global one with weight positives / (positives + shrinkage): a label with few
    positives has a noisy optimum, and one without positives keeps the global threshold."""

    shrinkage: Annotated[float, Ge(0)] = 10.0  # positives at which a label's own threshold has half the weight
    n_thresholds: Annotated[int, Ge(1)] = 199

    def _fit(self, probs, y_true):
        if not self.shrinkage >= 0:
            raise ValueError(f"PerLabelThresholds: shrinkage must be >= 0, got {self.shrinkage!r}")
        base = GlobalThreshold(self.min_labels, self.max_labels, self.metric, self.n_thresholds)
        self.global_threshold_ = base.fit(probs, y_true).threshold_
        self.raw_thresholds_, _ = per_label_threshold_search(
            probs, y_true, probs >= self.global_threshold_, self.metric)
        self.positives_ = y_true.sum(axis=0)
        weight = np.divide(self.positives_, self.positives_ + self.shrinkage,
                           out=np.zeros(self.n_labels_), where=self.positives_ > 0)
        self.thresholds_ = weight * self.raw_thresholds_ + (1 - weight) * self.global_threshold_

    def _predict(self, probs):
        return self._enforce(probs, probs >= self.thresholds_[None, :])


@register_rule("expected_f1")
@rule_settings
class ExpectedF1(DecisionRule):
    """Per image, the top-k set with the highest expected F1 under independent labels (Ye et
    al. 2012), k in min_labels..max_labels. It maximises sample-F1 in expectation whatever
    `metric` says; for micro-F1 a threshold rule may win, and nested CV decides. Nothing is
    learned: with marginals only, Dembczynski et al.'s GFM reduces to this same decoder."""



    def _fit(self, probs, y_true):
        self.positives_ = y_true.sum(axis=0)

    def _predict(self, probs):
        top = TopLabels(probs, self.max_labels)
        expected = expected_f1_of_ranking(probs, top)
        lo = min(self.min_labels, top.depth)
        return top.mask(lo + np.argmax(expected[:, lo - 1:], axis=1))


@register_rule("gfm")
@rule_settings
class GeneralFMaximizer(DecisionRule):
    """Per image, the set that maximises expected F1 under an estimated joint distribution of the
    labels (Dembczynski et al.'s GFM, NIPS 2011; ensemble.gfm): exact for the estimated matrix
    P(y_i = 1, |y| = s), which a multinomial over (image, candidate label) rows learns from the
    training rows, so unlike expected_f1 it does not assume independent, calibrated labels: set
    sizes and each label's share of large and small sets come from the truth. Like expected_f1 it
    maximises sample-F1 whatever `metric` says. min_labels may be 0 here: the empty set is then a
    candidate, with expected F1 P(y = empty set) from the set-size model."""

    n_candidates: Annotated[int, Ge(1)] = 32  # each image's most probable labels that sets are made of
    C: Annotated[float, Gt(0)] = 1.0  # inverse L2 strength of the joint model's multinomial
    max_iter: Annotated[int, Ge(1)] = 300

    def _check_params(self) -> None:
        if self.min_labels == 0 and isinstance(self.max_labels, (int, np.integer)) and self.max_labels >= 0:
            if self.metric not in METRICS:
                raise ValueError(f"{type(self).__name__}: metric={self.metric!r}; use one of {METRICS}")
            return
        super()._check_params()

    def _fit(self, probs, y_true):
        self.joint_model_ = fit_joint_model(probs, y_true, self._depth(), self.C, self.max_iter)

    def _predict(self, probs):
        return predict_sets(self.joint_model_, probs, self._depth(), self.min_labels, self.max_labels)

    def _depth(self) -> int:
        return max(int(self.n_candidates), int(self.max_labels))


@register_rule("group")
@rule_settings
class GroupAware(DecisionRule):
    """Exactly one label of each exclusive group (its most probable) plus a global threshold on
    the other labels. `groups` names each column's group; without groups (or without any of
    `exclusive_groups` among them) this is the global-threshold rule."""

    groups: Optional[object] = None  # one group name per label (LabelSpace.groups), from the run
    exclusive_groups: tuple[str, ...] = EXCLUSIVE_GROUPS  # groups with exactly one label per image
    n_thresholds: Annotated[int, Ge(1)] = 199

    def _fit(self, probs, y_true):
        self.exclusive_columns_ = self._exclusive_columns(probs.shape[1])
        self.threshold_, self.train_score_ = _fit_threshold(probs, y_true, self.exclusive_columns_, self)

    def _predict(self, probs):
        exclusive = self._exclusive_mask()
        forced = _group_argmax(probs, self.exclusive_columns_)
        chosen = forced | ((probs >= self.threshold_) & ~exclusive)
        return self._enforce(probs, chosen, keep=forced, pool=~exclusive)

    def _exclusive_columns(self, n_labels: int) -> list:
        if self.groups is None:
            return []
        groups = np.asarray(self.groups, dtype=object)
        if groups.shape != (n_labels,):
            raise ValueError(f"GroupAware: groups names {groups.size} columns, the probabilities have "
                             f"{n_labels}; pass one group name per label (LabelSpace.groups)")
        return [np.flatnonzero(groups == name) for name in self.exclusive_groups if (groups == name).any()]

    def _exclusive_mask(self) -> np.ndarray:
        mask = np.zeros(self.n_labels_, dtype=bool)
        for columns in self.exclusive_columns_:
            mask[columns] = True
        return mask


@register_rule("topk")
@rule_settings
class TopKByCardinality(DecisionRule):
    """Each image's k most probable labels, k = round(a + b * sum of its probabilities + offset):
    a, b by least squares on the true counts, then the offset that maximises the metric (the
    count that maximises micro-F1 is not the expected count)."""

    OFFSETS = np.arange(-3.0, 3.01, 0.25)

    def _fit(self, probs, y_true):
        mass = probs.sum(axis=1, dtype=np.float64)
        n_true = y_true.sum(axis=1)
        design = np.column_stack([np.ones_like(mass), mass])
        (self.intercept_, self.slope_), *_ = np.linalg.lstsq(design, n_true, rcond=None)
        top = TopLabels(probs, self.max_labels)
        hits = top.hits(y_true)
        rows = np.arange(probs.shape[0])
        scores = []
        for offset in self.OFFSETS:
            sizes = self._sizes(mass, offset, top.depth)
            scores.append(f1_from_counts(hits[rows, sizes], sizes, n_true, self.metric))
        best = int(np.argmax(scores))
        self.offset_, self.train_score_ = float(self.OFFSETS[best]), float(scores[best])

    def _predict(self, probs):
        top = TopLabels(probs, self.max_labels)
        return top.mask(self._sizes(probs.sum(axis=1, dtype=np.float64), self.offset_, top.depth))

    def _sizes(self, mass, offset, depth):
        raw = np.rint(self.intercept_ + self.slope_ * mass + offset)
        return np.clip(raw, min(self.min_labels, depth), depth).astype(np.intp)


def _jsonable(value):
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    return np.asarray(value).tolist()


def _group_argmax(probs, exclusive_columns) -> np.ndarray:
    forced = np.zeros(probs.shape, dtype=bool)
    rows = np.arange(probs.shape[0])
    for columns in exclusive_columns:
        forced[rows, columns[np.argmax(probs[:, columns], axis=1)]] = True
    return forced


def _fit_threshold(probs, y_true, exclusive_columns: list, rule) -> tuple:
    """(threshold, score) on the rule's grid: each exclusive group contributes its argmax, the
    other columns their labels at or above the threshold, then the min/max clamp (which trims
    thresholded labels first and tops up from them first, as enforce_cardinality does)."""
    exclusive = np.zeros(probs.shape[1], dtype=bool)
    for columns in exclusive_columns:
        exclusive[columns] = True
    n_true = y_true.sum(axis=1)
    rows = np.arange(probs.shape[0])
    forced_hits, n_forced = _forced_hits(probs, y_true, exclusive_columns, rule.max_labels)
    free = probs[:, ~exclusive]
    top = TopLabels(free, max(rule.max_labels - n_forced, 0))
    hits = top.hits(y_true[:, ~exclusive])
    grid = threshold_grid(rule.n_thresholds)
    counts = counts_at_thresholds(free, grid)
    lo = min(max(rule.min_labels - n_forced, 0), top.depth)
    scores = np.empty(len(grid))
    for g in range(len(grid)):
        sizes = np.clip(counts[:, g], lo, top.depth)
        scores[g] = f1_from_counts(forced_hits + hits[rows, sizes], n_forced + sizes, n_true, rule.metric)
    best = int(np.argmax(scores))
    return float(grid[best]), float(scores[best])


def _forced_hits(probs, y_true, exclusive_columns: list, max_labels: int) -> tuple:
    """True positives among the forced group labels that survive the max clamp, and their count."""
    if not exclusive_columns:
        return 0, 0
    forced = _group_argmax(probs, exclusive_columns)
    n_kept = min(len(exclusive_columns), max_labels)
    top = TopLabels(np.where(forced, probs, -1.0), n_kept)
    return top.hits(y_true)[:, n_kept], n_kept


# ---------------------------------------------------------------- honest scores

def nested_cv_predict(rule_name: str, probs, y_true, folds, params: dict | None = None) -> np.ndarray:
    """Label sets for every row, each predicted by the rule fitted on the other folds' rows only.

    `folds` holds one fold id per row (the run's folds, so that the decision stage never sees a
    row that helped fit the rule predicting it)."""
    probs = check_probabilities(probs)
    y_true = check_truth(y_true, probs.shape)
    folds = np.asarray(folds)
    if folds.shape != (probs.shape[0],):
        raise ValueError(f"folds: need one fold id per row ({probs.shape[0]}), got shape {folds.shape}")
    fold_ids = np.unique(folds)
    if len(fold_ids) < 2:
        raise ValueError(f"folds: need at least 2 distinct folds to fit on some and predict others, got {fold_ids}")
    predicted = np.zeros(probs.shape, dtype=bool)
    for fold in progress(fold_ids, desc=f"decision {rule_name}", leave=False, disable=len(fold_ids) < 8):
        held_out = folds == fold
        rule = make_rule(rule_name, **(params or {})).fit(probs[~held_out], y_true[~held_out])
        predicted[held_out] = rule.predict(probs[held_out])
    return predicted
