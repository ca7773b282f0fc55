"""Training-time augmentation inside the model, built from keras.ops only, so the training step
compiles (XLA under jax.jit, tf.function(jit_compile=True)) on every backend.

Keras's RandomZoom cannot be jitted on JAX, and a model holding it made the whole step run op by
op (and keras.ops.image.affine_transform has no XLA kernel on TensorFlow). `ImageAugment` does
the same four things with static shapes, the zoom as two small matrix products:
- horizontal flip (half the images);
- zoom-in crop: a random box of `1 - zoom`..1 of each side, anywhere inside the image, resized
  back to the full size (bilinear); it never leaves the image, so nothing is filled in;
- brightness: the same offset on every channel, up to `brightness` of the value range;
- contrast: each channel's deviations from its mean scaled by 1 +- `contrast` (the channel
  means stay, so the dominant colour stays).
No hue or saturation change: colours are labels. Identity at inference. The draws come from a
keras.random.SeedGenerator, whose state is a model variable: the same seed gives the same
augmented batches, and a checkpoint restores where the sequence was.
"""
from __future__ import annotations

import keras
from keras import ops

PACKAGE = "fashion_stack"


@keras.saving.register_keras_serializable(package=PACKAGE)
class ImageAugment(keras.layers.Layer):
    """0..`value_range[1]` images (batch, height, width, channels) -> augmented, same shape."""

    def __init__(self, flip: bool = True, zoom: float = 0.2, brightness: float = 0.08, contrast: float = 0.1,
                 value_range=(0.0, 255.0), seed=None, **kwargs):
        # float32 even under a mixed policy: bfloat16 holds 0..255 only to about one grey level
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if not 0 <= zoom < 1:
            raise ValueError(f"zoom {zoom} must be in [0, 1): the fraction of each side a crop may lose")
        self.flip, self.zoom, self.brightness, self.contrast = bool(flip), float(zoom), float(brightness), float(contrast)
        self.value_range = tuple(float(v) for v in value_range)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = False

    def call(self, images, training=None):
        if not training:
            return images
        images = ops.cast(images, "float32")
        batch = ops.shape(images)[0]
        if self.flip:
            flip = keras.random.uniform((batch, 1, 1, 1), seed=self.seed_generator) < 0.5
            images = ops.where(flip, ops.flip(images, axis=2), images)
        if self.zoom:
            images = self._zoom_in(images, batch)
        low, high = self.value_range
        if self.brightness:
            offset = keras.random.uniform((batch, 1, 1, 1), -self.brightness, self.brightness,
                                          seed=self.seed_generator)
            images = images + offset * (high - low)
        if self.contrast:
            factor = keras.random.uniform((batch, 1, 1, 1), 1 - self.contrast, 1 + self.contrast,
                                          seed=self.seed_generator)
            mean = ops.mean(images, axis=(1, 2), keepdims=True)
            images = (images - mean) * factor + mean
        return ops.clip(images, low, high)

    def _zoom_in(self, images, batch):
        height, width = images.shape[1], images.shape[2]
        # output pixel (x, y) reads input (left + scale * x, top + scale * y): a box of `scale`
        # of each side, inside the image when left <= (1 - scale) * (width - 1)
        scale = keras.random.uniform((batch,), 1 - self.zoom, 1.0, seed=self.seed_generator)
        left = keras.random.uniform((batch,), seed=self.seed_generator) * (1 - scale) * (width - 1)
        top = keras.random.uniform((batch,), seed=self.seed_generator) * (1 - scale) * (height - 1)
        images = ops.einsum("bij,bjkc->bikc", _bilinear_rows(top, scale, height), images)
        return ops.einsum("blk,bikc->bilc", _bilinear_rows(left, scale, width), images)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(flip=self.flip, zoom=self.zoom, brightness=self.brightness, contrast=self.contrast,
                      value_range=list(self.value_range), seed=self.seed)
        return config


def _bilinear_rows(start, scale, size: int):
    """(batch, size, size) weights: row i of image b samples source position start + scale * i
    by linear interpolation between its two neighbours. Applied as a matrix product, the crop
    and resize is plain matmul, which every backend compiles (about 1% of InceptionV3's FLOPs
    at 299 px)."""
    position = ops.arange(size, dtype="float32")
    source = start[:, None] + scale[:, None] * position[None, :]
    return ops.maximum(0.0, 1.0 - ops.abs(source[:, :, None] - position[None, None, :]))
