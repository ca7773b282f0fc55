"""Multi-label losses on per-label sigmoid probabilities: loss plug-ins (LOSSES, core.registry),
chosen by the member's `loss` ({name, params}).

With 228 labels and about 8 positives per image, negatives outnumber positives 27 to 1; focal and
asymmetric losses down-weight the many easy negatives that plain cross-entropy averages over.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from annotated_types import Ge, Interval

from fashion_stack.core.config import as_plugin_spec
from fashion_stack.core.registry import Registry

if TYPE_CHECKING:  # Keras is imported where a loss is built, not where the plug-ins are registered
    import keras


LOSSES = Registry("loss function")


@LOSSES.register("bce")
@dataclass(frozen=True)
class BinaryCrossEntropyLoss:
    """Plain binary cross-entropy, averaged over labels."""

    def build(self) -> keras.losses.Loss:
        import keras
        return keras.losses.BinaryCrossentropy()


@LOSSES.register("focal")
@dataclass(frozen=True)
class FocalLoss:
    """Lin et al. 2017: (1 - p_t)^gamma down-weights well-classified cells."""

    gamma: Annotated[float, Ge(0)] = 2.0

    def build(self) -> keras.losses.Loss:
        import keras
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
        from fashion_stack.models.layers import AsymmetricLoss
        return AsymmetricLoss(gamma_pos=self.gamma_pos, gamma_neg=self.gamma_neg, clip=self.clip)


def get_loss(name: str, **params) -> keras.losses.Loss:
    """The loss `name` built with its settings (checked against the ones it declares)."""
    return LOSSES.create(name, **LOSSES.resolve(name, params, where=f"loss {name}")).build()


def member_loss(member) -> keras.losses.Loss:
    """The loss a member config asks for (its `loss`: a name or {name, params})."""
    spec = as_plugin_spec(member.loss)
    return get_loss(spec.name, **spec.params)
