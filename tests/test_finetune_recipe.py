"""The fine-tuning recipe's options (issue 21): LP-FT (the head fitted on cached embeddings first),
warm-up, layer-wise learning rates, an average of the weights, and scale TTA; each checked
against what it promises, on tiny models."""
from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from fashion_stack.core import atomic, predictions  # noqa: E402
from fashion_stack.core.config import ConfigError, PipelineConfig, validate  # noqa: E402
from fashion_stack.datasets.folds import read_folds  # noqa: E402
from fashion_stack.datasets.manifest import pool_labels, read_manifest  # noqa: E402
from fashion_stack.models import trainer  # noqa: E402
from fashion_stack.models.heads import build_member_model  # noqa: E402
from fashion_stack.models.stage import run_members  # noqa: E402
from fashion_stack.models.trainer import LayerwiseAdam, _compile, centre_zoom, finetune_phases, layerwise_factors  # noqa: E402
from fashion_stack.models.devices import resolve_placement  # noqa: E402
from models_synthetic import make_run, tiny_member  # noqa: E402
from test_members_learn import LABEL_IDS, assert_member_learnt  # noqa: E402


def test_lpft_drops_the_image_head_phase():
    pretrained = dict(weights="x.weights.h5", head_epochs=3, finetune_epochs=4, unfreeze="all")
    assert [p.name for p in finetune_phases(tiny_member(**pretrained))] == ["head", "all"]
    assert [p.name for p in finetune_phases(tiny_member(**pretrained, head_init="embeddings"))] == ["all"]


def test_layerwise_factors_rise_geometrically_with_depth_and_leave_the_head_at_one():
    model = build_member_model(tiny_member(input_size=16), 3)
    factors = layerwise_factors(model, 0.1)
    trunk = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    weighted = [layer for layer in trunk.layers if layer.weights]
    first, last = weighted[0].weights[0].path, weighted[-1].weights[0].path
    assert factors[first] == pytest.approx(0.1) and factors[last] == pytest.approx(1.0)
    assert all(0.1 - 1e-9 <= f <= 1.0 for f in factors.values())
    assert model.get_layer("label_probs").kernel.path not in factors  # the head: full rate
    assert layerwise_factors(model, 1.0) == {}


def _one_step(member, phase="all", batch_size=8):
    keras.utils.set_random_seed(0)
    model = build_member_model(member, 3)
    placement = resolve_placement(member)
    _compile(model, member, 0.01, 10, placement, phase)
    before = [np.asarray(v).copy() for v in model.trainable_variables]
    x = np.random.default_rng(0).uniform(0, 255, (8, 16, 16, 3)).astype(np.float32)
    y = (np.random.default_rng(1).random((8, 3)) < 0.5).astype(np.float32)
    model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0, shuffle=False)
    return model, {v.path: np.abs(np.asarray(v) - b).max() for v, b in zip(model.trainable_variables, before)}


def test_a_layer_with_factor_zero_point_zero_one_moves_a_hundredth_as_far():
    base = dict(input_size=16, augment=False, dropout=0.0)
    _, plain = _one_step(tiny_member(**base))
    model, scaled = _one_step(tiny_member(**base, trunk_lr_floor=0.01))
    factors = layerwise_factors(model, 0.01)
    first = min(factors, key=factors.get)
    # Adam's first step moves each weight by about the learning rate, whatever its gradient
    assert scaled[first] == pytest.approx(plain[first] * factors[first], rel=1e-3)
    head = model.get_layer("label_probs").kernel.path
    assert scaled[head] == pytest.approx(plain[head], rel=1e-6)


def test_warmup_starts_the_phase_near_zero_and_the_head_phase_ignores_it():
    member = tiny_member(input_size=16, warmup_fraction=0.5)
    model = build_member_model(member, 3)
    _compile(model, member, 0.01, 10, resolve_placement(member), "all")
    schedule = model.optimizer._learning_rate
    assert float(schedule(0)) == pytest.approx(0.0) and float(schedule(5)) == pytest.approx(0.01, rel=1e-3)
    _compile(model, member, 0.01, 10, resolve_placement(member), "head")
    assert float(model.optimizer._learning_rate(0)) == pytest.approx(0.01)


def test_the_weight_average_is_swapped_in_at_the_phase_end_only():
    member = tiny_member(input_size=16, augment=False, ema_decay=0.5)
    model, _ = _one_step(member, batch_size=4)  # two steps: the average differs from the last
    assert isinstance(model.optimizer, LayerwiseAdam) and model.optimizer.use_ema
    raw = [np.asarray(v).copy() for v in model.trainable_variables]
    averages = [np.asarray(v).copy() for v in model.optimizer._model_variables_moving_average]
    assert any(not np.allclose(r, a) for r, a in zip(raw, averages))  # fit did not swap it in
    trainer._swap_in_average(model)
    for variable, average in zip(model.trainable_variables, averages):
        np.testing.assert_allclose(np.asarray(variable), average)


def test_centre_zoom_crops_the_middle_and_scale_one_is_the_identity():
    images = np.zeros((1, 8, 8, 3), np.float32)
    images[:, 2:6, 2:6] = 255.0  # a bright centre square of half the side
    np.testing.assert_array_equal(centre_zoom(images, 1.0), images)
    zoomed = centre_zoom(images, 2.0)
    assert zoomed.shape == images.shape and zoomed.min() == pytest.approx(255.0)  # the centre fills the view


def test_ema_with_inner_split_epoch_selection_is_refused():
    config = PipelineConfig(members=[tiny_member(ema_decay=0.9, epoch_selection="inner_split")])
    with pytest.raises(ConfigError, match="ema_decay with epoch_selection inner_split"):
        validate(config)


def test_lpft_member_fits_its_head_on_embeddings_then_fine_tunes_and_learns(tmp_path):
    ctx = make_run(tmp_path, n_train=60, n_validation=0, n_test=4, k=2, pool="train")
    # tiny_cnn has no pretrained weights; a local file of its own random trunk stands in for them
    from fashion_stack.models.backbones import create_backbone
    weights = tmp_path / "trunk.weights.h5"
    create_backbone("tiny_cnn", 16, None).save_weights(str(weights))
    member = tiny_member("lpft", input_size=16, weights=str(weights), head_init="embeddings", unfreeze="all",
                         frozen_epochs=30, finetune_epochs=6, learning_rate=0.03, finetune_learning_rate=3e-3, warmup_fraction=0.2,
                         batch_size=16, tta_scales=[1.0, 1.2], tta_flip=True)
    ctx.config.members = [member]
    run_members(ctx)
    unit = ctx.run.member_dir("lpft") / "fold0"
    head = trainer.read_history(unit / "head" / trainer.HISTORY)
    assert list(head["phase"].unique()) == ["head"] and len(head) == 30  # the head on cached embeddings
    tuned = trainer.read_history(unit / trainer.HISTORY)
    assert list(tuned["phase"].unique()) == ["all"] and len(tuned) == 6
    assert (ctx.run.member_dir("lpft") / "head_embeddings" / "features.npy").is_file()
    folds = read_folds(ctx.run.folds)
    y = pool_labels(read_manifest(ctx.run.manifest), list(folds.index), ctx.label_space(), ctx.config.data.pool)
    oof = predictions.read(ctx.run.member_dir("lpft") / "oof.parquet", LABEL_IDS).reindex(folds.index).to_numpy()
    assert_member_learnt(oof, y, folds.to_numpy())
    assert atomic.read_json(unit / "DONE.json")["scores"]["micro_f1@best"] > 0
