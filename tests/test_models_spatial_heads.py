"""Heads that keep where things are (CSRA, horizontal bands), non-square inputs, and epoch
selection on an inner split of the training folds (issue 12)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fashion_stack.core.config import ConfigError, MemberConfig, load_config
from fashion_stack.models import trainer
from fashion_stack.models.backbones import input_spec_of
from fashion_stack.models.embeddings import pool_cached_maps
from fashion_stack.models.heads import build_embedding_model, build_head_model, build_member_model
from fashion_stack.models.layers import BandPooling, ClassResidualAttention
from fashion_stack.models.poolings import POOLINGS as POOLING_REGISTRY

POOLINGS = ("avg", "max", "bands", "csra")
assert set(POOLINGS) == set(POOLING_REGISTRY)  # a new pooling gets its expected shapes below


def member(pooling: str = "avg", **overrides) -> MemberConfig:
    settings = dict(name="m", backbone="tiny_cnn", input_size=(48, 32), weights=None, pooling=pooling,
                    augment=False, batch_size=32, frozen_epochs=30, learning_rate=1e-2, dropout=0.0)
    settings.update(overrides)
    return MemberConfig(**settings)


def images(n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, size=(n, 48, 32, 3)).astype(np.float32)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_member_and_embedding_shapes_for_a_non_square_input(pooling):
    m = member(pooling)
    model, embed = build_member_model(m, 5), build_embedding_model(m)
    spec = input_spec_of(model)
    assert (spec.height, spec.width, spec.size) == (48, 32, (48, 32))
    assert model.predict_on_batch(images()).shape == (3, 5)
    features = np.asarray(embed.predict_on_batch(images()))
    # tiny_cnn halves four times: 48 x 32 -> a 3 x 2 map of 192 channels
    expected = {"avg": ((192,), np.float32), "max": ((192,), np.float32), "bands": ((3 * 192,), np.float32),
                "csra": ((3, 2, 192), np.float16)}[pooling]
    assert (features.shape[1:], features.dtype) == expected
    head = build_head_model(features.shape[1:], 5, m)
    assert head.predict_on_batch(features).shape == (3, 5)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_member_and_head_models_round_trip(tmp_path, pooling):
    m = member(pooling)
    model = build_member_model(m, 4)
    trainer.save_model(model, tmp_path / "member.keras")
    loaded = trainer.load_model(tmp_path / "member.keras")
    np.testing.assert_allclose(loaded.predict_on_batch(images()), model.predict_on_batch(images()), rtol=1e-5, atol=1e-6)
    assert input_spec_of(loaded) == input_spec_of(model)
    features = np.asarray(build_embedding_model(m).predict_on_batch(images()))
    head = build_head_model(features.shape[1:], 4, m)
    trainer.save_model(head, tmp_path / "head.keras")
    again = trainer.load_model(tmp_path / "head.keras")
    np.testing.assert_allclose(again.predict_on_batch(features), head.predict_on_batch(features), rtol=1e-5, atol=1e-6)


def test_band_pooling_is_the_mean_of_each_horizontal_band():
    maps = np.random.default_rng(1).normal(size=(2, 7, 5, 4)).astype(np.float32)
    pooled = np.asarray(BandPooling(3)(maps))
    bands = [(0, 2), (2, 5), (5, 7)]  # round(k * 7 / 3)
    expected = np.concatenate([maps[:, a:b].mean(axis=(1, 2)) for a, b in bands], axis=-1)
    np.testing.assert_allclose(pooled, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="lower its pooling's bands setting"):
        BandPooling(4)(maps[:, :3])


def test_csra_matches_the_paper_formula():
    maps = np.random.default_rng(2).normal(size=(2, 3, 4, 6)).astype(np.float32)
    layer = ClassResidualAttention(5, lam=0.3, temperature=2.0)
    logits = np.asarray(layer(maps))
    kernel, bias = (np.asarray(w) for w in layer.get_weights())
    scores = (maps.reshape(2, 12, 6) @ kernel + bias)  # (image, position, label)
    attention = np.exp(2.0 * scores) / np.exp(2.0 * scores).sum(axis=1, keepdims=True)
    expected = scores.mean(axis=1) + 0.3 * (attention * scores).sum(axis=1)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pooling", ("avg", "max", "bands"))
def test_pooling_a_cached_map_equals_the_member_pooling_the_trunk(pooling):
    import keras
    keras.utils.set_random_seed(0)
    maps = np.asarray(build_embedding_model(member("csra")).predict_on_batch(images(4)))
    keras.utils.set_random_seed(0)  # the same trunk weights again
    direct = np.asarray(build_embedding_model(member(pooling)).predict_on_batch(images(4)))
    from_cache = pool_cached_maps(maps, member(pooling))
    # the map is cached in float16: agreement to its precision
    np.testing.assert_allclose(from_cache, direct, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(from_cache, _numpy_pool(maps.astype(np.float32), pooling), rtol=1e-5, atol=1e-5)


def _numpy_pool(maps, pooling):
    if pooling == "avg":
        return maps.mean(axis=(1, 2))
    if pooling == "max":
        return maps.max(axis=(1, 2))
    edges = [round(k * maps.shape[1] / 3) for k in range(4)]
    return np.concatenate([maps[:, a:b].mean(axis=(1, 2)) for a, b in zip(edges[:-1], edges[1:])], axis=-1)


# ---- learnable synthetic maps: a label is a small patch at a fixed position ---------------------


def patch_maps(n: int, seed: int, negatives: str) -> tuple:
    """6 x 4 x 8 feature maps; label 0 is a strong patch in channel 0 at (5, 1), in the bottom
    band (shoes); label 1 (channel 1 raised everywhere) any head can learn.
    "top": negatives carry the same patch in the top band, so only its place differs and the
    channel averages of both classes are the same: global average pooling cannot tell them apart.
    "none": ReLU-like (non-negative) noise everywhere and negatives have no patch: the average
    sees the patch diluted 24 times under the noise, attention sees its peak."""
    rng = np.random.default_rng(seed)
    maps = rng.normal(0, 0.3 if negatives == "top" else 1.0, size=(n, 6, 4, 8)).astype(np.float32)
    if negatives == "none":
        maps = np.abs(maps)
    labels = (rng.random((n, 2)) < 0.5).astype(np.float32)
    maps[labels[:, 0] == 1, 5, 1, 0] += 4.0
    if negatives == "top":
        negative = np.flatnonzero(labels[:, 0] == 0)
        maps[negative, 0, rng.integers(4, size=len(negative)), 0] += 4.0
    maps[:, :, :, 1] += labels[:, 1:2, None]
    return maps, labels


def accuracy_of(pooling: str, negatives: str, tmp_path) -> np.ndarray:
    train_maps, train_labels = patch_maps(480, 0, negatives)
    test_maps, test_labels = patch_maps(240, 1, negatives)
    m = member(pooling)
    features, test_features = pool_cached_maps(train_maps, m), pool_cached_maps(test_maps, m)
    model = trainer.train_head(m, features, train_labels, tmp_path / pooling, seed=0)
    probs = trainer.predict_embeddings(model, test_features)
    return ((probs >= 0.5) == test_labels.astype(bool)).mean(axis=0)


@pytest.mark.slow
def test_band_pooling_finds_a_patch_by_its_place_where_average_pooling_is_at_chance(tmp_path):
    average, bands = accuracy_of("avg", "top", tmp_path), accuracy_of("bands", "top", tmp_path)
    assert average[1] > 0.95 and bands[1] > 0.95  # both learnt the easy label
    assert average[0] < 0.65, average  # chance is 0.5: the average cannot see where the patch is
    assert bands[0] > 0.9, bands


@pytest.mark.slow
def test_csra_finds_a_small_patch_that_average_pooling_dilutes(tmp_path):
    average, csra = accuracy_of("avg", "none", tmp_path), accuracy_of("csra", "none", tmp_path)
    # measured: average 0.67, CSRA 0.92 on label 0 (chance 0.5)
    assert average[1] > 0.95 and csra[1] > 0.95
    assert csra[0] > 0.85 and csra[0] - average[0] > 0.15, (average, csra)


# ---- epoch selection on an inner split ------------------------------------------------------------


def test_inner_split_is_seeded_disjoint_and_refuses_an_empty_side():
    fit, inner = trainer.inner_split(50, 0.2, seed=3)
    assert len(inner) == 10 and not set(fit) & set(inner) and sorted(set(fit) | set(inner)) == list(range(50))
    again = trainer.inner_split(50, 0.2, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((fit, inner), again))
    with pytest.raises(ValueError, match="inner_fraction"):
        trainer.inner_split(2, 0.2, seed=0)


def overfitting_data(n: int = 200, seed: int = 0):
    """Pure noise labels on wide features: a head can only memorise, so the inner loss rises
    after the first epochs and selection must stop early."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 256)).astype(np.float32), (rng.random((n, 3)) < 0.3).astype(np.float32)


def test_inner_split_selection_stops_early_and_records_the_chosen_epoch(tmp_path):
    features, labels = overfitting_data()
    m = member("avg", frozen_epochs=25, learning_rate=3e-2, epoch_selection="inner_split", patience=2)
    trainer.train_head(m, features, labels, tmp_path / "fold", seed=0)
    rows = pd.read_csv(tmp_path / "fold" / trainer.SELECTION)
    history = pd.read_csv(tmp_path / "fold" / trainer.HISTORY)
    chosen = trainer.chosen_epochs(tmp_path / "fold")["head"]
    assert chosen == int(rows.loc[rows["inner_loss"].idxmin(), "epoch"])
    assert len(history) == len(rows) == chosen + 2 < 25  # stopped `patience` epochs after the best
    assert (rows["inner_images"] == 40).all()


def test_selection_resumed_after_a_kill_equals_an_uninterrupted_run(tmp_path):
    features, labels = overfitting_data()
    m = member("avg", frozen_epochs=25, learning_rate=3e-2, epoch_selection="inner_split", patience=2)
    whole = trainer.train_head(m, features, labels, tmp_path / "whole", seed=0)

    class Kill(Exception):
        pass

    import keras

    class KillAtEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise Kill()

    with pytest.raises(Kill):
        trainer.train_head(m, features, labels, tmp_path / "resumed", seed=0, callbacks=[KillAtEpoch()])
    resumed = trainer.train_head(m, features, labels, tmp_path / "resumed", seed=0)
    assert trainer.chosen_epochs(tmp_path / "resumed") == trainer.chosen_epochs(tmp_path / "whole")
    np.testing.assert_allclose(resumed.predict(features, verbose=0), whole.predict(features, verbose=0), atol=1e-5)


def test_config_takes_the_new_member_fields_and_refuses_bad_ones(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("members:\n  - name: a\n    pooling: csra\n    input_size: [320, 224]\n"
                    "    epoch_selection: inner_split\n")
    loaded = load_config(path).members[0]
    assert (loaded.pooling.name, loaded.input_size, loaded.epoch_selection) == ("csra", (320, 224), "inner_split")
    path.write_text("members:\n  - name: a\n    pooling: attention\n")
    with pytest.raises(ConfigError, match=r"members\[0\]\.pooling: the string 'attention' is not one of avg"):
        load_config(path, choices={"members.pooling": POOLING_REGISTRY})


# ---- through the members stage ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["frozen", "finetune"])
def test_stage_member_with_a_map_head_non_square_input_and_epoch_selection(tmp_path, mode):
    """A CSRA member at 32 x 16 with inner-split selection: the frozen path caches float16 maps,
    every fold records the chosen epoch, and the held-out ids are never among the scored ones."""
    import json

    from fashion_stack.models.stage import run_members
    from models_synthetic import make_run, tiny_member

    ctx = make_run(tmp_path, k=3)
    ctx.config.members = [tiny_member("m", mode=mode, pooling="csra", input_size=(32, 16),
                                      frozen_epochs=4, head_epochs=1, finetune_epochs=3,
                                      epoch_selection="inner_split", patience=1, inner_fraction=0.25)]
    run_members(ctx)
    if mode == "frozen":
        features = np.load(ctx.run.member_dir("m") / "embeddings" / "features.npy")
        assert features.dtype == np.float16 and features.shape[1:] == (2, 1, 192)
    for k in range(3):
        fold_dir = ctx.run.fold_dir("m", k)
        done = json.loads((fold_dir / "DONE.json").read_text())
        rows = pd.read_csv(fold_dir / trainer.SELECTION)
        assert done["scores"]["chosen_epochs"] == trainer.chosen_epochs(fold_dir)
        assert set(done["scores"]["chosen_epochs"]) == set(rows["phase"])
        # the inner split is a quarter of this fold's training ids (16), not its held-out ones
        assert (rows["inner_images"] == round(len(done["trained_ids"]) * 0.25)).all()
        model = trainer.load_model(fold_dir / trainer.MODEL_FILE)
        if mode == "frozen":  # the head reads the 2 x 1 map of a 32 x 16 image
            assert tuple(model.input_shape[1:]) == (2, 1, 192)
        else:
            assert input_spec_of(model).shape == (32, 16, 3)
