"""Multi-label losses on per-label sigmoid probabilities: loss plug-ins (LOSSES, core.registry),
chosen by the member's `loss` ({name, params}).

With 228 labels and about 8 positives per image, negatives outnumber positives 27 to 1; focal and
asymmetric losses down-weight the many easy negatives that plain cross-entropy averages over.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import keras
from annotated_types import Ge, Interval
from keras import ops

from fashion_stack.core.config import as_plugin_spec
from fashion_stack.core.registry import Registry


@keras.saving.register_keras_serializable(package="fashion")
class AsymmetricLoss(keras.losses.Loss):
    """Ridnik et al., "Asymmetric Loss For Multi-Label Classification" (ICCV 2021).

    positives: -(1 - p)^gamma_pos * log(p)
    negatives: -p_m^gamma_neg * log(1 - p_m), with p_m = max(p - clip, 0)
    averaged over labels (as binary cross-entropy is) so learning rates carry over between losses.
    """

    def __init__(self, gamma_pos: float = 0.0, gamma_neg: float = 4.0, clip: float = 0.05,
                 name: str = "asymmetric_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.gamma_pos = gamma_pos
        self.gamma_neg = gamma_neg
        self.clip = clip

    def call(self, y_true, y_pred):
        eps = keras.backend.epsilon()
        y_true = ops.cast(y_true, y_pred.dtype)
        p = ops.clip(y_pred, eps, 1.0 - eps)
        shifted = ops.maximum(p - self.clip, 0.0) if self.clip > 0 else p
        positive = y_true * ops.power(1.0 - p, self.gamma_pos) * ops.log(p)
        negative = (1.0 - y_true) * ops.power(shifted, self.gamma_neg) * ops.log(ops.clip(1.0 - shifted, eps, 1.0))
        return -ops.mean(positive + negative, axis=-1)

    def get_config(self):
        return {**super().get_config(), "gamma_pos": self.gamma_pos, "gamma_neg": self.gamma_neg, "clip": self.clip}


LOSSES = Registry("loss function")


@LOSSES.register("bce")
@dataclass(frozen=True)
class BinaryCrossEntropyLoss:
    """Plain binary cross-entropy, averaged over labels."""

    def build(self) -> keras.losses.Loss:
        return keras.losses.BinaryCrossentropy()


@LOSSES.register("focal")
@dataclass(frozen=True)
class FocalLoss:
    """Lin et al. 2017: (1 - p_t)^gamma down-weights well-classified cells."""

    gamma: Annotated[float, Ge(0)] = 2.0

    def build(self) -> keras.losses.Loss:
        # class balancing off because per-label positive rates differ by 1000x and one alpha for
        # all of them would favour some labels arbitrarily
        return keras.losses.BinaryFocalCrossentropy(gamma=self.gamma, apply_class_balancing=False)


@LOSSES.register("asymmetric")
@dataclass(frozen=True)
class AsymmetricLossSettings:
    """Ridnik et al. 2021: positives weighted by (1 - p)^gamma_pos, negatives by p_m^gamma_neg with
    p_m = max(p - clip, 0), so easy negatives (most of 228 labels) fade."""

    gamma_pos: Annotated[float, Ge(0)] = 0.0
    gamma_neg: Annotated[float, Ge(0)] = 4.0
    clip: Annotated[float, Interval(ge=0, lt=1)] = 0.05

    def build(self) -> keras.losses.Loss:
        return AsymmetricLoss(gamma_pos=self.gamma_pos, gamma_neg=self.gamma_neg, clip=self.clip)


def get_loss(name: str, **params) -> keras.losses.Loss:
    """The loss `name` built with its settings (checked against the ones it declares)."""
    return LOSSES.create(name, **LOSSES.resolve(name, params, where=f"loss {name}")).build()


def member_loss(member) -> keras.losses.Loss:
    """The loss a member config asks for (its `loss`: a name or {name, params})."""
    spec = as_plugin_spec(member.loss)
    return get_loss(spec.name, **spec.params)
