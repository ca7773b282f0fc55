"""Gradient accumulation (hardware.micro_batch_size): a member's batch runs as micro-batches whose
mean gradient makes one optimizer step, so its activations are held for a micro-batch only. With
nothing that depends on the micro-batch (BatchNorm frozen in a pretrained trunk, no dropout or
augmentation draws) it trains the same weights as one pass per batch, up to float order."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from fashion_stack.core.config import ConfigError, HardwareConfig, PipelineConfig, validate
from fashion_stack.models import trainer
from fashion_stack.models.backbones import create_backbone
from fashion_stack.models.inputs import accumulation_order, training_batches
from fashion_stack.models.stage import member_hash
from models_synthetic import make_run, tiny_member


def _train(tmp_path, name, member, paths, labels):
    model = trainer.train_finetune(member, paths, labels, tmp_path / name, seed=3)
    return [np.asarray(w) for w in model.get_weights()]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("micro")
    ctx = make_run(root / "run", n_train=20, n_validation=0, n_test=0, k=2)
    manifest = pd.read_parquet(ctx.run.manifest)
    labels = np.stack([np.isin(np.arange(6) + 1, [int(v) for v in text.split()]) for text in manifest["labels"]])
    trunk = root / "tiny.weights.h5"  # a "pretrained" trunk: its BatchNorm statistics stay frozen
    create_backbone("tiny_cnn", 16, None).save_weights(str(trunk))
    return list(manifest["path"]), labels.astype(np.uint8), str(trunk)


def test_three_micro_batches_train_the_weights_one_batch_does(tmp_path, images):
    """20 images at batch 6: three full batches and a short one of 2 (padded, weighted), two phases
    (head, then the top block), a cosine schedule over the optimizer steps."""
    paths, labels, trunk = images
    member = tiny_member(weights=trunk, batch_size=6, dropout=0.0, head_epochs=2, finetune_epochs=2,
                         unfreeze="top", learning_rate=3e-2, finetune_learning_rate=1e-2, checkpoint_minutes=0)
    whole = _train(tmp_path, "whole", member, paths, labels)
    micro = _train(tmp_path, "micro", dataclasses.replace(
        member, hardware=dataclasses.replace(member.hardware, micro_batch_size=2)), paths, labels)
    moved = max(np.abs(w - w0).max() for w, w0 in zip(whole, _train(tmp_path, "none", dataclasses.replace(
        member, head_epochs=0, finetune_epochs=0), paths, labels)) if w.size)
    assert moved > 1e-2  # training moved the weights: the comparison below means something
    for a, b in zip(whole, micro):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)


def test_a_short_last_batch_is_padded_and_weighted_to_its_own_mean():
    order, weights = accumulation_order(np.arange(10), batch_size=4, micro_batch_size=2)
    assert list(order) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 8, 9]
    assert list(weights) == [1] * 8 + [2, 2, 0, 0]
    # each batch's micro-batch means average to the batch's mean: sum(w x loss) / len = mean loss
    loss = np.random.default_rng(0).random(10)
    for batch in range(3):
        rows = slice(4 * batch, 4 * batch + 4)
        micro_means = [np.sum(weights[rows][m:m + 2] * loss[order[rows][m:m + 2]]) / 2 for m in (0, 2)]
        assert np.mean(micro_means) == pytest.approx(loss[np.arange(10)[rows]].mean())


def test_the_reader_yields_micro_batches_with_weights_and_skips_micro_batches(images):
    paths, labels, _ = images
    data = list(training_batches(paths[:10], labels[:10], 16, "pad", 4, seed=0, epoch=0, micro_batch_size=2))
    assert [len(x) for x, _, _ in data] == [2] * 6 and [list(w) for _, _, w in data][-2:] == [[2, 2], [0, 0]]
    resumed = list(training_batches(paths[:10], labels[:10], 16, "pad", 4, seed=0, epoch=0, micro_batch_size=2,
                                    skip_batches=3))
    assert len(resumed) == 3
    np.testing.assert_array_equal(np.asarray(resumed[0][0]), np.asarray(data[3][0]))


def _config(**member):
    config = PipelineConfig()
    config.members = [tiny_member("densenet", **member)]
    return config


@pytest.mark.parametrize("member, says", [
    (dict(batch_size=48, micro_batch_size=20), "members[0] (densenet).hardware.micro_batch_size is 20, which does "
                                               "not divide batch_size 48; use a divisor of it (e.g. 16) or null"),
    (dict(batch_size=8, micro_batch_size=4, ema_decay=0.99), "with ema_decay is not supported"),
    (dict(batch_size=8, micro_batch_size=4, mode="frozen"), "only a fine-tuned member accumulates"),
])
def test_a_micro_batch_that_cannot_work_is_refused_at_load_in_one_line_naming_the_member(member, says):
    with pytest.raises(ConfigError) as caught:
        validate(_config(**member))
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_the_hash_changes_only_when_a_batch_is_split():
    base = member_hash(tiny_member(batch_size=8), "train", ["1"])
    assert member_hash(tiny_member(batch_size=8, micro_batch_size=8), "train", ["1"]) == base
    assert member_hash(tiny_member(batch_size=8, micro_batch_size=4), "train", ["1"]) != base
    validate(_config(batch_size=8, micro_batch_size=8))  # no split: accepted, nothing changes
    assert HardwareConfig().micro_batch_size is None


def test_a_trained_member_keeps_no_traced_train_step_and_still_trains(tmp_path, images):
    """Each phase's traced train step is dropped once its weights are saved (densenet201's is about
    0.75 GB of graph), so prediction does not hold it beside its own; Keras traces it again on demand."""
    paths, labels, trunk = images
    member = tiny_member(weights=trunk, batch_size=6, head_epochs=1, finetune_epochs=1, unfreeze="top",
                         checkpoint_minutes=0)
    model = trainer.train_finetune(member, paths, labels, tmp_path / "released", seed=3)
    assert model.train_function is None
    x = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    before = [np.asarray(w).copy() for w in model.trainable_weights]
    model.train_on_batch(x, labels[:4].astype("float32"))
    assert any(np.abs(np.asarray(w) - b).max() > 0 for w, b in zip(model.trainable_weights, before))
