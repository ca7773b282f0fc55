"""Model assembly: trunk + pooling + classifier head with one sigmoid per label, and which layers
train in each fine-tuning phase."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Optional

import keras
import numpy as np
from keras import layers

from fashion_stack.core.config import MemberConfig
from fashion_stack.models.backbones import InputSpec, backbone_spec, create_backbone, is_pretrained, resolve_input_spec
from fashion_stack.models.inputs import augmentation_layers
from fashion_stack.models.layers import ImagePreprocess, region_crop
from fashion_stack.models.poolings import pooling_layer_name, pooling_of

PHASES = ("head", "top", "all")


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
