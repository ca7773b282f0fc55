"""Backbone registry: names, sizes, preprocessing pairs, building, local weights files."""
from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from conftest import shared_path  # noqa: E402
from fashion_stack.models.backbones import (BackboneError, backbone_names, backbone_spec, create_backbone,  # noqa: E402
                                             resolve_size)
from fashion_stack.models.layers import preprocess_images  # noqa: E402
from fashion_stack.models.heads import build_member_model, set_trainable, trunk_of  # noqa: E402
from fashion_stack.models.trainer import load_model, save_model  # noqa: E402
from models_synthetic import tiny_member  # noqa: E402

MOBILENET_WEIGHTS = ("weights", "mobilenet_v2_1.0_224_imagenet_notop.weights.h5")


def test_registry_holds_the_lead_backbones_and_small_cpu_members():
    assert {"inception_v3", "resnet50", "xception", "densenet201", "mobilenet_v2", "tiny_cnn"} <= set(backbone_names())
    for name in backbone_names():  # each entry is usable as registered: its own name, sizes that fit
        spec = backbone_spec(name)
        assert spec.name == name and 16 <= spec.min_size <= spec.native_size and callable(spec.builder)


def test_a_backbone_registered_twice_is_refused():
    from fashion_stack.models.backbones import register_backbone
    with pytest.raises(BackboneError, match=r"backbone 'tiny_cnn' is registered twice"):
        register_backbone("tiny_cnn", 32, 16, "tf", "none")(lambda shape, weights: None)
    assert backbone_spec("tiny_cnn").top_blocks_after != "none"  # the first registration stands


def test_unknown_backbone_error_lists_the_valid_names():
    with pytest.raises(BackboneError, match="inception_v3.*resnet50|registered backbones"):
        backbone_spec("inceptionv3")


def test_size_below_minimum_is_an_error_and_none_means_native():
    assert resolve_size("inception_v3", None) == 299
    with pytest.raises(BackboneError, match="input_size >= 75"):
        resolve_size("inception_v3", 64)


@pytest.mark.parametrize("backbone, reference", [
    ("inception_v3", keras.applications.inception_v3.preprocess_input),
    ("xception", keras.applications.xception.preprocess_input),
    ("mobilenet_v2", keras.applications.mobilenet_v2.preprocess_input),
    ("resnet50", keras.applications.resnet50.preprocess_input),
    ("densenet201", keras.applications.densenet.preprocess_input),
])
def test_each_backbone_preprocesses_as_its_keras_application_does(backbone, reference):
    images = np.random.default_rng(0).uniform(0, 255, size=(2, 8, 8, 3)).astype(np.float32)
    ours = keras.ops.convert_to_numpy(preprocess_images(images, backbone_spec(backbone).preprocess_style))
    np.testing.assert_allclose(ours, reference(images.copy()), rtol=1e-5, atol=1e-4)


def test_preprocess_styles_differ_so_a_wrong_pairing_would_show():
    images = np.full((1, 2, 2, 3), 200.0, np.float32)
    outputs = {s: keras.ops.convert_to_numpy(preprocess_images(images, s)) for s in ("tf", "caffe", "torch")}
    assert not np.allclose(outputs["tf"], outputs["caffe"]) and not np.allclose(outputs["tf"], outputs["torch"])


def _check_builds(backbone: str):
    size = backbone_spec(backbone).min_size
    model = build_member_model(tiny_member(backbone=backbone, input_size=size, augment=True), n_labels=5)
    images = np.random.default_rng(1).uniform(0, 255, size=(2, size, size, 3)).astype(np.float32)
    probs = np.asarray(model.predict_on_batch(images))
    assert probs.shape == (2, 5) and np.isfinite(probs).all() and ((probs >= 0) & (probs <= 1)).all()
    set_trainable(model, backbone, "top", pretrained=True)
    trunk = trunk_of(model)
    assert 0 < len(trunk.trainable_weights) < len(trunk.weights)


@pytest.mark.parametrize("backbone", ["tiny_cnn", "mobilenet_v2"])
def test_small_backbones_build_at_minimum_size_with_finite_probabilities(backbone):
    _check_builds(backbone)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", backbone_names())
def test_every_registered_backbone_builds_at_minimum_size(backbone):
    _check_builds(backbone)


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(BackboneError, match="not found"):
        create_backbone("mobilenet_v2", 32, str(tmp_path / "absent.weights.h5"))


def test_local_weights_file_is_loaded():
    path = shared_path(*MOBILENET_WEIGHTS)
    loaded = create_backbone("mobilenet_v2", 32, str(path))
    again = create_backbone("mobilenet_v2", 96, str(path))
    random = create_backbone("mobilenet_v2", 32, None)
    kernel = lambda model: np.asarray(model.get_layer("Conv1").kernel)  # noqa: E731
    np.testing.assert_array_equal(kernel(loaded), kernel(again))  # same file, any input size
    assert not np.allclose(kernel(loaded), kernel(random))


def test_weights_for_another_trunk_are_refused(tmp_path):
    path = shared_path(*MOBILENET_WEIGHTS)
    with pytest.raises(BackboneError, match="does not fit"):
        create_backbone("tiny_cnn", 32, str(path))


# ---- the modern trunks: EfficientNetV2, ConvNeXt -----------------------------------------------

MODERN = {"efficientnetv2_b0": keras.applications.EfficientNetV2B0,
          "efficientnetv2_s": keras.applications.EfficientNetV2S,
          "convnext_tiny": keras.applications.ConvNeXtTiny}


def _keras_own_preprocessing(constructor, size):
    """The layers these trunks put in front of their stem when include_preprocessing=True (the
    weightless layers before the first layer with weights), as a model: the reference."""
    trunk = constructor(include_top=False, weights=None, input_shape=(size, size, 3), include_preprocessing=True)
    first_weighted = next(i for i, layer in enumerate(trunk.layers) if layer.weights)
    return keras.Model(trunk.input, trunk.layers[first_weighted - 1].output)


@pytest.mark.parametrize("backbone", sorted(MODERN))
def test_modern_trunks_preprocess_exactly_as_their_own_built_in_layers(backbone):
    images = np.random.default_rng(0).uniform(0, 255, size=(2, 32, 32, 3)).astype(np.float32)
    reference = np.asarray(_keras_own_preprocessing(MODERN[backbone], 32).predict_on_batch(images))
    ours = keras.ops.convert_to_numpy(preprocess_images(images, backbone_spec(backbone).preprocess_style))
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-4)
    assert not np.allclose(reference, images)  # the reference does scale: an identity would not pass


def test_modern_trunks_have_their_native_sizes_and_take_no_built_in_preprocessing():
    assert {name: backbone_spec(name).native_size for name in MODERN} == {
        "efficientnetv2_b0": 224, "efficientnetv2_s": 384, "convnext_tiny": 224}
    trunk = create_backbone("efficientnetv2_b0", 32, None)
    first_weighted = next(i for i, layer in enumerate(trunk.layers) if layer.weights)
    assert first_weighted == 1  # the stem conv right after the input: ImagePreprocess does the scaling


def test_efficientnetv2_b0_loads_a_local_weights_file_at_any_size(tmp_path):
    path = tmp_path / "efficientnetv2_b0_notop.weights.h5"
    saved = create_backbone("efficientnetv2_b0", 32, None)
    saved.save_weights(str(path))
    loaded = create_backbone("efficientnetv2_b0", 64, str(path))
    kernel = lambda model: np.asarray(model.get_layer("stem_conv").kernel)  # noqa: E731
    np.testing.assert_array_equal(kernel(loaded), kernel(saved))
    assert not np.allclose(kernel(create_backbone("efficientnetv2_b0", 32, None)), kernel(saved))


def _check_save_load(backbone: str, tmp_path):
    size = backbone_spec(backbone).min_size
    model = build_member_model(tiny_member(backbone=backbone, input_size=size, hidden_units=8), n_labels=5)
    images = np.random.default_rng(2).uniform(0, 255, (2, size, size, 3)).astype(np.float32)
    save_model(model, tmp_path / "model.keras")
    loaded = load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded.predict_on_batch(images), model.predict_on_batch(images), atol=1e-5)


@pytest.mark.slow  # 30-80 s each on 2 busy cores; their builds are in the slow every-backbone test above
@pytest.mark.parametrize("backbone", sorted(MODERN))
def test_modern_members_save_and_load_with_the_same_outputs(backbone, tmp_path):
    _check_save_load(backbone, tmp_path)


# ---- MobileNet V1 (issue 21): a second offline ImageNet trunk -----------------------------------

MOBILENET_V1_WEIGHTS = ("weights", "mobilenet_1.0_224_imagenet_notop.weights.h5")


def test_mobilenet_v1_preprocesses_as_keras_mobilenet_preprocess_input():
    images = np.random.default_rng(0).uniform(0, 255, size=(2, 8, 8, 3)).astype(np.float32)
    reference = keras.applications.mobilenet.preprocess_input(images.copy())
    ours = keras.ops.convert_to_numpy(preprocess_images(images, backbone_spec("mobilenet").preprocess_style))
    np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-6)
    assert ours.min() >= -1 and ours.max() <= 1


def test_mobilenet_v1_loads_its_local_weights_at_a_portrait_size_and_keeps_batchnorm_in_inference():
    path = shared_path(*MOBILENET_V1_WEIGHTS)
    loaded = create_backbone("mobilenet", (64, 32), str(path))
    random = create_backbone("mobilenet", 32, None)
    assert loaded.output_shape == (None, 2, 1, 1024)
    kernel = lambda model: np.asarray(model.get_layer("conv1").kernel)  # noqa: E731
    assert not np.allclose(kernel(loaded), kernel(random))
    with pytest.raises(BackboneError, match="does not fit"):  # V2's file is not V1's
        create_backbone("mobilenet", 32, str(shared_path(*MOBILENET_WEIGHTS)))
    # fine-tuning the whole pretrained trunk: BatchNorm layers stay frozen, and a training call of
    # the member model leaves their (folded) statistics as they were
    member = tiny_member(backbone="mobilenet", input_size=32, weights=str(path), dropout=0.0)
    model = build_member_model(member, 4)
    set_trainable(model, "mobilenet", "all", pretrained=True)
    trunk = trunk_of(model)
    norms = [layer for layer in trunk.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and not any(layer.trainable for layer in norms)
    assert any(layer.trainable for layer in trunk.layers if layer.weights and layer not in norms)
    before = np.asarray(norms[0].moving_mean).copy()
    images = np.random.default_rng(1).uniform(0, 255, size=(4, 32, 32, 3)).astype(np.float32)
    training = keras.ops.convert_to_numpy(model(images, training=True))
    np.testing.assert_array_equal(np.asarray(norms[0].moving_mean), before)
    # with augmentation off, a training call equals an inference call: BatchNorm used its stored statistics
    np.testing.assert_allclose(training, keras.ops.convert_to_numpy(model(images, training=False)), atol=1e-5)
