"""Pooling plug-ins: how a member turns its trunk's feature map into label scores (POOLINGS,
core.registry), each with its settings as dataclass fields. Registering them imports no Keras;
their layers (models.layers) are built when a model is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

from annotated_types import Ge, Gt

from fashion_stack.core.config import as_plugin_spec
from fashion_stack.core.registry import Registry

POOLINGS = Registry("pooling")


class Pooling:
    """How a member turns the trunk's feature map into label scores: a head plug-in registered in
    POOLINGS, its settings its dataclass fields (core.registry)."""
    reads_map: ClassVar[bool] = False  # the head works on the feature map itself (the frozen path caches the map, float16)

    def pool_layer(self, name: str):
        """A layer map -> vector (poolings that do not read the map)."""
        raise NotImplementedError

    def label_layer(self, n_labels: int):
        """A layer map -> per-label logits (poolings that read the map)."""
        raise NotImplementedError


@POOLINGS.register("avg")
@dataclass(frozen=True)
class AveragePooling(Pooling):
    def pool_layer(self, name: str):
        from keras import layers
        return layers.GlobalAveragePooling2D(name=name)


@POOLINGS.register("max")
@dataclass(frozen=True)
class MaxPooling(Pooling):
    def pool_layer(self, name: str):
        from keras import layers
        return layers.GlobalMaxPooling2D(name=name)


@POOLINGS.register("bands")
@dataclass(frozen=True)
class BandsPooling(Pooling):
    """The average over horizontal bands (head, torso, legs), concatenated (BandPooling)."""
    bands: Annotated[int, Ge(1)] = 3

    def pool_layer(self, name: str):
        from fashion_stack.models.layers import BandPooling
        return BandPooling(self.bands, name=name)


@POOLINGS.register("csra")
@dataclass(frozen=True)
class ResidualAttentionPooling(Pooling):
    """Class-specific residual attention (ClassResidualAttention) over the feature map."""
    reads_map: ClassVar[bool] = True
    lam: Annotated[float, Ge(0)] = 0.1  # weight of the attention term
    temperature: Annotated[float, Gt(0)] = 1.0  # softmax temperature over positions

    def label_layer(self, n_labels: int):
        from fashion_stack.models.layers import ClassResidualAttention
        return ClassResidualAttention(n_labels, self.lam, self.temperature, name="csra")


def pooling_of(member) -> Pooling:
    """The member's pooling plug-in, built with its settings (a name or {name, params})."""
    spec = as_plugin_spec(member.pooling)
    return POOLINGS.create(spec.name, **POOLINGS.resolve(spec.name, spec.params, where=f"pooling {spec.name}"))


def pooling_layer_name(member) -> str:
    return f"{as_plugin_spec(member.pooling).name}_pool"
