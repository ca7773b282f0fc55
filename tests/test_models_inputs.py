"""Input pipeline: resize policies, the two readers agree, epoch order and resume skipping, the
image cache (memory/disk/auto, reused, checked), prediction order, augmentation."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

keras = pytest.importorskip("keras")

from fashion_stack.models.decode_pool import shutdown_pools  # noqa: E402
from fashion_stack.models.inputs import (augmentation_layers, epoch_order, image_cache, load_image,  # noqa: E402
                           prediction_batches, steps_per_epoch, training_batches)

ROOT = Path(__file__).resolve().parent.parent
READERS = ["tfdata", "process"]
# JPEGs of the shapes real photos come in: portrait, landscape, square, tiny, and large enough
# for 1/2, 1/4 and 1/8 scaled decoding at the sizes used below
SHAPES = [(300, 200), (180, 260), (64, 64), (23, 37), (500, 340), (90, 400), (257, 129)]


@pytest.fixture(scope="module", autouse=True)
def _stop_decode_workers():
    yield
    shutdown_pools()


def _photo(rng, height, width):
    """Smooth colour blobs plus stripes: something a resize can get wrong in both directions."""
    coarse = rng.uniform(0, 255, (height // 16 + 2, width // 16 + 2, 3)).astype(np.uint8)
    pixels = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.int16)
    pixels[:, ::7] = (pixels[:, ::7] + 80) % 256
    return pixels.astype(np.uint8)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    paths = []
    for n, (height, width) in enumerate(SHAPES):
        path = folder / f"photo{n}.jpg"
        Image.fromarray(_photo(rng, height, width)).save(path, quality=92)
        paths.append(str(path))
    grey = folder / "grey.jpg"  # one channel: both readers must expand it
    Image.fromarray(_photo(rng, 120, 90)[:, :, 0]).save(grey)
    png = folder / "lossless.png"  # not a JPEG: no scaled decoding
    Image.fromarray(_photo(rng, 150, 100)).save(png)
    return paths + [str(grey), str(png)]


@pytest.fixture(scope="module")
def wide_images(tmp_path_factory):
    """40x20 images: left quarter red, middle green, right quarter blue."""
    folder = tmp_path_factory.mktemp("wide")
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :10] = (250, 0, 0)
    pixels[:, 10:30] = (0, 250, 0)
    pixels[:, 30:] = (0, 0, 250)
    path = folder / "wide.png"  # lossless, so pixel checks are exact
    Image.fromarray(pixels).save(path)
    return str(path)


def _images(batches) -> np.ndarray:
    return np.concatenate([np.asarray(b[0] if isinstance(b, tuple) else b) for b in batches])


def _labels(batches) -> np.ndarray:
    return np.concatenate([np.asarray(b[1]) for b in batches])


# ---- resize policies and the two readers ------------------------------------------------------


def test_resize_policies_keep_or_discard_aspect_as_named(wide_images):
    stretched = load_image(wide_images, 20, "stretch")
    padded = load_image(wide_images, 20, "pad")
    cropped = load_image(wide_images, 20, "crop")
    assert stretched.shape == padded.shape == cropped.shape == (20, 20, 3)
    assert (padded[:5] == 0).all() and (padded[-5:] == 0).all()  # letterboxed: 40x20 fits as 20x10
    assert padded[10, 1, 0] > 200 and padded[10, 18, 2] > 200  # all of it kept, inside the box
    assert cropped[10, 1, 1] > 200 and cropped[10, 18, 1] > 200  # the middle 20x20: all green
    assert stretched[10, 1, 0] > 200 and stretched[10, 18, 2] > 200  # everything kept, squeezed
    assert load_image(wide_images, (10, 30), "pad").shape == (10, 30, 3)  # (height, width) sizes too
    with pytest.raises(ValueError, match="stretch"):
        load_image(wide_images, 20, "fit")


@pytest.mark.parametrize("policy", ["stretch", "pad", "crop"])
@pytest.mark.parametrize("size", [48, (40, 56)])
def test_both_readers_give_the_reference_pixels_within_one_grey_level(photos, policy, size):
    """Same geometry and libjpeg scale in both; the resamplers differ only in rounding (PIL
    keeps 8 bits between its two passes, TensorFlow floats), measured at most 1 grey level."""
    reference = np.stack([load_image(p, size, policy) for p in photos]).astype(np.float32)
    for reader in READERS:
        images = _images(prediction_batches(photos, size, policy, batch_size=4, reader=reader, workers=2))
        assert images.dtype == np.float32 and images.shape == reference.shape
        difference = np.abs(images - reference)
        assert difference.max() <= 2 and difference.mean() < 0.5, (reader, difference.max(), difference.mean())


def test_scaled_jpeg_decoding_changes_pixels_no_more_than_another_resize_filter_would(photos):
    """The speed-up (decoding at 1/2..1/8 in the DCT) must not blur or shift the picture. Measured
    against an independent reference, a full decode resized by PIL's bilinear filter: the gap must
    stay within 1.5x the gap between two standard antialiasing filters (Lanczos vs bilinear) on
    the same full decode. (On 40 CCP photos at 96 px: 3.5 vs 3.1 grey levels; at 299 px 0.0 vs 1.0.)"""
    for path, size in [(photos[4], 64), (photos[0], 48), (photos[1], 96)]:  # decoded at 1/4, 1/4, 1/1
        with Image.open(path) as image:
            full = image.convert("RGB")
        bilinear = np.asarray(full.resize((size, size), Image.BILINEAR), np.float32)
        lanczos = np.asarray(full.resize((size, size), Image.LANCZOS), np.float32)
        fast = load_image(path, size, "stretch").astype(np.float32)
        assert np.abs(fast - bilinear).mean() <= 1.5 * np.abs(lanczos - bilinear).mean(), path


def test_unreadable_image_is_an_error_naming_the_file(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    for reader in READERS:
        with pytest.raises(Exception, match="broken.jpg"):
            _images(prediction_batches([str(broken)], 16, "pad", batch_size=1, reader=reader, workers=1))


def test_bad_arguments_are_refused_with_the_fix(photos):
    with pytest.raises(ValueError, match="empty"):
        prediction_batches([], 8, "pad", 2)
    with pytest.raises(ValueError, match="label rows"):
        training_batches(photos, np.zeros((2, 3)), 8, "pad", 2, seed=0, epoch=0)
    with pytest.raises(ValueError, match="reader"):
        prediction_batches(photos, 8, "pad", 2, reader="pydataset")
    with pytest.raises(ValueError, match="skip_batches"):
        training_batches(photos, np.zeros((len(photos), 1)), 8, "pad", 4, seed=0, epoch=0, skip_batches=4)


# ---- epoch order, skipping, prediction order -------------------------------------------------


def test_epoch_order_is_a_permutation_fixed_by_seed_and_epoch():
    first = epoch_order(1000, seed=3, epoch=0)
    assert sorted(first) == list(range(1000))
    np.testing.assert_array_equal(first, epoch_order(1000, seed=3, epoch=0))  # a restart sees the same
    assert (first != epoch_order(1000, seed=3, epoch=1)).mean() > 0.9  # each epoch reshuffles
    assert (first != epoch_order(1000, seed=4, epoch=0)).mean() > 0.9
    assert steps_per_epoch(10, 4) == 3 and steps_per_epoch(10, 4, drop_remainder=True) == 2


@pytest.mark.parametrize("reader", READERS)
def test_training_batches_follow_the_epoch_order_and_skip_without_decoding(photos, tmp_path, reader):
    """Labels name the image (one-hot of its position); the images skipped by a resume are made
    unreadable, so decoding any of them would fail the epoch."""
    n, batch, skip = len(photos), 2, 2
    labels = np.eye(n, dtype=np.uint8)
    order = epoch_order(n, seed=5, epoch=3)
    paths = list(photos)
    for position in order[:skip * batch]:
        broken = tmp_path / f"skipped{position}.jpg"
        broken.write_bytes(b"not an image")
        paths[position] = str(broken)
    batches = training_batches(paths, labels, 24, "crop", batch, seed=5, epoch=3, skip_batches=skip,
                               reader=reader, workers=2)
    assert len(batches) == steps_per_epoch(n, batch) - skip
    seen = list(batches)
    np.testing.assert_array_equal(_labels(seen).argmax(axis=1), order[skip * batch:])
    assert _labels(seen).dtype == np.float32
    reference = np.stack([load_image(paths[i], 24, "crop") for i in order[skip * batch:]])
    np.testing.assert_allclose(_images(seen), reference, atol=2)

    whole = training_batches(photos, labels, 24, "crop", 4, seed=5, epoch=3, drop_remainder=True, reader=reader,
                             workers=2)
    assert len(whole) == n // 4 and all(len(np.asarray(b[1])) == 4 for b in whole)


@pytest.mark.parametrize("reader", READERS)
def test_prediction_batches_keep_file_order(photos, reader):
    batches = prediction_batches(photos, 16, "pad", batch_size=4, reader=reader, workers=2)
    assert len(batches) == 3
    images = _images(batches)
    np.testing.assert_allclose(images, np.stack([load_image(p, 16, "pad") for p in photos]), atol=2)


def test_a_keras_model_fits_on_both_readers(photos):
    labels = np.eye(len(photos), dtype=np.uint8)[:, :3]
    inputs = keras.Input((16, 16, 3))
    outputs = keras.layers.Dense(3, activation="sigmoid")(keras.layers.GlobalAveragePooling2D()(inputs))
    model = keras.Model(inputs, outputs)
    model.compile("adam", "binary_crossentropy")
    for reader in READERS:
        history = model.fit(training_batches(photos, labels, 16, "pad", 4, seed=0, epoch=0, reader=reader, workers=2),
                            epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][0])


# ---- the image cache ---------------------------------------------------------------------------


def test_cache_mode_auto_picks_memory_then_disk_then_none(photos, tmp_path):
    one_image = 32 * 32 * 3 + 8
    assert image_cache("auto", tmp_path, photos, 32, "pad", budget_bytes=len(photos) * one_image).mode == "memory"
    assert image_cache("auto", tmp_path, photos, 32, "pad", budget_bytes=one_image).mode == "disk"
    assert image_cache("auto", None, photos, 32, "pad", budget_bytes=one_image) is None
    assert image_cache("none", tmp_path, photos, 32, "pad", budget_bytes=10**12) is None
    assert image_cache("disk", tmp_path, photos, 32, "pad", budget_bytes=10**12).mode == "disk"
    with pytest.raises(ValueError, match="cache"):
        image_cache("ram", tmp_path, photos, 32, "pad", budget_bytes=0)
    with pytest.raises(ValueError, match="directory"):
        image_cache("disk", None, photos, 32, "pad", budget_bytes=0)


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_cache_is_filled_once_and_serves_later_epochs_and_folds(photos, tmp_path, reader, mode):
    """Epoch 0 of fold A fills the rows of its images; epoch 1 of fold B (another subset of the
    same universe) reads the shared ones from the cache: with their files deleted, they still come."""
    folder = tmp_path / "images"
    folder.mkdir()
    universe = []
    for path in photos:
        copy = folder / Path(path).name
        copy.write_bytes(Path(path).read_bytes())
        universe.append(str(copy))
    cache = image_cache(mode, tmp_path / "cache", universe, 20, "stretch", budget_bytes=10**9)
    fold_a, fold_b = universe[:7], universe[3:]
    labels_a, labels_b = np.eye(len(fold_a)), np.eye(len(fold_b))
    first = training_batches(fold_a, labels_a, 20, "stretch", 3, seed=1, epoch=0, cache=cache, reader=reader, workers=2)
    fresh = dict(zip(np.array(fold_a)[_labels(list(first)).argmax(1)], _images(first)))
    assert cache.filled() == len(fold_a)
    for shared in fold_a[3:]:
        os.remove(shared)
    for only_b in fold_b[4:]:  # not cached yet: still read from their files
        assert os.path.exists(only_b)
    second = list(training_batches(fold_b, labels_b, 20, "stretch", 3, seed=1, epoch=1, cache=cache, reader=reader,
                                   workers=2))
    got = dict(zip(np.array(fold_b)[_labels(second).argmax(1)], _images(second)))
    for shared in fold_a[3:]:
        np.testing.assert_array_equal(got[shared], fresh[shared])
    assert cache.filled() == len(universe)


def test_disk_cache_is_reused_by_a_new_run_and_a_damaged_row_is_decoded_again(photos, tmp_path):
    cache = image_cache("disk", tmp_path, photos, 16, "pad", budget_bytes=0)
    list(training_batches(photos, np.eye(len(photos)), 16, "pad", 4, seed=0, epoch=0, cache=cache, reader="tfdata"))
    again = image_cache("disk", tmp_path, photos, 16, "pad", budget_bytes=0)  # as a resumed run makes it
    assert again.file == cache.file and again.filled() == len(photos)
    assert image_cache("disk", tmp_path, photos, 16, "crop", budget_bytes=0).file != cache.file  # policy in the key
    assert image_cache("disk", tmp_path, photos[1:], 16, "pad", budget_bytes=0).file != cache.file
    row = 2
    with open(cache.file, "r+b") as handle:  # flip bytes inside row 2, as a torn write would leave it
        handle.seek(row * 16 * 16 * 3 + 100)
        handle.write(b"\x00\x01\x02\x03")
    assert again.read(row) is None  # fails its check
    batches = list(training_batches(photos, np.eye(len(photos)), 16, "pad", 4, seed=0, epoch=1, cache=again,
                                    reader="process", workers=2))
    by_row = dict(zip(_labels(batches).argmax(1), _images(batches)))
    np.testing.assert_allclose(by_row[row], load_image(photos[row], 16, "pad"), atol=2)
    assert again.read(row) is not None


def test_a_path_outside_the_cache_or_a_cache_of_another_size_is_refused(photos, tmp_path):
    cache = image_cache("memory", None, photos[:3], 16, "pad", budget_bytes=10**9)
    with pytest.raises(ValueError, match="not in the image cache"):
        training_batches(photos, np.eye(len(photos)), 16, "pad", 2, seed=0, epoch=0, cache=cache)
    with pytest.raises(ValueError, match="one cache per size"):
        training_batches(photos[:3], np.eye(3), 24, "pad", 2, seed=0, epoch=0, cache=cache)


# ---- augmentation ------------------------------------------------------------------------------


def _colour_tiles(seed=0):
    rng = np.random.default_rng(seed)
    colours = np.array([(220, 30, 30), (30, 200, 40), (40, 40, 230), (200, 200, 20)], np.float32)
    images = np.repeat(np.repeat(colours[:, None, None, :], 24, axis=1), 24, axis=2)
    return images + rng.uniform(-10, 10, images.shape).astype(np.float32)


def _augment(images, seed, training=True):
    x = images
    for layer in augmentation_layers(seed=seed):
        x = layer(x, training=training)
    return keras.ops.convert_to_numpy(x)


def test_augmentation_changes_pixels_in_training_only_and_never_the_dominant_colour():
    images = _colour_tiles()
    x_train, x_infer = _augment(images, seed=1), _augment(images, seed=1, training=False)
    np.testing.assert_allclose(x_infer, images, atol=1e-4)
    assert not np.allclose(x_train, images)
    dominant = lambda x: np.argmax(x.mean(axis=(1, 2)), axis=1)  # noqa: E731
    np.testing.assert_array_equal(dominant(x_train), dominant(images))
    assert x_train.min() >= 0 and x_train.max() <= 255


def test_augmentation_is_reproducible_from_its_seed():
    images = _colour_tiles()
    np.testing.assert_array_equal(_augment(images, seed=7), _augment(images, seed=7))
    assert not np.allclose(_augment(images, seed=7), _augment(images, seed=8))


def test_zoom_is_a_crop_inside_the_image_resized_back():
    """On a horizontal ramp (pixel value = column), a crop of `s` of the width starting at column
    `left` resized back by bilinear interpolation is again a ramp: left + s * column, with
    s in [0.8, 1] and the box inside the image (independent closed form of the transform)."""
    from fashion_stack.models.augment import ImageAugment

    ramp = np.broadcast_to(np.arange(32, dtype=np.float32)[None, None, :, None], (16, 32, 32, 3)).copy()
    zoomed = keras.ops.convert_to_numpy(
        ImageAugment(flip=False, brightness=0, contrast=0, zoom=0.2, seed=3)(ramp, training=True))
    for image in zoomed:
        row = image[5, :, 0]
        slope, left = np.polyfit(np.arange(32), row, 1)
        np.testing.assert_allclose(row, left + slope * np.arange(32), atol=1e-3)
        assert 0.8 - 1e-4 <= slope <= 1 + 1e-4 and left >= -1e-4 and left + slope * 31 <= 31 + 1e-3
        # every row and channel the same: the vertical part of the crop does not touch a horizontal ramp
        np.testing.assert_allclose(image, np.broadcast_to(image[5:6, :, :1], image.shape), atol=1e-3)
    assert np.std([np.polyfit(np.arange(32), z[5, :, 0], 1)[0] for z in zoomed]) > 0.01  # scales vary


def test_augmented_model_saves_and_loads_with_its_layer(tmp_path):
    inputs = keras.Input((24, 24, 3))
    x = inputs
    for layer in augmentation_layers(seed=2):
        x = layer(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))
    path = tmp_path / "augmented.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    images = _colour_tiles()
    np.testing.assert_allclose(loaded.predict_on_batch(images), model.predict_on_batch(images), atol=1e-5)
    assert type(loaded.layers[1]).__name__ == "ImageAugment" and loaded.layers[1].get_config()["seed"] == 2


JAX_SCRIPT = r"""
import json, sys


def main(paths):
    import keras
    import numpy as np
    from fashion_stack.models.inputs import augmentation_layers, training_batches

    labels = np.eye(len(paths), dtype=np.uint8)[:, :3]
    inputs = keras.Input((16, 16, 3))
    x = inputs
    for layer in augmentation_layers(seed=0):
        x = layer(x)
    x = keras.layers.Conv2D(4, 3)(x)
    outputs = keras.layers.Dense(3, activation="sigmoid")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    model.compile("adam", "binary_crossentropy", jit_compile="auto")
    history = model.fit(training_batches(paths, labels, 16, "pad", 4, seed=0, epoch=0, workers=2), epochs=1, verbose=0)
    print(json.dumps({"backend": keras.backend.backend(), "jit": bool(model.jit_compile),
                      "loss": history.history["loss"][0], "tensorflow_imported": "tensorflow" in sys.modules}))


if __name__ == "__main__":  # the decode workers are spawned: the script must not rerun in them
    main(sys.argv[1].split("|"))
"""


@pytest.mark.integration
def test_on_jax_the_process_reader_feeds_a_jitted_augmented_step_without_importing_tensorflow(photos, tmp_path):
    pytest.importorskip("jax")
    script = tmp_path / "jax_member.py"
    script.write_text(JAX_SCRIPT)
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, str(script), "|".join(photos)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["backend"] == "jax" and result["jit"] is True and np.isfinite(result["loss"])
    assert result["tensorflow_imported"] is False
