"""Input pipeline: image files -> 0..255 float32 batches at a member's size, in bounded memory.

Two readers, one resize geometry (models.image_decode), near-identical pixels:
- "tfdata" (the TensorFlow backend's default): tf.data with parallel decode (libjpeg scaled
  decoding, antialiased resize) and prefetch.
- "process" (JAX, PyTorch; no TensorFlow import on this path): a Keras PyDataset whose batches
  are decoded by worker processes with PIL (models.decode_pool), a bounded number in flight.
Both take the epoch's order from `epoch_order` (a permutation of the file list that depends on
(seed, epoch) only, so a resumed epoch skips exactly the batches it already trained on, without
decoding them) and share one optional decoded-image cache (models.image_cache). Nothing here
holds more than per-image bookkeeping (paths, labels, order) plus a few batches; only a
"memory" cache grows with the set, and "auto" picks it only when the set fits the budget.
Prediction passes are never cached.

Augmentation is not done here but by `augmentation_layers`, placed inside the model: it then
runs on the accelerator, only in training, identically for both readers and every backend.
It keeps the labels true: horizontal flips, zoom-in crops, mild brightness and contrast; no hue
or saturation change, because colours are labels.
"""
from __future__ import annotations

import math
import threading
from typing import Optional, Sequence

import keras
import numpy as np

from fashion_stack.models.augment import ImageAugment
from fashion_stack.models.decode_pool import default_workers, submit_batch
from fashion_stack.models.image_cache import CACHE_MODES, ImageCache, image_cache  # noqa: F401 (part of this API)
from fashion_stack.models.image_decode import (DRAFT_RATIOS, RESIZE_POLICIES, as_hw, check_policy,  # noqa: F401
                                 decode_or_explain)

READERS = ("auto", "tfdata", "process")
LOOKUP_CHUNK = 64  # cached images the tf.data reader reads per Python call
PREFETCH_PER_WORKER = 2  # batches in flight per decode process: one decoding, one queued


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the `n` training images in epoch `epoch`: a permutation seeded by (seed, epoch)
    alone, so the same epoch has the same order after a restart."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(int(n))


def steps_per_epoch(n: int, batch_size: int, drop_remainder: bool = False) -> int:
    return n // batch_size if drop_remainder else math.ceil(n / batch_size)


def resolve_reader(reader: str) -> str:
    if reader not in READERS:
        raise ValueError(f"unknown reader {reader!r}; use one of {READERS} (member config `reader`)")
    if reader == "auto":
        return "tfdata" if keras.backend.backend() == "tensorflow" else "process"
    return reader


def load_image(path: str, size, resize: str) -> np.ndarray:
    """One image as (height, width, 3) uint8 under `resize`: the reference both readers match."""
    check_policy(resize)
    return decode_or_explain(str(path), size, resize)


def training_batches(paths: Sequence[str], labels: np.ndarray, size, resize: str, batch_size: int, *,
                     seed: int, epoch: int, skip_batches: int = 0, drop_remainder: bool = False,
                     cache: Optional[ImageCache] = None, reader: str = "auto", workers: Optional[int] = None,
                     micro_batch_size: Optional[int] = None):
    """One epoch of (images, labels) batches in epoch_order(len(paths), seed, epoch), less the first
    `skip_batches` (never decoded): a tf.data.Dataset or a keras PyDataset, for Model.fit.

    With `micro_batch_size` (a divisor of batch_size, for gradient accumulation) each batch comes
    as batch_size / micro_batch_size consecutive micro-batches, with a third element, sample
    weights (accumulation_order), and `skip_batches` counts micro-batches."""
    check_policy(resize)
    _check_inputs(paths, labels)
    n_batches = steps_per_epoch(len(paths), batch_size, drop_remainder)
    order = epoch_order(len(paths), seed, epoch)[:n_batches * batch_size]
    weights = None
    if micro_batch_size is not None:
        order, weights = accumulation_order(order, batch_size, micro_batch_size)
        batch_size = micro_batch_size
    n_steps = math.ceil(len(order) / batch_size)
    if not 0 <= skip_batches <= n_steps:
        raise ValueError(f"skip_batches {skip_batches} is outside this epoch's 0..{n_steps} batches")
    order = order[skip_batches * batch_size:]
    weights = None if weights is None else weights[skip_batches * batch_size:]
    rows = None if cache is None else cache.rows(paths)
    _check_cache(cache, size, resize)
    if resolve_reader(reader) == "tfdata":
        return _tf_batches(paths, labels, order, size, resize, batch_size, cache, rows, weights)
    return ProcessBatches(paths, labels, order, size, resize, batch_size, cache, rows, workers, weights)


def accumulation_order(order: np.ndarray, batch_size: int, micro_batch_size: int) -> tuple:
    """(order, sample weights) for gradient accumulation: every batch_size batch of `order` cut into
    micro-batches, each batch's mean loss their mean. A full batch's images weigh 1. A short last
    batch of r images is padded to batch_size with repeats of its own images weighing 0, and its r
    images weigh batch_size / r: the mean over the micro-batches of (sum of weight x loss) /
    micro_batch_size is then that batch's mean loss, as one pass over it computes, and the
    optimizer steps once per batch (Keras steps every batch_size / micro_batch_size micro-batches)."""
    if micro_batch_size < 1 or batch_size % micro_batch_size:
        raise ValueError(f"micro_batch_size {micro_batch_size} does not divide batch_size {batch_size}")
    order = np.asarray(order)
    weights = np.ones(len(order), np.float32)
    short = (-len(order)) % batch_size
    if short:
        tail = len(order) % batch_size
        weights[-tail:] = batch_size / tail
        order = np.concatenate([order, np.resize(order[-tail:], short)])
        weights = np.concatenate([weights, np.zeros(short, np.float32)])
    return order, weights


def prediction_batches(paths: Sequence[str], size, resize: str, batch_size: int, *, reader: str = "auto",
                       workers: Optional[int] = None):
    """float32 image batches in `paths` order, never cached; len() is the number of batches."""
    check_policy(resize)
    _check_inputs(paths, None)
    order = np.arange(len(paths))
    if resolve_reader(reader) == "tfdata":
        return _tf_batches(paths, None, order, size, resize, batch_size, None, None)
    return ProcessBatches(paths, None, order, size, resize, batch_size, None, None, workers)


def _check_cache(cache: Optional[ImageCache], size, resize: str) -> None:
    if cache is not None and ((cache.height, cache.width) != as_hw(size) or cache.resize != resize):
        raise ValueError(f"the image cache holds {cache.height}x{cache.width} {cache.resize} images, "
                         f"the reader wants {as_hw(size)} {resize}: build one cache per size and policy")


# ---- the process reader (JAX, PyTorch) -------------------------------------------------------


class ProcessBatches(keras.utils.PyDataset):
    """Batches decoded by worker processes, `workers * PREFETCH_PER_WORKER` in flight ahead of the
    one asked for. Keras iterates it in order from one thread (workers=1 here means Keras adds no
    threads of its own: the parallelism is in the decode pool)."""

    def __init__(self, paths, labels, order, size, resize, batch_size, cache, rows, workers, weights=None):
        super().__init__(workers=1, use_multiprocessing=False)
        # object array: shares the caller's str objects (a unicode array would copy at 4 bytes a character)
        self.paths = np.array([str(p) for p in paths], dtype=object)
        self.labels = None if labels is None else np.asarray(labels)
        self.order, self.size, self.resize, self.batch_size = order, size, resize, batch_size
        self.cache, self.rows, self.weights = cache, rows, weights
        self.decode_workers = workers or default_workers()  # not `workers`: that is PyDataset's own thread count
        self._in_flight: dict = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.batch_size)

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        with self._lock:  # Keras may ask from a prefetch thread
            for ahead in range(index, min(len(self), index + self.decode_workers * PREFETCH_PER_WORKER)):
                if ahead not in self._in_flight:
                    self._in_flight[ahead] = self._submit(ahead)
            for stale in [i for i in self._in_flight if i < index]:  # asked out of order: drop, do not leak
                self._in_flight.pop(stale).cancel()
            pending = self._in_flight.pop(index)
        images = pending.result().astype(np.float32)
        if self.labels is None:
            return images
        labels = self.labels[self._batch_rows(index)].astype(np.float32)
        if self.weights is None:
            return images, labels
        return images, labels, self.weights[index * self.batch_size:(index + 1) * self.batch_size]

    def __iter__(self):
        for index in range(len(self)):
            yield self[index]

    def _batch_rows(self, index: int) -> np.ndarray:
        return self.order[index * self.batch_size:(index + 1) * self.batch_size]

    def _submit(self, index: int):
        rows = self._batch_rows(index)
        cache_rows = None if self.rows is None else self.rows[rows]
        return submit_batch(self.decode_workers, self.paths[rows], self.size, self.resize, self.cache, cache_rows)


# ---- the tf.data reader (TensorFlow) -------------------------------------------------------


def _tf_batches(paths, labels, order, size, resize, batch_size, cache, rows, weights=None):
    import tensorflow as tf

    height, width = as_hw(size)
    decode = _tf_decoder(height, width, resize)
    positions = tf.data.Dataset.from_tensor_slices(order)
    all_paths = tf.constant(np.asarray(list(map(str, paths)), dtype=object))

    if cache is None:
        images = positions.map(lambda position: decode(tf.gather(all_paths, position)),
                               num_parallel_calls=tf.data.AUTOTUNE)
    else:
        images = _tf_cached_images(positions, cache, decode, all_paths, tf.constant(rows), height, width)
    if labels is not None:
        all_labels = tf.constant(np.asarray(labels))
        parts = [images, positions.map(lambda p: tf.gather(all_labels, p))]
        if weights is not None:  # micro-batches' sample weights, already float32
            parts.append(tf.data.Dataset.from_tensor_slices(np.asarray(weights, np.float32)))
        data = tf.data.Dataset.zip(*parts)
        to_float = lambda x, y, *w: (tf.cast(x, tf.float32), tf.cast(y, tf.float32), *w)  # noqa: E731
    else:
        data = images
        to_float = lambda x: tf.cast(x, tf.float32)  # noqa: E731
    # the cached path's unbatch hides the length; stated again so Keras knows the epoch's batch count
    # (else it warns "input ran out of data" at every epoch end)
    data = data.apply(tf.data.experimental.assert_cardinality(len(order)))
    return data.batch(batch_size).map(to_float, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def _tf_cached_images(positions, cache, decode, all_paths, all_rows, height, width):
    """Cached rows are looked up LOOKUP_CHUNK at a time (one Python call per chunk, not per image);
    only the misses are decoded by tf ops, and written back."""
    import tensorflow as tf

    def lookup(rows):
        pixels, hit = np.zeros((len(rows), height, width, 3), np.uint8), np.zeros(len(rows), bool)
        for n, row in enumerate(rows):
            cached = cache.read(int(row))
            if cached is not None:
                pixels[n], hit[n] = cached, True
        return pixels, hit

    def store(row, pixels):
        cache.write(int(row), pixels)
        return pixels

    def look_up_chunk(chunk):
        pixels, hit = tf.numpy_function(lookup, [tf.gather(all_rows, chunk)], [tf.uint8, tf.bool], stateful=True)
        return chunk, pixels, hit

    def image_at(position, pixels, hit):
        def decode_and_store():
            fresh = decode(tf.gather(all_paths, position))
            return tf.numpy_function(store, [tf.gather(all_rows, position), fresh], tf.uint8, stateful=True)

        image = tf.cond(hit, lambda: pixels, decode_and_store)
        image.set_shape((height, width, 3))
        return image

    looked_up = positions.batch(LOOKUP_CHUNK).map(look_up_chunk, num_parallel_calls=tf.data.AUTOTUNE).unbatch()
    return looked_up.map(image_at, num_parallel_calls=tf.data.AUTOTUNE)


def _tf_decoder(height: int, width: int, policy: str):
    """path -> (height, width, 3) uint8, the geometry of models.image_decode in tf ops: scaled
    JPEG decoding at the same ratio, the same box, an antialiased bilinear resize, the same pad."""
    import tensorflow as tf

    def geometry(h, w):
        if policy == "crop":
            box_h, box_w = tf.minimum(h, w * height // width), tf.minimum(w, h * width // height)
            return (h - box_h) // 2, (w - box_w) // 2, box_h, box_w, tf.constant(height), tf.constant(width)
        if policy == "pad":
            wide = width * h <= height * w
            content_h = tf.where(wide, tf.clip_by_value((2 * h * width + w) // (2 * w), 1, height), height)
            content_w = tf.where(wide, width, tf.clip_by_value((2 * w * height + h) // (2 * h), 1, width))
            return tf.constant(0), tf.constant(0), h, w, content_h, content_w
        return tf.constant(0), tf.constant(0), h, w, tf.constant(height), tf.constant(width)

    def ratio_index(h, w):
        _, _, box_h, box_w, content_h, content_w = geometry(h, w)
        room = tf.minimum(box_h // content_h, box_w // content_w)
        return tf.reduce_sum(tf.cast(room < tf.constant(DRAFT_RATIOS[:-1]), tf.int32))  # 8,4,2,1 -> 0..3

    def decode(path):
        data = tf.io.read_file(path)
        head = tf.strings.substr(data, 0, 4)
        known = tf.io.is_jpeg(data) | tf.reduce_any(tf.equal(head, [b"\x89PNG", b"GIF8", b"RIFF"])) | tf.equal(
            tf.strings.substr(data, 0, 2), b"BM")
        # TensorFlow's decode errors do not say which file; this one does (a truncated JPEG
        # still fails without the name: the prepare stage has decoded every file once)
        check = tf.debugging.Assert(known, ["cannot read image", path, "(not a JPEG, PNG, GIF, BMP or WebP file). "
                                            "The prepare stage checks every image; rerun it (--redo prepare) "
                                            "if files changed after it ran"])
        with tf.control_dependencies([check]):
            data = tf.identity(data)

        def jpeg():
            shape = tf.image.extract_jpeg_shape(data)
            index = ratio_index(shape[0], shape[1])
            branches = [lambda r=r: tf.io.decode_jpeg(data, channels=3, ratio=r, dct_method="INTEGER_ACCURATE")
                        for r in DRAFT_RATIOS]
            return tf.switch_case(index, branches)

        def other():
            return tf.io.decode_image(data, channels=3, expand_animations=False)

        image = tf.cond(tf.io.is_jpeg(data), jpeg, other)
        h, w = tf.shape(image)[0], tf.shape(image)[1]
        top, left, box_h, box_w, content_h, content_w = geometry(h, w)
        image = image[top:top + box_h, left:left + box_w]
        image = tf.image.resize(tf.cast(image, tf.float32), tf.stack([content_h, content_w]), method="bilinear",
                                antialias=True)
        image = tf.saturate_cast(tf.round(image), tf.uint8)
        if policy == "pad":
            image = tf.image.pad_to_bounding_box(image, (height - content_h) // 2, (width - content_w) // 2,
                                                 height, width)
        image.set_shape((height, width, 3))
        return image

    return decode


# ---- augmentation, placed inside the model ---------------------------------------------------


def augmentation_layers(seed: int = 0) -> list:
    """Training-only layers, applied in order to 0..255 images inside the model (models.augment)."""
    return [ImageAugment(seed=seed, name="augment")]


def _check_inputs(paths: Sequence[str], labels: Optional[np.ndarray]) -> None:
    if labels is not None and len(labels) != len(paths):
        raise ValueError(f"{len(paths)} image paths but {len(labels)} label rows")
    if not len(paths):
        raise ValueError("no images to read: the id list is empty")
