"""The project's own Keras layers and loss, registered for serialization ("fashion>Name"), so a
saved member or embedding model loads with them: a backbone's preprocessing, band pooling, class
residual attention, the asymmetric loss. Only this module and the model-building ones import
Keras: the plug-in registries that name them (models.backbones, models.poolings, models.losses)
do not, so the pipeline's own process checks a config without loading TensorFlow.
"""
from __future__ import annotations

from typing import Optional

import keras
from keras import layers, ops

from fashion_stack.models.backbones import PREPROCESS_STYLES, REGION_LAYER, BackboneError, InputSpec

# ---- preprocessing -------------------------------------------------------------------------

_IMAGENET_MEAN_BGR = (103.939, 116.779, 123.68)
_IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
_IMAGENET_STD_RGB = (0.229, 0.224, 0.225)


def _tf_style(x):
    return x / 127.5 - 1.0


def _caffe_style(x):
    bgr = ops.flip(x, axis=-1)
    return bgr - ops.convert_to_tensor(_IMAGENET_MEAN_BGR, dtype=x.dtype)


def _torch_style(x):
    mean = ops.convert_to_tensor(_IMAGENET_MEAN_RGB, dtype=x.dtype)
    std = ops.convert_to_tensor(_IMAGENET_STD_RGB, dtype=x.dtype)
    return (x / 255.0 - mean) / std


def _tf128_style(x):
    # EfficientNetV2-S/M/L scale their inputs themselves with Rescaling(1/128, offset=-1), not
    # quite "tf"'s x / 127.5 - 1 (their B variants use "torch")
    return x / 128.0 - 1.0


_STYLES = {  # one function per name in models.backbones.PREPROCESS_STYLES
   "tf": _tf_style, "caffe": _caffe_style, "torch": _torch_style, "tf128": _tf128_style}


def preprocess_images(images, style: str):
    if style not in _STYLES:
        raise BackboneError(f"unknown preprocess style {style!r}; use one of {sorted(_STYLES)}")
    images = ops.convert_to_tensor(images)
    if "float" not in keras.backend.standardize_dtype(images.dtype):
        images = ops.cast(images, "float32")
    return _STYLES[style](images)


@keras.saving.register_keras_serializable(package="fashion")
class ImagePreprocess(layers.Layer):
    """A backbone's preprocessing as a layer, so a saved model carries its own pairing."""

    def __init__(self, style: str, resize: Optional[str] = None, **kwargs):
        super().__init__(**kwargs)
        if style not in _STYLES:
            raise BackboneError(f"unknown preprocess style {style!r}; use one of {sorted(_STYLES)}")
        self.style = style
        self.resize = resize  # the resize policy the images were made with (see InputSpec)

    def call(self, images):
        return _STYLES[self.style](ops.cast(images, self.compute_dtype))

    def get_config(self):
        return {**super().get_config(), "style": self.style, "resize": self.resize}


if set(_STYLES) != set(PREPROCESS_STYLES):  # a style added in one place only: fail at import, not mid-run
    raise ImportError(f"models.backbones.PREPROCESS_STYLES {sorted(PREPROCESS_STYLES)} and the preprocessing "
                      f"functions {sorted(_STYLES)} disagree")


def region_crop(spec: InputSpec, x):
    """The member's region cut from the preprocessed photo (a no-op without one)."""
    if not (spec.crop_top or spec.crop_bottom):
        return x
    return keras.layers.Cropping2D(((spec.crop_top, spec.crop_bottom), (0, 0)), name=REGION_LAYER)(x)


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
