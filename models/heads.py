"""Model assembly: trunk + pooling + classifier head with one sigmoid per label, and which layers
train in each fine-tuning phase."""
from __future__ import annotations

from contextlib import contextmanager

import keras
from keras import layers

from core.config import MemberConfig
from models.backbones import ImagePreprocess, backbone_spec, create_backbone, is_pretrained, resolve_input_spec
from models.inputs import augmentation_layers

POOLINGS = {"avg": layers.GlobalAveragePooling2D, "max": layers.GlobalMaxPooling2D}
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


def pool_features(feature_map, pooling: str):
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; use one of {sorted(POOLINGS)} (member config `pooling`)")
    return POOLINGS[pooling](name=f"{pooling}_pool")(feature_map)


def classifier_head(features, n_labels: int, dropout: float, hidden_units: int):
    x = features
    if hidden_units:
        x = layers.Dense(hidden_units, activation="relu", name="head_hidden")(x)
    if dropout:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    # float32 output: float16 sigmoids saturate at 1 - 2**-11 and the loss would see log(0)
    return layers.Dense(n_labels, activation="sigmoid", dtype="float32", name="label_probs")(x)


def trunk_of(model: keras.Model) -> keras.Model:
    trunks = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(trunks) != 1:
        raise ValueError(f"model {model.name!r} should hold exactly one backbone, holds {len(trunks)}")
    return trunks[0]


def build_member_model(member: MemberConfig, n_labels: int, precision: str = "float32") -> keras.Model:
    """Image (0..255, square, the member's size) -> per-label probabilities, augmentation inside.
    The model carries its InputSpec (size, resize policy, preprocessing) for prediction.

    A pretrained trunk runs with BatchNorm in inference mode in every phase (the statistics of
    its training set are kept; with small batches they would otherwise be overwritten by noise).
    `precision` is a Keras dtype policy (models.devices.resolve_precision).
    """
    spec = resolve_input_spec(member)
    with precision_policy(precision):
        trunk = create_backbone(member.backbone, spec.size, member.weights)
        inputs = keras.Input(spec.shape, name="image")
        x = inputs
        for layer in augmentation_layers(member.seed) if member.augment else []:
            x = layer(x)
        x = ImagePreprocess(spec.preprocess_style, spec.resize, name="preprocess")(x)
        x = trunk(x, training=False if is_pretrained(member.weights) else None)
        x = pool_features(x, member.pooling)
        outputs = classifier_head(x, n_labels, member.dropout, member.hidden_units)
        # built inside the policy so compile() wraps the optimizer in loss scaling when mixed
        return keras.Model(inputs, outputs, name=f"member_{member.name or member.backbone}")


def build_embedding_model(member: MemberConfig, precision: str = "float32") -> keras.Model:
    """Image -> pooled trunk features, for the frozen-feature path (carries its InputSpec too)."""
    spec = resolve_input_spec(member)
    with precision_policy(precision):
        trunk = create_backbone(member.backbone, spec.size, member.weights)
        inputs = keras.Input(spec.shape, name="image")
        x = ImagePreprocess(spec.preprocess_style, spec.resize, name="preprocess")(inputs)
        x = pool_features(trunk(x, training=False), member.pooling)
        outputs = layers.Activation("linear", dtype="float32", name="embedding")(x)
        return keras.Model(inputs, outputs, name=f"embed_{member.name or member.backbone}")


def build_head_model(embedding_dim: int, n_labels: int, member: MemberConfig) -> keras.Model:
    """Pooled features -> per-label probabilities: the part the frozen path trains per fold."""
    inputs = keras.Input((embedding_dim,), name="embedding")
    outputs = classifier_head(inputs, n_labels, member.dropout, member.hidden_units)
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
