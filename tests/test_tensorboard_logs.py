"""TensorBoard logs per (member, unit): what TensorBoard's own reader finds in the folder, compared
with Keras's History and an independent cosine-decay formula."""
from __future__ import annotations

import math

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

from fashion_stack.core.config import PipelineConfig  # noqa: E402
from fashion_stack.models.tensorboard_logs import training_log_callbacks, training_log_dir  # noqa: E402

N_IMAGES, BATCH = 12, 4  # 3 batches per epoch


def _config(enabled=True, every_n_batches=0) -> PipelineConfig:
    config = PipelineConfig()
    config.tensorboard.enabled, config.tensorboard.every_n_batches = enabled, every_n_batches
    return config


def _data():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(N_IMAGES, 5)).astype(np.float32)
    return features, (features[:, :3] > 0).astype(np.float32)


def _model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, activation="sigmoid")])


def _fit(model, callbacks, learning_rate, epochs, decay_steps):
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=decay_steps, alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="binary_crossentropy")
    features, labels = _data()
    return model.fit(features, labels, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0,
                     callbacks=callbacks).history


def _cosine(learning_rate, step, decay_steps, alpha=0.05):
    fraction = min(step, decay_steps) / decay_steps
    return learning_rate * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * fraction)) + alpha)


def _scalars(folder, tag):
    reader = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.TENSORS: 0})
    reader.Reload()
    return [(event.step, float(tf.make_ndarray(event.tensor_proto))) for event in reader.Tensors(tag)]


def test_two_phases_and_a_restart_share_one_epoch_axis_with_loss_and_learning_rate(tmp_path):
    model, steps_per_epoch = _model(), N_IMAGES // BATCH
    callbacks = training_log_callbacks(tmp_path, "tiny", "fold0", _config())
    head = _fit(model, callbacks, 1e-2, epochs=2, decay_steps=2 * steps_per_epoch)
    top = _fit(model, callbacks, 1e-3, epochs=2, decay_steps=3 * steps_per_epoch)
    # a new process resumes the unit: new callbacks, same folder
    resumed = _fit(model, training_log_callbacks(tmp_path, "tiny", "fold0", _config()), 1e-3, epochs=1,
                   decay_steps=3 * steps_per_epoch)
    train_dir = training_log_dir(tmp_path, "tiny", "fold0") / "train"
    assert train_dir.parent == tmp_path / "members" / "tiny" / "fold0" / "tensorboard"
    losses = _scalars(train_dir, "epoch_loss")
    assert [step for step, _ in losses] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([v for _, v in losses], head["loss"] + top["loss"] + resumed["loss"], rtol=1e-5)
    rates = [v for _, v in _scalars(train_dir, "epoch_learning_rate")]
    expected = ([_cosine(1e-2, e * steps_per_epoch, 2 * steps_per_epoch) for e in (1, 2)]
                + [_cosine(1e-3, e * steps_per_epoch, 3 * steps_per_epoch) for e in (1, 2)]
                + [_cosine(1e-3, steps_per_epoch, 3 * steps_per_epoch)])
    np.testing.assert_allclose(rates, expected, rtol=1e-5)
    assert rates[0] > rates[1]  # the schedule is visible: a constant would not pass


def test_every_n_batches_logs_the_running_loss_on_a_batch_axis_across_epochs(tmp_path):
    model = _model()
    history = _fit(model, training_log_callbacks(tmp_path, "tiny", "fold1", _config(every_n_batches=2)), 1e-2,
                   epochs=2, decay_steps=6)
    batches = _scalars(training_log_dir(tmp_path, "tiny", "fold1") / "train", "batch_loss")
    assert [step for step, _ in batches] == [2, 4, 6]  # batches 1-3 in epoch 1, 4-6 in epoch 2
    assert batches[-1][1] == pytest.approx(history["loss"][-1], rel=1e-5)  # the epoch's mean, at its last batch


def test_disabled_logs_give_no_callbacks_and_write_nothing(tmp_path):
    assert training_log_callbacks(tmp_path, "tiny", "fold0", _config(enabled=False)) == []
    assert not (tmp_path / "members").exists()
    with pytest.raises(ValueError, match="every_n_batches"):
        training_log_callbacks(tmp_path, "tiny", "fold0", _config(every_n_batches=-1))
