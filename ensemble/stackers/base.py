"""What every stacker shares: the registry, the estimator base class and its persistence, the
input checks, and the config -> constructor mapping.

All stackers follow scikit-learn's estimator contract (`__init__` stores, `fit` returns self,
fitted attributes end in `_`, `predict_proba` refuses to run unfitted) and take either a
features.stacker_inputs.MemberStack or a 3-D array (images, members, labels).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import joblib
import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from fashion_stack.core import atomic
from fashion_stack.core.config import as_plugin_spec
from fashion_stack.core.log import get_logger
from fashion_stack.core.metrics import PROBABILITY_FLOOR, logit  # noqa: F401 (the stackers' logit)
from fashion_stack.core.registry import Registry
from fashion_stack.features.stacker_inputs import MemberStack, StackerInputError

STACKERS = Registry("stacker")
MODEL_FILE = "stacker.joblib"
NAME_FILE = "stacker.json"
log = get_logger("stack")

register_stacker = STACKERS.register
# a stacker's settings as a dataclass: __init__ from the fields; scikit-learn's repr, no __eq__
stacker_settings = dataclass(eq=False, repr=False)


def make_stacker(name: str, **params) -> "Stacker":
    """A new, unfitted stacker by registered name."""
    return STACKERS.create(name, **params)


def stacker_params(spec) -> dict:
    """Every constructor argument of a configured stacker (a core.config.PluginSpec or a bare
    name): its params checked against the settings the stacker class declares, defaults filled."""
    spec = as_plugin_spec(spec)
    return STACKERS.resolve(spec.name, spec.params, where=f"stack.{spec.name}")


def load_stacker(directory: str | Path) -> "Stacker":
    """A fitted stacker saved by `save(directory)`, whichever kind it is."""
    name = atomic.read_json(Path(directory) / NAME_FILE)["stacker"]
    return STACKERS[name].load(directory)


def as_member_stack(member_probs) -> MemberStack:
    """A MemberStack as is, or a 3-D array (images, members, labels) wrapped in one."""
    if isinstance(member_probs, MemberStack):
        return member_probs
    probs = np.asarray(member_probs, dtype=np.float32)
    if probs.ndim != 3:
        raise StackerInputError(f"member probabilities must be 3-D (images, members, labels), got {probs.shape}")
    if not np.isfinite(probs).all():
        rows = np.flatnonzero(~np.isfinite(probs).all(axis=(1, 2)))
        raise StackerInputError(f"non-finite member probabilities in rows {rows[:10].tolist()}")
    n, m, labels = probs.shape
    return MemberStack(tuple(map(str, range(n))), tuple(f"member{i}" for i in range(m)),
                       tuple(map(str, range(labels))), probs)


class Stacker(BaseEstimator):
    """Shared fit / predict plumbing; subclasses implement _fit(stack, y) and _predict(stack).

    A stacker's settings are its dataclass fields, declared once on its class with their defaults
    and constraints (`n_estimators: Annotated[int, Ge(1)] = 300`, core.registry): the dataclass
    writes the `__init__` scikit-learn's get_params reads, and the config loader checks YAML
    against the same fields. Register a subclass with `@register_stacker(name)` over
    `@stacker_settings`."""

    name: ClassVar[str] = ""

    def fit(self, member_probs, y) -> "Stacker":
        stack = as_member_stack(member_probs)
        y = check_truth(y, stack)
        self.member_names_ = stack.member_names
        self.label_ids_ = stack.label_ids
        self.fallback_labels_ = []
        self._fit(stack, y)
        return self

    def predict_proba(self, member_probs) -> np.ndarray:
        check_is_fitted(self)
        stack = as_member_stack(member_probs)
        if (stack.n_members, stack.n_labels) != (len(self.member_names_), len(self.label_ids_)):
            raise StackerInputError(
                f"{self.name} stacker was fitted on {len(self.member_names_)} members x "
                f"{len(self.label_ids_)} labels, got {stack.n_members} x {stack.n_labels}")
        return np.clip(self._predict(stack), 0.0, 1.0).astype(np.float32)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        with atomic.atomic_path(directory / MODEL_FILE) as tmp:
            joblib.dump(self, tmp)
        atomic.write_json(directory / NAME_FILE, {"stacker": self.name})

    @classmethod
    def load(cls, directory: str | Path) -> "Stacker":
        stacker = joblib.load(Path(directory) / MODEL_FILE)
        if not isinstance(stacker, cls):
            raise TypeError(f"{directory} holds a {type(stacker).__name__}, not a {cls.__name__}")
        return stacker

    def _fit(self, stack: MemberStack, y: np.ndarray) -> None:
        raise NotImplementedError

    def _predict(self, stack: MemberStack) -> np.ndarray:
        raise NotImplementedError


def check_truth(y, stack: MemberStack) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (len(stack), stack.n_labels):
        raise StackerInputError(f"y must be (images, labels) = {(len(stack), stack.n_labels)}, got {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise StackerInputError("y must be a 0/1 multi-hot matrix")
    return y.astype(np.uint8)


def log_loss_of_logit(y: np.ndarray, log_odds: np.ndarray) -> float:
    """Mean binary log-loss of log-odds (as XGBoost's logloss, from the logit for accuracy)."""
    return float(np.mean(np.logaddexp(0.0, log_odds) - y * log_odds))
