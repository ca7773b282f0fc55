"""Heads, losses, trainable phases, precision and save/load."""
from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from fashion_stack.core.config import plugin  # noqa: E402
from fashion_stack.models.heads import build_head_model, build_member_model, set_trainable, trunk_of  # noqa: E402
from fashion_stack.models.layers import AsymmetricLoss  # noqa: E402
from fashion_stack.models.losses import get_loss, member_loss  # noqa: E402
from fashion_stack.models.trainer import load_model, save_model  # noqa: E402
from models_synthetic import tiny_member  # noqa: E402


def _probs_and_truth(seed=0, shape=(16, 7)):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.01, 0.99, shape).astype(np.float32), (rng.random(shape) < 0.3).astype(np.float32)


def test_asymmetric_loss_without_focusing_or_clip_equals_binary_cross_entropy():
    probs, truth = _probs_and_truth()
    ours = float(AsymmetricLoss(gamma_pos=0, gamma_neg=0, clip=0)(truth, probs))
    reference = float(keras.losses.BinaryCrossentropy()(truth, probs))
    assert ours == pytest.approx(reference, rel=1e-5)


def test_asymmetric_loss_matches_the_paper_formula():
    probs, truth = _probs_and_truth(1)
    shifted = np.maximum(probs - 0.05, 0)
    reference = -(truth * (1 - probs) ** 1 * np.log(probs)
                  + (1 - truth) * shifted ** 4 * np.log(1 - shifted)).mean()
    ours = float(AsymmetricLoss(gamma_pos=1, gamma_neg=4, clip=0.05)(truth, probs))
    assert ours == pytest.approx(reference, rel=1e-5)


def test_focal_loss_down_weights_easy_examples_relative_to_cross_entropy():
    truth = np.array([[1.0, 0.0]], np.float32)
    easy, hard = np.array([[0.95, 0.05]], np.float32), np.array([[0.3, 0.7]], np.float32)
    ratio = lambda p: float(get_loss("focal")(truth, p)) / float(get_loss("bce")(truth, p))  # noqa: E731
    assert ratio(easy) < ratio(hard) < 1


def test_a_members_loss_settings_reach_the_loss_it_trains_with():
    probs, truth = _probs_and_truth(2)
    member = tiny_member(loss=plugin("asymmetric", gamma_pos=0.5, gamma_neg=2.0, clip=0.1))
    shifted = np.maximum(probs - 0.1, 0)
    reference = -(truth * (1 - probs) ** 0.5 * np.log(probs)
                  + (1 - truth) * shifted ** 2 * np.log(1 - shifted)).mean()
    assert float(member_loss(member)(truth, probs)) == pytest.approx(reference, rel=1e-5)
    # focal: -(1 - p_t)^gamma log(p_t), p_t the probability of the true value, averaged over labels
    p_t = np.where(truth == 1, probs, 1 - probs)
    for gamma in (0.0, 1.0, 3.0):
        focal = -((1 - p_t) ** gamma * np.log(p_t)).mean()
        assert float(member_loss(tiny_member(loss=plugin("focal", gamma=gamma)))(truth, probs)) == pytest.approx(
            focal, rel=1e-4)


def test_unknown_loss_and_pooling_name_the_options():
    with pytest.raises(ValueError, match="asymmetric"):
        get_loss("hinge")
    with pytest.raises(ValueError, match="avg"):
        build_member_model(tiny_member(pooling="mean"), 4)


def test_head_has_one_sigmoid_per_label_and_optional_hidden_layer():
    model = build_member_model(tiny_member(hidden_units=12, pooling="max"), 9)
    assert model.output_shape == (None, 9)
    assert model.get_layer("head_hidden").units == 12
    assert model.get_layer("label_probs").activation.__name__ == "sigmoid"


@pytest.mark.parametrize("policy, compute", [("mixed_float16", "float16"), ("mixed_bfloat16", "bfloat16")])
def test_mixed_precision_computes_in_half_precision_but_outputs_float32(policy, compute):
    model = build_member_model(tiny_member(), 4, precision=policy)
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after building
    assert trunk_of(model).get_layer("tiny_block1_conv").compute_dtype == compute
    out = model.predict_on_batch(np.zeros((1, 16, 16, 3), np.float32))
    assert str(out.dtype) == "float32"


def test_phases_unfreeze_the_top_blocks_and_keep_pretrained_batchnorm_frozen():
    model = build_member_model(tiny_member(), 4)
    trunk = trunk_of(model)
    set_trainable(model, "tiny_cnn", "head")
    assert trunk.trainable_weights == []
    set_trainable(model, "tiny_cnn", "top", pretrained=True)
    trainable = {w.path.split("/")[-2] for w in trunk.trainable_weights}
    assert trainable == {"tiny_block4_conv"}  # after tiny_block3_pool; its BatchNorm stays frozen
    set_trainable(model, "tiny_cnn", "all", pretrained=False)
    assert len(trunk.trainable_weights) == 4 + 2 * 4  # kernels + BN gamma/beta


@pytest.mark.parametrize("augment", [False, True])
def test_saved_member_model_loads_and_predicts_the_same(tmp_path, augment):
    model = build_member_model(tiny_member(augment=augment, hidden_units=8), 5)
    images = np.random.default_rng(2).uniform(0, 255, (3, 16, 16, 3)).astype(np.float32)
    save_model(model, tmp_path / "model.keras")
    loaded = load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded.predict_on_batch(images), model.predict_on_batch(images), atol=1e-6)
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_saved_head_model_round_trip(tmp_path):
    model = build_head_model(10, 4, tiny_member(hidden_units=6))
    features = np.random.default_rng(3).normal(size=(5, 10)).astype(np.float32)
    save_model(model, tmp_path / "head.keras")
    np.testing.assert_allclose(load_model(tmp_path / "head.keras").predict_on_batch(features),
                               model.predict_on_batch(features), atol=1e-6)
