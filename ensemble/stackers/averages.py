"""Averages of the members: the plain mean (the baseline every stacker must beat) and a weighted
mean with one weight per member."""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize

from fashion_stack.core.metrics import LOG_LOSS_EPS, cell_log_losses
from fashion_stack.ensemble.stackers.base import Stacker, register_stacker, stacker_settings


@register_stacker("mean")
@stacker_settings
class MeanStacker(Stacker):
    """The plain mean of members' probabilities: the baseline every stacker must beat."""

    def _fit(self, stack, y):
        self.n_members_ = stack.n_members

    def _predict(self, stack):
        return stack.mean


@register_stacker("weighted")
@stacker_settings
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
    p = np.clip(cells @ weights, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
    loss = np.mean(cell_log_losses(truth, p))
    dloss_dp = (p - truth) / (p * (1 - p)) / len(truth)
    return loss, cells.T @ dloss_dp
