"""Input pipeline: resize policies, order, the two readers agree, augmentation keeps colours."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

keras = pytest.importorskip("keras")

from models.inputs import ImageBatches, augmentation_layers, load_image, make_dataset, resizer  # noqa: E402


@pytest.fixture(scope="module")
def wide_images(tmp_path_factory):
    """40x20 images: left quarter red, middle green, right quarter blue; a different grey level each."""
    folder = tmp_path_factory.mktemp("wide")
    paths = []
    for n in range(5):
        pixels = np.zeros((20, 40, 3), np.uint8)
        pixels[:, :10] = (250, 0, 0)
        pixels[:, 10:30] = (0, 250, 0)
        pixels[:, 30:] = (0, 0, 250)
        pixels[0, :] = 40 * n  # a marker row to check order
        path = folder / f"img{n}.png"  # lossless, so pixel checks are exact
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    return paths


def test_resize_policies_keep_or_discard_aspect_as_named(wide_images):
    stretched = load_image(wide_images[1], 20, "stretch")
    padded = load_image(wide_images[1], 20, "pad")
    cropped = load_image(wide_images[1], 20, "crop")
    assert stretched.shape == padded.shape == cropped.shape == (20, 20, 3)
    assert (padded[:4] == 0).all() and (padded[-4:] == 0).all()  # letterboxed: 40x20 fits as 20x10
    assert cropped[10, 10, 1] > 200 and cropped[10, 1, 1] > 200 and cropped[10, 18, 1] > 200  # middle kept: green
    assert stretched[10, 1, 0] > 200 and stretched[10, 18, 2] > 200  # everything kept, squeezed
    with pytest.raises(ValueError, match="stretch"):
        resizer(20, "fit")


def test_tf_data_keeps_order_and_labels_and_matches_the_pydataset_reader(wide_images):
    labels = np.eye(5, dtype=np.float32)
    tf_batches = list(make_dataset(wide_images, labels, 16, "pad", batch_size=2).as_numpy_iterator())
    py_batches = [ImageBatches(wide_images, labels, 16, "pad", batch_size=2)[i] for i in range(3)]
    tf_images = np.concatenate([b[0] for b in tf_batches])
    py_images = np.concatenate([b[0] for b in py_batches])
    np.testing.assert_array_equal(np.concatenate([b[1] for b in tf_batches]), labels)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in py_batches]), labels)
    assert tf_images.dtype == py_images.dtype == np.float32
    np.testing.assert_allclose(tf_images, py_images, atol=1.0)  # JPEG/PNG decoders agree within rounding
    expected = [load_image(p, 16, "pad") for p in wide_images]
    np.testing.assert_allclose(tf_images, np.stack(expected), atol=1.0)


def test_shuffled_epochs_reorder_but_keep_image_label_pairs(wide_images):
    labels = np.arange(5, dtype=np.float32)[:, None]
    data = make_dataset(wide_images, labels, 8, "stretch", batch_size=5, shuffle=True, seed=3)
    first = next(iter(data.as_numpy_iterator()))
    order = first[1][:, 0].astype(int)
    assert sorted(order) == list(range(5))
    reference = np.stack([load_image(wide_images[i], 8, "stretch") for i in order]).astype(np.float32)
    np.testing.assert_allclose(first[0], reference, atol=1.0)


def test_empty_id_list_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        make_dataset([], None, 8, "pad", 2)


def test_augmentation_changes_pixels_in_training_only_and_never_the_dominant_colour():
    rng = np.random.default_rng(0)
    colours = np.array([(220, 30, 30), (30, 200, 40), (40, 40, 230), (200, 200, 20)], np.float32)
    images = np.repeat(np.repeat(colours[:, None, None, :], 24, axis=1), 24, axis=2)
    images += rng.uniform(-10, 10, images.shape).astype(np.float32)
    x_train, x_infer = images, images
    for layer in augmentation_layers(seed=1):
        x_train = layer(x_train, training=True)
        x_infer = layer(x_infer, training=False)
    x_train, x_infer = keras.ops.convert_to_numpy(x_train), keras.ops.convert_to_numpy(x_infer)
    np.testing.assert_allclose(x_infer, images, atol=1e-4)
    assert not np.allclose(x_train, images)
    mean_colour = lambda x: x.mean(axis=(1, 2))  # noqa: E731
    dominant = lambda x: np.argsort(mean_colour(x), axis=1)[:, -1]  # noqa: E731
    np.testing.assert_array_equal(dominant(x_train), dominant(images))
    assert x_train.min() >= 0 and x_train.max() <= 255
