"""Input pipeline: image files -> square 0..255 float32 batches at a member's size.

Two readers share one resize policy (a keras.layers.Resizing, which runs inside tf.data and on
numpy arrays alike): `make_dataset` (tf.data: parallel decode, in-memory cache of the resized
uint8 images, prefetch; the fast path on the TensorFlow backend) and `ImageBatches` (a Keras
PyDataset: PIL decode in worker threads; the path for the JAX and PyTorch backends, where
TensorFlow may be absent).

Augmentation is not done here but by `augmentation_layers`, placed inside the model: it then
runs on the accelerator, only in training, identically for both readers and every backend.
It keeps the labels true: horizontal flips, zoom-in crops, mild brightness and contrast; no hue
or saturation change, because colours are labels.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import keras
import numpy as np
from keras import layers

from datasets.imageops import open_image

RESIZE_POLICIES = ("stretch", "pad", "crop")


def resizer(size: int, policy: str) -> layers.Resizing:
    """stretch: ignore aspect. pad: fit inside, pad with black. crop: fill, centre-crop the rest.
    Product photos are mostly portrait, so stretch distorts shapes and crop can cut off hems."""
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"unknown resize policy {policy!r}; use one of {RESIZE_POLICIES} (member config `resize`)")
    # antialias: photos arrive at up to 299 px and members train at 96; without it, stripes and
    # small prints (pattern labels) alias into moire
    return layers.Resizing(size, size, crop_to_aspect_ratio=policy == "crop",
                           pad_to_aspect_ratio=policy == "pad", antialias=True, dtype="float32")


def augmentation_layers(seed: int = 0) -> list:
    """Training-only layers, applied in order to 0..255 images inside the model."""
    return [
        layers.RandomFlip("horizontal", seed=seed, name="augment_flip"),
        layers.RandomZoom(height_factor=(-0.2, 0.0), fill_mode="reflect", seed=seed + 1, name="augment_zoom"),
        layers.RandomBrightness(0.08, value_range=(0, 255), seed=seed + 2, name="augment_brightness"),
        layers.RandomContrast(0.1, value_range=(0, 255), seed=seed + 3, name="augment_contrast"),
    ]


def _check_inputs(paths: Sequence[str], labels: Optional[np.ndarray]) -> None:
    if labels is not None and len(labels) != len(paths):
        raise ValueError(f"{len(paths)} image paths but {len(labels)} label rows")
    if not len(paths):
        raise ValueError("no images to read: the id list is empty")


def make_dataset(paths: Sequence[str], labels: Optional[np.ndarray], size: int, resize: str,
                 batch_size: int, shuffle: bool = False, seed: int = 0, cache: bool | str = True):
    """tf.data batches of (images, labels) or images, in `paths` order unless `shuffle`.

    cache: True keeps the resized uint8 images in memory (a 96 px image is 27 KB), a path string
    caches them to that file (for sets larger than memory), False decodes every epoch.
    """
    import tensorflow as tf

    _check_inputs(paths, labels)
    resize_layer = resizer(size, resize)

    def decode(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        image = resize_layer(tf.cast(image, tf.float32))
        return tf.saturate_cast(tf.round(image), tf.uint8)

    images = tf.data.Dataset.from_tensor_slices(list(map(str, paths)))
    images = images.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    data = images if labels is None else tf.data.Dataset.zip(
        images, tf.data.Dataset.from_tensor_slices(np.asarray(labels, dtype=np.float32)))
    if cache:
        data = data.cache("" if cache is True else str(cache))
    if shuffle:
        data = data.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    to_float = (lambda x: tf.cast(x, tf.float32)) if labels is None else (lambda x, y: (tf.cast(x, tf.float32), y))
    return data.batch(batch_size).map(to_float, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def load_image(path: str, size: int, resize: str, resize_layer: Optional[layers.Resizing] = None) -> np.ndarray:
    """One image as (size, size, 3) uint8 under the same policy as `make_dataset`."""
    resize_layer = resize_layer or resizer(size, resize)
    pixels = np.asarray(open_image(path).convert("RGB"), dtype=np.float32)
    resized = keras.ops.convert_to_numpy(resize_layer(pixels))
    return np.clip(np.round(resized), 0, 255).astype(np.uint8)


class ImageBatches(keras.utils.PyDataset):
    """Backend-neutral batches of (images, labels) or images, decoded with PIL."""

    def __init__(self, paths: Sequence[str], labels: Optional[np.ndarray], size: int, resize: str,
                 batch_size: int, shuffle: bool = False, seed: int = 0, cache: bool = True, **kwargs):
        kwargs.setdefault("workers", 2)
        super().__init__(**kwargs)
        _check_inputs(paths, labels)
        self.paths = list(map(str, paths))
        self.labels = None if labels is None else np.asarray(labels, dtype=np.float32)
        self.size, self.batch_size, self.shuffle = size, batch_size, shuffle
        self._resize_layer = resizer(size, resize)
        self._resize = resize
        self._rng = np.random.default_rng(seed)
        self._order = self._rng.permutation(len(self.paths)) if shuffle else np.arange(len(self.paths))
        self._cache: Optional[dict] = {} if cache else None

    def __len__(self) -> int:
        return math.ceil(len(self.paths) / self.batch_size)

    def __getitem__(self, index: int):
        rows = self._order[index * self.batch_size:(index + 1) * self.batch_size]
        images = np.stack([self._image(row) for row in rows]).astype(np.float32)
        return images if self.labels is None else (images, self.labels[rows])

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self._order = self._rng.permutation(len(self.paths))

    def _image(self, row: int) -> np.ndarray:
        if self._cache is not None and row in self._cache:
            return self._cache[row]
        image = load_image(self.paths[row], self.size, self._resize, self._resize_layer)
        if self._cache is not None:
            self._cache[row] = image
        return image


def image_batches(paths, labels, size: int, resize: str, batch_size: int, shuffle: bool = False,
                  seed: int = 0, reader: str = "auto"):
    """The reader for this backend: tf.data on TensorFlow, the PyDataset elsewhere."""
    if reader == "auto":
        reader = "tfdata" if keras.backend.backend() == "tensorflow" else "pydataset"
    if reader == "tfdata":
        return make_dataset(paths, labels, size, resize, batch_size, shuffle, seed)
    if reader == "pydataset":
        return ImageBatches(paths, labels, size, resize, batch_size, shuffle, seed)
    raise ValueError(f"unknown reader {reader!r}; use auto, tfdata or pydataset")
