"""Multi-label losses on per-label sigmoid probabilities, chosen by the member's `loss` name.

With 228 labels and about 8 positives per image, negatives outnumber positives 27 to 1; focal and
asymmetric losses down-weight the many easy negatives that plain cross-entropy averages over.
"""
from __future__ import annotations

import keras
from keras import ops


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


def _bce():
    return keras.losses.BinaryCrossentropy()


def _focal(gamma: float = 2.0):
    # Lin et al. 2017; class balancing off because per-label positive rates differ by 1000x and
    # one alpha for all of them would favour some labels arbitrarily
    return keras.losses.BinaryFocalCrossentropy(gamma=gamma, apply_class_balancing=False)


LOSSES = {"bce": _bce, "focal": _focal, "asymmetric": AsymmetricLoss}


def get_loss(name: str, *, focal_gamma: float = 2.0, asl_gamma_pos: float = 0.0, asl_gamma_neg: float = 4.0,
             asl_clip: float = 0.05) -> keras.losses.Loss:
    """The loss `name` with its settings (the member config's focal_gamma / asl_* fields)."""
    settings = {"bce": {}, "focal": {"gamma": focal_gamma},
                "asymmetric": {"gamma_pos": asl_gamma_pos, "gamma_neg": asl_gamma_neg, "clip": asl_clip}}
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; use one of {sorted(LOSSES)} (member config `loss`)")
    return LOSSES[name](**settings[name])


def member_loss(member) -> keras.losses.Loss:
    """The loss a member config asks for."""
    return get_loss(member.loss, focal_gamma=member.focal_gamma, asl_gamma_pos=member.asl_gamma_pos,
                    asl_gamma_neg=member.asl_gamma_neg, asl_clip=member.asl_clip)
