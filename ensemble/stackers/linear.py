"""The linear stacker: per-label L2-regularised logistic regression, by default as a correction
to the members' mean log-odds."""
from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Union

import numpy as np
from annotated_types import Ge, Gt
from scipy.optimize import minimize
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from fashion_stack.core.metrics import cell_log_losses
from fashion_stack.ensemble.stackers.base import log, register_stacker, stacker_settings
from fashion_stack.ensemble.stackers.per_label import PerLabelStacker, logit_columns, too_rare
from fashion_stack.features.stacker_inputs import label_features, select_context_labels

LINEAR_MIN_POSITIVES = 3  # a logistic regression needs a few of each class


def fit_logistic(X, y_label, probability_columns, C, max_iter):
    """scikit-learn's logistic regression on the label's features, probability columns as logits."""
    model = make_pipeline(FunctionTransformer(logit_columns, kw_args={"columns": probability_columns}),
                          StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    return model.fit(X, y_label)


def _fit_prior_logistic(X, y_label, probability_columns, prior_logit, Cs, max_iter) -> list:
    """[(feature transform, coefficients, intercept) for each C in Cs] of an L2-penalised logistic
    regression whose log-odds are prior_logit + intercept + features @ coefficients: the penalty
    shrinks towards the prior instead of towards a constant. scikit-learn's LogisticRegression
    has no offset, so the same objective (C x summed log-loss + half the squared coefficients,
    intercept free) is minimised here with L-BFGS, each C starting from the previous solution."""
    transform = make_pipeline(FunctionTransformer(logit_columns, kw_args={"columns": probability_columns}),
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
@stacker_settings
class LinearStacker(PerLabelStacker):
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

    C: Union[Literal["auto"], Annotated[float, Gt(0)]] = "auto"
    n_context: Annotated[int, Ge(0)] = 8  # other labels' mean probabilities among each label's features
    min_positives: Annotated[int, Ge(1)] = LINEAR_MIN_POSITIVES
    max_iter: Annotated[int, Ge(1)] = 200
    n_jobs: Annotated[int, Ge(1)] = 2  # labels fitted at a time
    prior_offset: bool = True
    inner_folds: Annotated[int, Ge(2)] = 3
    seed: int = 0

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
        if too_rare(y_fit, self.min_positives):
            return losses
        X_fit, X_held = label_features(fit, j, context)[0], label_features(held, j, context)[0]
        for k, model in enumerate(self._fit_models(X_fit, y_fit, self.C_GRID)):
            losses[k] = np.sum(cell_log_losses(y_held, self._predict_label("linear", model, X_held)))
        return losses

    def _fit_label(self, X, y_label):
        if too_rare(y_label, self.min_positives):
            return ("mean", None)
        return ("linear", self._fit_models(X, y_label, [self.C_])[0])

    def _fit_models(self, X, y_label, Cs) -> list:
        """The label's model at each C in Cs."""
        if self.prior_offset:
            return _fit_prior_logistic(X, y_label, self.probability_columns_, self._prior_logit(X),
                                       Cs, self.max_iter)
        return [fit_logistic(X, y_label, self.probability_columns_, C, self.max_iter) for C in Cs]

    def _predict_label(self, kind, model, X):
        if isinstance(model, tuple):
            transform, coefficients, intercept = model
            log_odds = self._prior_logit(X) + intercept + transform.transform(X) @ coefficients
            return 1.0 / (1.0 + np.exp(-log_odds))
        return super()._predict_label(kind, model, X)
