"""Stackers: second-level models that turn members' probabilities into one probability per label.

All follow scikit-learn's estimator contract (`__init__` stores, `fit` returns self, fitted
attributes end in `_`, `predict_proba` refuses to run unfitted) and take either a
features.stacker_inputs.MemberStack or a 3-D array (images, members, labels).
Registered by name: mean (baseline), weighted, linear, xgboost. See make_stacker.
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import ClassVar

import joblib
import numpy as np
import xgboost as xgb
from joblib import Parallel, delayed
from scipy.optimize import minimize
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits

from core import atomic
from core.log import get_logger, progress
from core.registry import Registry
from features.stacker_inputs import (PROBABILITY_FEATURES, MemberStack, StackerInputError,
                                     label_features, select_context_labels)

STACKERS = Registry("stacker")
MODEL_FILE = "stacker.joblib"
NAME_FILE = "stacker.json"
LINEAR_MIN_POSITIVES = 3  # a logistic regression needs a few of each class
PROBABILITY_FLOOR = 1e-6  # probabilities are clipped to [floor, 1 - floor] before taking logits
log = get_logger("stack")


register_stacker = STACKERS.register


def make_stacker(name: str, **params) -> "Stacker":
    """A new, unfitted stacker by registered name."""
    return STACKERS.create(name, **params)


def stacker_params(name: str, stack_config) -> dict:
    """Constructor arguments for `name` from core.config.StackConfig (XGBoost's come from
    stack.xgboost; the context width and the number of parallel labels are shared with the
    linear stacker)."""
    if name == "xgboost":
        return dataclasses.asdict(stack_config.xgboost)
    if name == "linear":
        return {"n_context": stack_config.xgboost.n_context, "n_jobs": stack_config.xgboost.n_jobs}
    return {}


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
    """Shared fit / predict plumbing; subclasses implement _fit(stack, y) and _predict(stack)."""

    name: ClassVar[str] = ""

    def fit(self, member_probs, y) -> "Stacker":
        stack = as_member_stack(member_probs)
        y = _check_truth(y, stack)
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


def _check_truth(y, stack: MemberStack) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (len(stack), stack.n_labels):
        raise StackerInputError(f"y must be (images, labels) = {(len(stack), stack.n_labels)}, got {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise StackerInputError("y must be a 0/1 multi-hot matrix")
    return y.astype(np.uint8)


@register_stacker("mean")
class MeanStacker(Stacker):
    """The plain mean of members' probabilities: the baseline every stacker must beat."""

    def _fit(self, stack, y):
        self.n_members_ = stack.n_members

    def _predict(self, stack):
        return stack.mean


@register_stacker("weighted")
class WeightedMeanStacker(Stacker):
    """A weighted mean of members, one non-negative weight per member shared by all labels
    (summing to 1), fitted by minimising log-loss over every (image, label) cell.

    Shared rather than per label or group: M parameters fitted on n x labels cells cannot
    overfit, and rare labels borrow the weights the frequent ones establish.
    """

    def _fit(self, stack, y):
        cells = stack.probs.transpose(0, 2, 1).reshape(-1, stack.n_members).astype(np.float64)
        truth = y.reshape(-1).astype(np.float64)
        start = np.full(stack.n_members, 1.0 / stack.n_members)
        result = minimize(_log_loss_and_gradient, start, args=(cells, truth), jac=True,
                          method="SLSQP", bounds=[(0.0, 1.0)] * stack.n_members,
                          constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}])
        weights = np.clip(result.x, 0.0, None)
        self.weights_ = (weights / weights.sum()).astype(np.float32)

    def _predict(self, stack):
        return np.einsum("nml,m->nl", stack.probs, self.weights_)


def _log_loss_and_gradient(weights, cells, truth):
    p = np.clip(cells @ weights, 1e-7, 1 - 1e-7)
    loss = -np.mean(truth * np.log(p) + (1 - truth) * np.log(1 - p))
    dloss_dp = (p - truth) / (p * (1 - p)) / len(truth)
    return loss, cells.T @ dloss_dp


class _PerLabelStacker(Stacker):
    """One model per label on label_features; labels too rare to learn fall back to a simpler
    model. label_models_[j] is (kind, model) with kind in {primary kind, "linear", "mean"}."""

    primary: ClassVar[str] = ""

    def _fit(self, stack, y):
        self.context_labels_ = select_context_labels(stack, y, self.n_context)
        # every label's design matrix has the same column kinds, so one mask serves all
        names = label_features(stack.take([0]), 0, self.context_labels_[0])[1]
        self.probability_columns_ = np.array([name.startswith(PROBABILITY_FEATURES) for name in names])
        self.mean_column_ = names.index("mean")
        self._prepare(stack, y)
        self.label_models_ = self._map_labels(self._fit_one, stack, y, f"{self.name} labels")
        self.fallback_labels_ = [lid for lid, (kind, _) in zip(self.label_ids_, self.label_models_)
                                 if kind != self.primary]
        if self.fallback_labels_:
            rare = sum(_too_rare(y[:, j], self.min_positives) for j in range(stack.n_labels))
            no_gain = len(self.fallback_labels_) - rare
            log.info("%s stacker: %d label(s) keep a simpler model: %d with fewer than %d positives "
                     "or negatives%s: %s", self.name, len(self.fallback_labels_), rare, self.min_positives,
                     f", {no_gain} where no tree beat the members' mean" if no_gain else "",
                     self.fallback_labels_[:20])

    def _prepare(self, stack, y) -> None:
        """Choices shared by all labels, made before any label's fit (none by default)."""

    def _map_labels(self, fit_label, stack, y, desc: str) -> list:
        """[fit_label(stack, y[:, j], j) for every label j], n_jobs labels at a time."""
        # One thread per label's fit: BLAS and OpenMP pools inside each would contend for the cores
        # the labels already share, and their spinning threads stall when other processes load them.
        with threadpool_limits(limits=1):
            fitted = Parallel(n_jobs=self._label_jobs(), backend="threading", return_as="generator")(
                delayed(fit_label)(stack, y[:, j], j) for j in range(stack.n_labels))
            return list(progress(fitted, total=stack.n_labels, desc=desc, leave=False))

    def _fit_one(self, stack, y_label, j):
        X = self._features(stack, j)
        return self._fit_label(X, y_label)

    def _features(self, stack, j):
        return label_features(stack, j, self.context_labels_[j])[0]

    def _label_jobs(self) -> int:
        # Each label's model is too small to split across threads, so labels run n_jobs at a time
        # in threads; every label's fit is the same whatever n_jobs. Boosters gain (XGBoost releases
        # the GIL); a logistic regression on ~20 columns spends most of its time in Python holding
        # it, so the linear stacker gains little.
        return max(1, int(self.n_jobs))

    def _predict(self, stack):
        out = np.empty((len(stack), stack.n_labels), dtype=np.float32)
        for j, (kind, model) in enumerate(self.label_models_):
            if kind == "mean":
                out[:, j] = stack.mean[:, j]
            else:
                out[:, j] = self._predict_label(kind, model, self._features(stack, j))
        return out

    def _predict_label(self, kind: str, model, X: np.ndarray) -> np.ndarray:
        return model.predict_proba(X)[:, 1]

    def _prior_logit(self, X: np.ndarray) -> np.ndarray:
        """Log-odds of the members' mean probability, per row of a label's design matrix."""
        return _logit(X[:, [self.mean_column_]], np.array([True]))[:, 0]


def _too_rare(y_label: np.ndarray, min_positives: int) -> bool:
    positives = int(y_label.sum())
    return min(positives, y_label.size - positives) < min_positives


def _logit(X: np.ndarray, columns: np.ndarray) -> np.ndarray:
    # the linear model is additive in log-odds, so it sees probability columns as logits
    out = np.asarray(X, dtype=np.float64).copy()
    p = np.clip(out[:, columns], PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)
    out[:, columns] = np.log(p / (1 - p))
    return out


def _fit_logistic(X, y_label, probability_columns, C, max_iter):
    model = make_pipeline(FunctionTransformer(_logit, kw_args={"columns": probability_columns}),
                          StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    return model.fit(X, y_label)


def _fit_prior_logistic(X, y_label, probability_columns, prior_logit, Cs, max_iter) -> list:
    """[(feature transform, coefficients, intercept) for each C in Cs] of an L2-penalised logistic
    regression whose log-odds are prior_logit + intercept + features @ coefficients: the penalty
    shrinks towards the prior instead of towards a constant. scikit-learn's LogisticRegression
    has no offset, so the same objective (C x summed log-loss + half the squared coefficients,
    intercept free) is minimised here with L-BFGS, each C starting from the previous solution."""
    transform = make_pipeline(FunctionTransformer(_logit, kw_args={"columns": probability_columns}),
                              StandardScaler())
    Z = transform.fit_transform(X)
    y = y_label.astype(np.float64)

    def loss_and_gradient(params, C):
        log_odds = prior_logit + params[0] + Z @ params[1:]
        residual = C * (1.0 / (1.0 + np.exp(-log_odds)) - y)
        loss = C * np.sum(np.logaddexp(0.0, log_odds) - y * log_odds) + 0.5 * params[1:] @ params[1:]
        return loss, np.concatenate([[residual.sum()], Z.T @ residual + params[1:]])

    models, params = [], np.zeros(Z.shape[1] + 1)
    for C in Cs:
        params = minimize(loss_and_gradient, params, args=(C,), jac=True, method="L-BFGS-B",
                          options={"maxiter": max_iter}).x
        models.append((transform, params[1:].copy(), float(params[0])))
    return models


@register_stacker("linear")
class LinearStacker(_PerLabelStacker):
    """Per-label L2-regularised logistic regression on the label's features (probabilities as
    logits, standardised). With `prior_offset` (the default) the members' mean log-odds is a fixed
    offset, so the model learns corrections to the mean and its penalty shrinks towards the mean
    rather than towards the label's base rate. `C="auto"` picks one C for all labels from C_GRID
    by the log-loss of `inner_folds`-fold CV on the training rows, summed over labels (the right
    strength depends on the pool's size and how well calibrated the members are: about 0.03 on
    800 images of two small CNNs, 0.3-1 on thousands); the choice is C_. Labels with fewer than
    `min_positives` positives (or negatives) in the training rows fall back to the members'
    mean. `n_jobs` labels are fitted at a time."""

    primary = "linear"
    C_GRID: ClassVar[tuple] = (0.01, 0.03, 0.1, 0.3, 1.0)

    def __init__(self, C="auto", n_context: int = 8, min_positives: int = LINEAR_MIN_POSITIVES,
                 max_iter: int = 200, n_jobs: int = 2, prior_offset: bool = True, inner_folds: int = 3,
                 seed: int = 0):
        self.C = C
        self.n_context = n_context
        self.min_positives = min_positives
        self.max_iter = max_iter
        self.n_jobs = n_jobs
        self.prior_offset = prior_offset
        self.inner_folds = inner_folds
        self.seed = seed

    def _prepare(self, stack, y):
        if self.C != "auto":
            if isinstance(self.C, bool) or not (isinstance(self.C, (int, float)) and self.C > 0):
                raise ValueError(f"LinearStacker: C must be a positive number or 'auto', got {self.C!r}")
            self.C_ = float(self.C)
            return
        losses = np.zeros(len(self.C_GRID))
        rows = KFold(self.inner_folds, shuffle=True, random_state=self.seed).split(np.arange(len(stack)))
        for inner, (fit_rows, held_rows) in enumerate(rows):
            # context labels are chosen again on the inner fit rows, or the held rows' truth would
            # leak into their features and favour the weakest penalty
            fit, held = stack.take(fit_rows), stack.take(held_rows)
            context = select_context_labels(fit, y[fit_rows], self.n_context)
            losses += np.sum(self._map_labels(
                lambda _, y_fit, j: self._held_out_losses(fit, held, y_fit, y[held_rows, j], context[j], j),
                fit, y[fit_rows], f"linear: choosing C ({inner + 1}/{self.inner_folds})"), axis=0)
        self.C_ = float(self.C_GRID[int(np.argmin(losses))])
        log.info("linear stacker: C=%g chosen by %d-fold inner log-loss %s over C in %s", self.C_,
                 self.inner_folds, np.round(losses, 1).tolist(), list(self.C_GRID))

    def _held_out_losses(self, fit, held, y_fit, y_held, context, j) -> np.ndarray:
        """Summed log-loss on `held` of the label's model fitted on `fit`, at each C in C_GRID
        (zeros for a label too rare in `fit`)."""
        losses = np.zeros(len(self.C_GRID))
        if _too_rare(y_fit, self.min_positives):
            return losses
        X_fit, X_held = label_features(fit, j, context)[0], label_features(held, j, context)[0]
        for k, model in enumerate(self._fit_models(X_fit, y_fit, self.C_GRID)):
            p = np.clip(self._predict_label("linear", model, X_held), 1e-7, 1 - 1e-7)
            losses[k] = -np.sum(y_held * np.log(p) + (1 - y_held) * np.log(1 - p))
        return losses

    def _fit_label(self, X, y_label):
        if _too_rare(y_label, self.min_positives):
            return ("mean", None)
        return ("linear", self._fit_models(X, y_label, [self.C_])[0])

    def _fit_models(self, X, y_label, Cs) -> list:
        """The label's model at each C in Cs."""
        if self.prior_offset:
            return _fit_prior_logistic(X, y_label, self.probability_columns_, self._prior_logit(X),
                                       Cs, self.max_iter)
        return [_fit_logistic(X, y_label, self.probability_columns_, C, self.max_iter) for C in Cs]

    def _predict_label(self, kind, model, X):
        if isinstance(model, tuple):
            transform, coefficients, intercept = model
            log_odds = self._prior_logit(X) + intercept + transform.transform(X) @ coefficients
            return 1.0 / (1.0 + np.exp(-log_odds))
        return super()._predict_label(kind, model, X)


@register_stacker("xgboost")
class XGBoostStacker(_PerLabelStacker):
    """One small hist-GBDT per label on the label's ~20 features, early-stopped on a stratified
    inner split of the training rows and cut to its best iteration.

    With `prior_margin` (the default) each booster starts from the log-odds of the members' mean
    probability (XGBoost's base_margin, at fit and predict), so its trees learn corrections to the
    mean rather than the whole probability: a label keeps the mean's fine ranking where the trees
    have nothing to add, and when no tree improves the early-stopping rows' log-loss over the mean
    the label keeps the mean exactly. Labels with fewer than `min_positives` positives (or
    negatives) keep the mean (with `prior_margin`) or fall back to the linear model (without it;
    the mean when even that is too rare); both are listed in fallback_labels_."""

    primary = "xgboost"

    def __init__(self, n_estimators: int = 300, max_depth: int = 3, learning_rate: float = 0.05,
                 subsample: float = 0.8, colsample_bytree: float = 0.8,
                 early_stopping_rounds: int = 20, min_positives: int = 10, n_jobs: int = 2,
                 n_context: int = 8, max_bin: int = 64, inner_fraction: float = 0.2, seed: int = 0,
                 prior_margin: bool = True, min_child_weight: float = 1.0, reg_lambda: float = 5.0):
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.early_stopping_rounds = early_stopping_rounds
        self.min_positives = min_positives
        self.n_jobs = n_jobs
        self.n_context = n_context
        self.max_bin = max_bin
        self.inner_fraction = inner_fraction
        self.seed = seed
        self.prior_margin = prior_margin
        self.min_child_weight = min_child_weight
        self.reg_lambda = reg_lambda

    def _booster_params(self) -> dict:
        return {"objective": "binary:logistic", "eval_metric": "logloss", "tree_method": "hist",
                "max_depth": self.max_depth, "eta": self.learning_rate, "subsample": self.subsample,
                "colsample_bytree": self.colsample_bytree, "max_bin": self.max_bin,
                "min_child_weight": self.min_child_weight, "reg_lambda": self.reg_lambda, "nthread": 1,
                "seed": self.seed, "verbosity": 0}

    def _fit_label(self, X, y_label):
        if _too_rare(y_label, self.min_positives):
            if self.prior_margin or _too_rare(y_label, LINEAR_MIN_POSITIVES):
                return ("mean", None)
            return ("linear", _fit_logistic(X, y_label, self.probability_columns_, 1.0, 200))
        fit_rows, stop_rows = _stratified_split(y_label, self.inner_fraction, self.seed)
        margin = self._margin(X)
        train = xgb.QuantileDMatrix(X[fit_rows], y_label[fit_rows], max_bin=self.max_bin, nthread=1,
                                    base_margin=None if margin is None else margin[fit_rows])
        inner = xgb.QuantileDMatrix(X[stop_rows], y_label[stop_rows], ref=train, max_bin=self.max_bin,
                                    nthread=1, base_margin=None if margin is None else margin[stop_rows])
        history = {}
        booster = xgb.train(self._booster_params(), train, num_boost_round=self.n_estimators,
                            evals=[(inner, "inner")], early_stopping_rounds=self.early_stopping_rounds,
                            evals_result=history, verbose_eval=False)
        if margin is not None and _log_loss(y_label[stop_rows], margin[stop_rows]) <= min(history["inner"]["logloss"]):
            return ("mean", None)  # no tree beats the members' mean on rows the trees never saw
        return ("xgboost", booster[: booster.best_iteration + 1])

    def _margin(self, X):
        return self._prior_logit(X) if self.prior_margin else None

    def _predict_label(self, kind, model, X):
        if kind == "xgboost":
            return model.inplace_predict(X, base_margin=self._margin(X))
        return super()._predict_label(kind, model, X)

    def save(self, directory: str | Path) -> None:
        """Boosters in XGBoost's own UBJSON format, boosters/label_<labelId>.ubj; the rest joblib."""
        directory = Path(directory)
        for label_id, (kind, booster) in zip(self.label_ids_, self.label_models_):
            if kind == "xgboost":
                atomic.write_bytes(directory / "boosters" / f"label_{label_id}.ubj",
                                   bytes(booster.save_raw(raw_format="ubj")))
        shell = copy.copy(self)
        shell.label_models_ = [(kind, None if kind == "xgboost" else model)
                               for kind, model in self.label_models_]
        Stacker.save(shell, directory)

    @classmethod
    def load(cls, directory: str | Path) -> "XGBoostStacker":
        stacker = super().load(directory)
        models = []
        for label_id, (kind, model) in zip(stacker.label_ids_, stacker.label_models_):
            if kind == "xgboost":
                model = xgb.Booster()
                model.load_model(bytearray((Path(directory) / "boosters" / f"label_{label_id}.ubj").read_bytes()))
            models.append((kind, model))
        stacker.label_models_ = models
        return stacker


def _log_loss(y_label: np.ndarray, logit: np.ndarray) -> float:
    """Mean binary log-loss of log-odds `logit` (as XGBoost's logloss, from the logit for accuracy)."""
    return float(np.mean(np.logaddexp(0.0, logit) - y_label * logit))


def _stratified_split(y_label: np.ndarray, fraction: float, seed: int) -> tuple:
    """(fit rows, early-stopping rows): `fraction` of each class held out, at least one of each."""
    rng = np.random.default_rng(seed)
    held = []
    for cls in (0, 1):
        rows = rng.permutation(np.flatnonzero(y_label == cls))
        held.append(rows[: max(1, int(round(fraction * rows.size)))])
    stop = np.sort(np.concatenate(held))
    fit = np.setdiff1d(np.arange(y_label.size), stop, assume_unique=True)
    return fit, stop
