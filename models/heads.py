"""Model assembly: trunk + pooling + classifier head with one sigmoid per label, and which layers
train in each fine-tuning phase."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, ClassVar, Optional

import keras
import numpy as np
from annotated_types import Ge, Gt
from keras import layers, ops

from fashion_stack.core.config import MemberConfig, as_plugin_spec
from fashion_stack.core.registry import Registry
from fashion_stack.models.backbones import (ImagePreprocess, InputSpec, backbone_spec, create_backbone, is_pretrained,
                                             region_crop, resolve_input_spec)
from fashion_stack.models.inputs import augmentation_layers

PHASES = ("head", "top", "all")


@keras.saving.register_keras_serializable(package="fashion")
class BandPooling(layers.Layer):
    """(batch, height, width, channels) -> (batch, bands * channels): the average over each of
    `bands` horizontal bands, top to bottom, concatenated. A standing person's head, torso and
    legs fall in different bands, so a label seen only at the feet (shoes) keeps its place."""

    def __init__(self, bands: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.bands = int(bands)

    def _edges(self, height: int) -> list:
        if height < self.bands:
            raise ValueError(f"band pooling into {self.bands} bands needs a feature map at least {self.bands} "
                             f"rows high, got {height}; raise the member's input size or lower its pooling's bands "
                             "setting")
        return [round(k * height / self.bands) for k in range(self.bands + 1)]

    def build(self, input_shape):
        self._edges(int(input_shape[1]))

    def call(self, feature_map):
        edges = self._edges(int(feature_map.shape[1]))
        return ops.concatenate([ops.mean(feature_map[:, top:bottom], axis=(1, 2))
                                for top, bottom in zip(edges[:-1], edges[1:])], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.bands * input_shape[3])

    def get_config(self):
        return {**super().get_config(), "bands": self.bands}


@keras.saving.register_keras_serializable(package="fashion")
class ClassResidualAttention(layers.Layer):
    """CSRA (Zhu & Wu, "Residual Attention: A Simple but Effective Method for Multi-Label
    Recognition", ICCV 2021): a 1x1 classifier scores every position for every label, s[p, j];
    the logit is the average score plus `lam` times an attention-weighted score,
        logit_j = mean_p s[p, j] + lam * sum_p softmax_p(T * s[., j])[p] * s[p, j],
    so a label that shows in a few positions (a belt, sunglasses) is not averaged away."""

    def __init__(self, n_labels: int, lam: float = 0.1, temperature: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.n_labels, self.lam, self.temperature = int(n_labels), float(lam), float(temperature)

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(int(input_shape[-1]), self.n_labels), initializer="glorot_uniform",
                                      name="kernel")
        self.bias = self.add_weight(shape=(self.n_labels,), initializer="zeros", name="bias")

    def call(self, feature_map):
        scores = ops.matmul(feature_map, ops.cast(self.kernel, feature_map.dtype))
        scores = scores + ops.cast(self.bias, feature_map.dtype)  # (batch, h, w, labels)
        scores = ops.reshape(scores, (-1, scores.shape[1] * scores.shape[2], self.n_labels))
        base = ops.mean(scores, axis=1)
        attention = ops.softmax(self.temperature * scores, axis=1)
        return base + self.lam * ops.sum(attention * scores, axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.n_labels)

    def get_config(self):
        return {**super().get_config(), "n_labels": self.n_labels, "lam": self.lam,
                "temperature": self.temperature}


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
        return layers.GlobalAveragePooling2D(name=name)


@POOLINGS.register("max")
@dataclass(frozen=True)
class MaxPooling(Pooling):
    def pool_layer(self, name: str):
        return layers.GlobalMaxPooling2D(name=name)


@POOLINGS.register("bands")
@dataclass(frozen=True)
class BandsPooling(Pooling):
    """The average over horizontal bands (head, torso, legs), concatenated (BandPooling)."""
    bands: Annotated[int, Ge(1)] = 3

    def pool_layer(self, name: str):
        return BandPooling(self.bands, name=name)


@POOLINGS.register("csra")
@dataclass(frozen=True)
class ResidualAttentionPooling(Pooling):
    """Class-specific residual attention (ClassResidualAttention) over the feature map."""
    reads_map: ClassVar[bool] = True
    lam: Annotated[float, Ge(0)] = 0.1  # weight of the attention term
    temperature: Annotated[float, Gt(0)] = 1.0  # softmax temperature over positions

    def label_layer(self, n_labels: int):
        return ClassResidualAttention(n_labels, self.lam, self.temperature, name="csra")


def pooling_of(member) -> Pooling:
    """The member's pooling plug-in, built with its settings (a name or {name, params})."""
    spec = as_plugin_spec(member.pooling)
    return POOLINGS.create(spec.name, **POOLINGS.resolve(spec.name, spec.params, where=f"pooling {spec.name}"))


def pooling_layer_name(member) -> str:
    return f"{as_plugin_spec(member.pooling).name}_pool"


@contextmanager
def precision_policy(policy: str):
    """Layers built inside compute in the policy's dtype ("mixed_bfloat16", "mixed_float16";
    variables stay float32), or in float32."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def pool_features(feature_map, member):
    """The trunk's feature map as the head's input: a vector, or the map itself for a head that
    reads the map (CSRA)."""
    pooling = pooling_of(member)
    if pooling.reads_map:
        return feature_map
    return pooling.pool_layer(pooling_layer_name(member))(feature_map)


def classifier_head(features, n_labels: int, member):
    """Head input (a vector, or the feature map for CSRA) -> per-label probabilities."""
    x = features
    if member.hidden_units:
        x = layers.Dense(member.hidden_units, activation="relu", name="head_hidden")(x)  # 1x1 on a map
    if member.dropout:
        x = layers.Dropout(member.dropout, name="head_dropout")(x)
    # float32 output: float16 sigmoids saturate at 1 - 2**-11 and the loss would see log(0)
    pooling = pooling_of(member)
    if pooling.reads_map:
        logits = pooling.label_layer(n_labels)(x)
        return layers.Activation("sigmoid", dtype="float32", name="label_probs")(logits)
    return layers.Dense(n_labels, activation="sigmoid", dtype="float32", name="label_probs")(x)


def trunk_of(model: keras.Model) -> keras.Model:
    trunks = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(trunks) != 1:
        raise ValueError(f"model {model.name!r} should hold exactly one backbone, holds {len(trunks)}")
    return trunks[0]


def build_member_model(member: MemberConfig, n_labels: int, precision: str = "float32",
                       spec: Optional[InputSpec] = None) -> keras.Model:
    """Image (0..255, the member's height x width) -> per-label probabilities, augmentation
    inside. The model carries its InputSpec (size, resize policy, preprocessing) for prediction.

    A pretrained trunk runs with BatchNorm in inference mode in every phase (the statistics of
    its training set are kept; with small batches they would otherwise be overwritten by noise).
    `precision` is a Keras dtype policy (models.devices.resolve_precision). `spec`: the member's
    InputSpec as its plan resolved it (models.plan); None resolves it here.
    """
    spec = spec or resolve_input_spec(member)
    with precision_policy(precision):
        trunk = create_backbone(member.backbone, spec.trunk_size, member.weights)
        inputs = keras.Input(spec.shape, name="image")
        x = inputs
        for layer in augmentation_layers(member.seed) if member.augment else []:
            x = layer(x)
        x = region_crop(spec, ImagePreprocess(spec.preprocess_style, spec.resize, name="preprocess")(x))
        x = trunk(x, training=False if is_pretrained(member.weights) else None)
        outputs = classifier_head(pool_features(x, member), n_labels, member)
        # built inside the policy so compile() wraps the optimizer in loss scaling when mixed
        return keras.Model(inputs, outputs, name=f"member_{member.name or member.backbone}")


def build_embedding_model(member: MemberConfig, precision: str = "float32",
                          spec: Optional[InputSpec] = None) -> keras.Model:
    """Image -> what the frozen path caches (carries its InputSpec too): the pooled trunk
    features (float32), or for a head that reads the map the feature map itself (float16: a
    7 x 7 x 1280 map is 49 times a pooled vector). `spec` as for build_member_model."""
    spec = spec or resolve_input_spec(member)
    with precision_policy(precision):
        trunk = create_backbone(member.backbone, spec.trunk_size, member.weights)
        inputs = keras.Input(spec.shape, name="image")
        x = region_crop(spec, ImagePreprocess(spec.preprocess_style, spec.resize, name="preprocess")(inputs))
        x = pool_features(trunk(x, training=False), member)
        dtype = "float16" if pooling_of(member).reads_map else "float32"
        outputs = layers.Activation("linear", dtype=dtype, name="embedding")(x)
        return keras.Model(inputs, outputs, name=f"embed_{member.name or member.backbone}")


def build_head_model(embedding_shape, n_labels: int, member: MemberConfig) -> keras.Model:
    """Cached embeddings (a vector's length, or a feature map's (height, width, channels)) ->
    per-label probabilities: the part the frozen path trains per fold."""
    shape = (int(embedding_shape),) if isinstance(embedding_shape, (int, np.integer)) else tuple(embedding_shape)
    inputs = keras.Input(shape, name="embedding")
    outputs = classifier_head(inputs, n_labels, member)
    return keras.Model(inputs, outputs, name=f"head_{member.name or member.backbone}")


def set_trainable(model: keras.Model, backbone: str, phase: str, pretrained: bool = True) -> None:
    """phase "head": trunk frozen. "top": the trunk's layers after its top_blocks_after layer
    train. "all": every trunk layer trains. BatchNorm stays frozen in a pretrained trunk."""
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; use one of {PHASES} (member config `unfreeze`: top | all)")
    trunk = trunk_of(model)
    trunk.trainable = phase != "head"
    if phase == "head":
        return
    names = [layer.name for layer in trunk.layers]
    boundary = backbone_spec(backbone).top_blocks_after
    if boundary not in names:
        raise ValueError(f"backbone {backbone!r} has no layer {boundary!r} to split its top blocks at")
    first_trainable = names.index(boundary) + 1 if phase == "top" else 0
    for position, layer in enumerate(trunk.layers):
        frozen_bn = pretrained and isinstance(layer, layers.BatchNormalization)
        layer.trainable = position >= first_trainable and not frozen_bn
