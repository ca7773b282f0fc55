"""Gradient-boosted stackers: one small XGBoost per label on the label's features (xgboost), and
one XGBoost over long-format (image, label) rows shared by every label (xgboost_long). Both boost
from the members' mean log-odds by default, so a tree that adds nothing leaves the mean."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated

import numpy as np
import xgboost as xgb
from annotated_types import Ge, Interval

from fashion_stack.core import atomic
from fashion_stack.ensemble.stackers.base import (Stacker, log, log_loss_of_logit, logit, register_stacker,
                                                  stacker_settings)
from fashion_stack.ensemble.stackers.linear import LINEAR_MIN_POSITIVES, fit_logistic
from fashion_stack.ensemble.stackers.per_label import PerLabelStacker, stratified_split, too_rare
from fashion_stack.features.stacker_inputs import LABEL_FEATURE, long_features, select_context_labels


@register_stacker("xgboost")
@stacker_settings
class XGBoostStacker(PerLabelStacker):
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

    n_estimators: Annotated[int, Ge(1)] = 300  # at most; early stopping picks the number of trees
    max_depth: Annotated[int, Ge(1)] = 3
    learning_rate: Annotated[float, Ge(0)] = 0.05  # slow and shrunk: pools of a few hundred images overfit fast
    subsample: Annotated[float, Interval(gt=0, le=1)] = 0.8
    colsample_bytree: Annotated[float, Interval(gt=0, le=1)] = 0.8
    early_stopping_rounds: Annotated[int, Ge(1)] = 20
    min_positives: Annotated[int, Ge(1)] = 10  # rarer labels keep the members' mean (the linear model without prior_margin)
    n_jobs: Annotated[int, Ge(1)] = 2  # labels fitted at a time
    n_context: Annotated[int, Ge(0)] = 8  # other labels' mean probabilities per label's features (label correlation)
    max_bin: Annotated[int, Ge(2)] = 64  # hist bins; ~20 probability columns need no more
    inner_fraction: Annotated[float, Interval(gt=0, lt=1)] = 0.2  # training rows held out for early stopping
    seed: int = 0
    prior_margin: bool = True  # boost from the log-odds of the members' mean (trees learn corrections)
    min_child_weight: Annotated[float, Ge(0)] = 1.0
    reg_lambda: Annotated[float, Ge(0)] = 5.0  # L2 on leaf values

    def _booster_params(self) -> dict:
        return {"objective": "binary:logistic", "eval_metric": "logloss", "tree_method": "hist",
                "max_depth": self.max_depth, "eta": self.learning_rate, "subsample": self.subsample,
                "colsample_bytree": self.colsample_bytree, "max_bin": self.max_bin,
                "min_child_weight": self.min_child_weight, "reg_lambda": self.reg_lambda, "nthread": 1,
                "seed": self.seed, "verbosity": 0}

    def _fit_label(self, X, y_label):
        if too_rare(y_label, self.min_positives):
            if self.prior_margin or too_rare(y_label, LINEAR_MIN_POSITIVES):
                return ("mean", None)
            return ("linear", fit_logistic(X, y_label, self.probability_columns_, 1.0, 200))
        fit_rows, stop_rows = stratified_split(y_label, self.inner_fraction, self.seed)
        margin = self._margin(X)
        train = xgb.QuantileDMatrix(X[fit_rows], y_label[fit_rows], max_bin=self.max_bin, nthread=1,
                                    base_margin=None if margin is None else margin[fit_rows])
        inner = xgb.QuantileDMatrix(X[stop_rows], y_label[stop_rows], ref=train, max_bin=self.max_bin,
                                    nthread=1, base_margin=None if margin is None else margin[stop_rows])
        history = {}
        booster = xgb.train(self._booster_params(), train, num_boost_round=self.n_estimators,
                            evals=[(inner, "inner")], early_stopping_rounds=self.early_stopping_rounds,
                            evals_result=history, verbose_eval=False)
        if margin is not None and log_loss_of_logit(y_label[stop_rows], margin[stop_rows]) <= min(history["inner"]["logloss"]):
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
                model = _read_booster(Path(directory) / "boosters" / f"label_{label_id}.ubj")
            models.append((kind, model))
        stacker.label_models_ = models
        return stacker


def _read_booster(path: Path) -> xgb.Booster:
    booster = xgb.Booster()
    booster.load_model(bytearray(path.read_bytes()))
    return booster


@register_stacker("xgboost_long")
@stacker_settings
class LongFormatXGBoostStacker(Stacker):
    """One XGBoost model over (image, label) rows (as the 2019 iMet winner stacked): each
    member's probability for the label and its rank within the image, pairwise products of the
    members' probabilities, their mean / max / spread, the label itself (categorical) and its
    training frequency, image-level summaries (sum of probabilities, the image's top
    probability, the label's group top / rank / sum) and the mean probability of the label's
    `n_context` context labels (chosen on the training rows). Every label is learnt from every other
    label's rows, so rare labels borrow from common ones instead of falling back to the mean.

    Rows are each image's `candidates` most probable labels by the members' mean (0: every label);
    the other cells keep the members' mean, which is what a booster boosting from the mean gives a
    cell it has nothing to say about, and which costs 228 / candidates times less to learn (the
    true labels outside an image's top 48 are few and their mean is tiny). Rows are built
    `chunk_images` images at a time and fed to XGBoost through a DataIter, so only the binned
    matrix (about one byte per cell) is held, not the float rows. Early stopping on
    `inner_fraction` of the training images (whole images: an image's rows are correlated), cut to
    the best iteration; with `prior_margin` the booster starts from the members' mean log-odds and
    keeps exactly the mean (fallback_labels_ = every label) when no tree improves the inner rows'
    log-loss. `n_jobs` is XGBoost's thread count."""

    n_estimators: Annotated[int, Ge(1)] = 300
    max_depth: Annotated[int, Ge(1)] = 6
    learning_rate: Annotated[float, Ge(0)] = 0.1
    subsample: Annotated[float, Interval(gt=0, le=1)] = 0.8
    colsample_bytree: Annotated[float, Interval(gt=0, le=1)] = 0.8
    min_child_weight: Annotated[float, Ge(0)] = 5.0
    reg_lambda: Annotated[float, Ge(0)] = 5.0
    max_bin: Annotated[int, Ge(2)] = 64
    early_stopping_rounds: Annotated[int, Ge(1)] = 20
    inner_fraction: Annotated[float, Interval(gt=0, lt=1)] = 0.2  # training images held out for early stopping
    prior_margin: bool = True  # boost from the log-odds of the members' mean
    n_context: Annotated[int, Ge(0)] = 4  # columns holding the mean probability of each label's best-correlated other labels
    candidates: Annotated[int, Ge(0)] = 48  # rows: each image's most probable labels by the mean (0: all); the rest keep the mean
    # XGBoost threads: one by default, since OpenMP threads that other processes' load preempts
    # spin and stall (measured on 2 loaded cores: 2 threads took 7x the CPU and 10x the wall time of 1)
    n_jobs: Annotated[int, Ge(1)] = 1
    chunk_images: Annotated[int, Ge(1)] = 2048  # images turned into rows at a time (bounds the float rows in memory)
    seed: int = 0

    def _booster_params(self) -> dict:
        return {"objective": "binary:logistic", "eval_metric": "logloss", "tree_method": "hist",
                "max_depth": self.max_depth, "eta": self.learning_rate, "subsample": self.subsample,
                "colsample_bytree": self.colsample_bytree, "min_child_weight": self.min_child_weight,
                "reg_lambda": self.reg_lambda, "max_bin": self.max_bin, "nthread": int(self.n_jobs),
                "seed": self.seed, "verbosity": 0}

    def _fit(self, stack, y):
        self.label_frequency_ = y.mean(axis=0).astype(np.float32)
        self.context_labels_ = select_context_labels(stack, y, self.n_context)
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(len(stack))
        n_stop = max(1, int(round(self.inner_fraction * len(stack))))
        stop_images, fit_images = np.sort(order[:n_stop]), np.sort(order[n_stop:])
        train = xgb.QuantileDMatrix(self._rows(stack.take(fit_images), y[fit_images]), max_bin=self.max_bin,
                                    enable_categorical=True, nthread=int(self.n_jobs))
        inner = xgb.QuantileDMatrix(self._rows(stack.take(stop_images), y[stop_images]), ref=train,
                                    max_bin=self.max_bin, enable_categorical=True, nthread=int(self.n_jobs))
        history = {}
        booster = xgb.train(self._booster_params(), train, num_boost_round=self.n_estimators,
                            evals=[(inner, "inner")], early_stopping_rounds=self.early_stopping_rounds,
                            evals_result=history, verbose_eval=False)
        self.feature_names_ = self._features(stack.take([0]))[1]
        if self.prior_margin and self._mean_log_loss(stack.take(stop_images), y[stop_images]) <= min(history["inner"]["logloss"]):
            log.info("xgboost_long stacker: no tree beat the members' mean on the inner images; keeping the mean")
            self.booster_ = None
            self.fallback_labels_ = list(self.label_ids_)
            return
        self.booster_ = booster[: booster.best_iteration + 1]
        self.best_iteration_ = int(booster.best_iteration)

    def _features(self, stack) -> tuple:
        """(X, names, cells): the candidate rows' features and their flat (image x label) positions."""
        X, names = long_features(stack, self.label_frequency_, self.context_labels_)
        cells = candidate_cells(stack.mean, self.candidates)
        return X[cells], names, cells

    def _rows(self, stack, y) -> "_LongRows":
        return _LongRows(stack, y, self._features, self.chunk_images, self.prior_margin)

    def _mean_log_loss(self, stack, y) -> float:
        """The members' mean's log-loss on the candidate rows (what the inner log-loss is over)."""
        cells = candidate_cells(stack.mean, self.candidates)
        return log_loss_of_logit(y.reshape(-1)[cells], logit(stack.mean).reshape(-1)[cells])

    def _predict(self, stack):
        if self.booster_ is None:
            return stack.mean
        out = stack.mean.astype(np.float32).copy()
        for start in range(0, len(stack), self.chunk_images):
            rows = np.arange(start, min(start + self.chunk_images, len(stack)))
            chunk = stack.take(rows)
            X, _, cells = self._features(chunk)
            margin = logit(chunk.mean).reshape(-1)[cells] if self.prior_margin else None
            block = out[rows].reshape(-1)
            block[cells] = self.booster_.inplace_predict(X, base_margin=margin)
            out[rows] = block.reshape(len(rows), stack.n_labels)
        return out

    def save(self, directory: str | Path) -> None:
        """The booster in XGBoost's own UBJSON format (booster.ubj); the rest joblib."""
        directory = Path(directory)
        if self.booster_ is not None:
            atomic.write_bytes(directory / "booster.ubj", bytes(self.booster_.save_raw(raw_format="ubj")))
        shell = copy.copy(self)
        shell.booster_ = None
        Stacker.save(shell, directory)

    @classmethod
    def load(cls, directory: str | Path) -> "LongFormatXGBoostStacker":
        stacker = super().load(directory)
        if stacker.fallback_labels_ != list(stacker.label_ids_):
            stacker.booster_ = _read_booster(Path(directory) / "booster.ubj")
        return stacker


def candidate_cells(mean_probs: np.ndarray, candidates: int) -> np.ndarray:
    """Flat (image x label) positions of each image's `candidates` most probable labels (all
    cells when candidates is 0 or at least the number of labels), in increasing order."""
    n_images, n_labels = mean_probs.shape
    if candidates <= 0 or candidates >= n_labels:
        return np.arange(n_images * n_labels)
    top = np.argpartition(-mean_probs, candidates - 1, axis=1)[:, :candidates]
    return np.sort((np.arange(n_images)[:, None] * n_labels + top).reshape(-1))


class _LongRows(xgb.DataIter):
    """Long-format rows of a stack, `chunk_images` images per batch, for XGBoost's QuantileDMatrix."""

    def __init__(self, stack, y, features, chunk_images: int, prior_margin: bool):
        self._stack, self._y, self._features = stack, y, features
        self._chunk, self._prior_margin = max(1, int(chunk_images)), prior_margin
        self._starts = list(range(0, len(stack), self._chunk))
        self._next = 0
        super().__init__()

    def next(self, input_data) -> bool:
        if self._next >= len(self._starts):
            return False
        start = self._starts[self._next]
        rows = np.arange(start, min(start + self._chunk, len(self._stack)))
        chunk = self._stack.take(rows)
        X, names, cells = self._features(chunk)
        types = ["c" if name == LABEL_FEATURE else "q" for name in names]
        margin = logit(chunk.mean).reshape(-1)[cells] if self._prior_margin else None
        input_data(data=X, label=self._y[rows].reshape(-1)[cells], base_margin=margin, feature_types=types)
        self._next += 1
        return True

    def reset(self) -> None:
        self._next = 0
