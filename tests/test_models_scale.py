"""Members at scale: placement (devices, precision, XLA), resume inside an epoch, data parallel on
logical CPU devices, and the model carrying its own input settings."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

keras = pytest.importorskip("keras")

from fashion_stack.core import predictions  # noqa: E402
from fashion_stack.models import trainer  # noqa: E402
from fashion_stack.models.backbones import input_spec_of, resolve_input_spec  # noqa: E402
from fashion_stack.models.devices import (Accelerators, resolve_jit, resolve_placement, resolve_precision,  # noqa: E402
                            scaled_learning_rate)
from fashion_stack.models.heads import build_member_model  # noqa: E402
from fashion_stack.models.stage import load_stage_data, member_hash, run_member  # noqa: E402
from models_synthetic import make_run, tiny_member  # noqa: E402

WORKER = Path(__file__).with_name("scale_worker.py")


# ---- placement -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind, capability, setting, policy", [
    ("gpu", 9.0, "auto", "mixed_bfloat16"),  # H100/H200
    ("gpu", 8.0, "auto", "mixed_bfloat16"),  # A100
    ("gpu", 7.0, "auto", "mixed_float16"),  # V100: no native bfloat16
    ("tpu", None, "auto", "mixed_bfloat16"),
    ("cpu", None, "auto", "float32"),
    ("cpu", None, "bfloat16", "mixed_bfloat16"),  # asked for explicitly: given
    ("gpu", 9.0, "float16", "mixed_float16"),
    ("gpu", 9.0, "off", "float32"),
])
def test_precision_follows_the_hardware_unless_asked(kind, capability, setting, policy):
    assert resolve_precision(setting, Accelerators(kind, ("d0",), capability)) == policy


def test_xla_is_on_for_jax_and_accelerators_and_off_for_tensorflow_on_cpu():
    assert resolve_jit("auto", "jax", "cpu") is True
    assert resolve_jit("auto", "tensorflow", "gpu") is True
    assert resolve_jit("auto", "tensorflow", "cpu") is False
    assert resolve_jit("on", "tensorflow", "cpu") is True and resolve_jit("off", "jax", "gpu") is False


def test_learning_rate_scales_with_the_replicas_as_configured():
    assert scaled_learning_rate(1e-3, "linear", 8) == pytest.approx(8e-3)
    assert scaled_learning_rate(1e-3, "sqrt", 4) == pytest.approx(2e-3)
    assert scaled_learning_rate(1e-3, "none", 8) == pytest.approx(1e-3)


def test_on_this_cpu_a_member_trains_on_one_device_in_float32():
    placement = resolve_placement(tiny_member())
    assert placement.replicas == 1 and placement.kind == "cpu"
    assert placement.precision_policy == "float32" and placement.jit_compile is False


def test_speed_settings_do_not_make_finished_folds_stale():
    base = member_hash(tiny_member(), "train", ["1"])
    assert member_hash(tiny_member(cache="disk", reader="process", checkpoint_steps=50,
                                   steps_per_execution=4, data_parallel="on"), "train", ["1"]) == base
    assert member_hash(tiny_member(learning_rate=1e-2), "train", ["1"]) != base


# ---- the model carries its input settings ---------------------------------------------------


def test_a_saved_model_carries_its_input_spec_and_prediction_uses_it(tmp_path):
    member = tiny_member(resize="crop", input_size=20)
    model = build_member_model(member, 3)
    path = tmp_path / "model.keras"
    trainer.save_model(model, path)
    loaded = trainer.load_model(path)
    assert input_spec_of(loaded) == resolve_input_spec(member)
    assert (input_spec_of(loaded).size, input_spec_of(loaded).resize) == (20, "crop")
    ctx = make_run(tmp_path / "run", n_train=4, n_validation=0, n_test=3, k=2)
    manifest = pd.read_parquet(ctx.run.manifest)
    paths = list(manifest.loc[manifest["split"] == "test", "path"])
    # the member config is not consulted: the same probabilities whatever resize a caller has in mind
    probs = trainer.predict_images(loaded, paths, batch_size=2)
    from fashion_stack.models.inputs import prediction_batches

    def made_as(resize):
        images = np.concatenate([np.asarray(b) for b in prediction_batches(paths, 20, resize, 8)])
        return loaded.predict_on_batch(images.astype(np.float32))
    np.testing.assert_allclose(probs, made_as("crop"), atol=1e-6)
    assert np.abs(probs - made_as("pad")).max() > 1e-4  # the policy matters, and the model's own was used


# ---- resume inside an epoch -----------------------------------------------------------------


class StopAtStep(keras.callbacks.Callback):
    """Raises after `n` training steps in total (an interrupt that leaves the process alive)."""

    def __init__(self, n):
        super().__init__()
        self.n, self.steps = n, 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.steps == self.n:
            raise KeyboardInterrupt


def _fold0_probs(ctx):
    return predictions.read(ctx.run.fold_dir("tiny", 0) / "oof.parquet").to_numpy()


def test_an_interrupted_epoch_resumes_at_its_last_checkpoint_and_matches_an_uninterrupted_run(tmp_path):
    # 24 + 12 pool images, k=2: 18 training images, batch 4 -> 5 steps per epoch, 3 epochs
    member = tiny_member("tiny", head_epochs=0, finetune_epochs=3, batch_size=4, checkpoint_steps=2,
                         augment=True, dropout=0.3)
    straight = make_run(tmp_path / "straight", k=2)
    straight.config.members = [member]
    run_member(straight, member, load_stage_data(straight))

    ctx = make_run(tmp_path / "resumed", k=2)
    ctx.config.members = [member]
    data = load_stage_data(ctx)
    with pytest.raises(KeyboardInterrupt):
        run_member(ctx, member, data, callbacks=[StopAtStep(8)])  # epoch 2, step 3: last checkpoint at step 2
    checkpoint = ctx.run.fold_dir("tiny", 0) / "checkpoint" / "all.npz"
    assert checkpoint.exists()
    counter = StopAtStep(10**9)
    run_member(ctx, member, data, callbacks=[counter])
    # fold 0 redid 2 steps of epoch 2 (from its step-2 checkpoint) plus epoch 3; fold 1 all 15
    assert counter.steps == (5 - 2) + 5 + 15
    steps = pd.read_csv(ctx.run.fold_dir("tiny", 0) / "steps.csv")
    assert list(zip(steps["epoch"], steps["step"])) == [(e, s) for e in (1, 2, 3) for s in range(1, 6)]
    history = pd.read_csv(ctx.run.fold_dir("tiny", 0) / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3]
    # same data order, same augmentation and dropout draws, same optimizer state: the same model
    np.testing.assert_allclose(_fold0_probs(ctx), _fold0_probs(straight), atol=1e-6)
    assert not checkpoint.exists()  # spent once the fold is done


def test_a_checkpoint_from_another_architecture_is_not_trusted(tmp_path):
    ctx = make_run(tmp_path, k=2)
    manifest = pd.read_parquet(ctx.run.manifest)
    train = manifest[manifest["split"] == "train"].iloc[:20]
    labels = np.stack([[1.0 if str(j + 1) in text.split() else 0.0 for j in range(6)] for text in train["labels"]])
    fold_dir = tmp_path / "fold"
    narrow = tiny_member("tiny", head_epochs=0, finetune_epochs=1, batch_size=4, checkpoint_steps=1)
    with pytest.raises(KeyboardInterrupt):
        trainer.train_finetune(narrow, list(train["path"]), labels, fold_dir, seed=0, callbacks=[StopAtStep(3)])
    assert (fold_dir / "checkpoint" / "all.npz").exists()
    wider = tiny_member("tiny", head_epochs=0, finetune_epochs=1, batch_size=4, hidden_units=8)
    counter = StopAtStep(10**9)
    trainer.train_finetune(wider, list(train["path"]), labels, fold_dir, seed=0, callbacks=[counter])
    assert counter.steps == 5  # the whole epoch: the narrow model's checkpoint was refused, not loaded


def _worker(root: Path, *args, env=None, check=True):
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    done = subprocess.run([sys.executable, str(WORKER), str(root), *args], capture_output=True, text=True,
                          env=environment, timeout=600)
    if check and done.returncode != 0:
        raise AssertionError(f"worker failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def _summary(done) -> dict:
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.integration
def test_kill_minus_9_mid_epoch_loses_only_the_steps_since_the_last_checkpoint(tmp_path):
    member = ["--member", "head_epochs=0", "--member", "finetune_epochs=3", "--member", "batch_size=4",
              "--member", "checkpoint_steps=3", "--member", "augment=true"]
    steps_log = tmp_path / "steps.log"
    killed = _worker(tmp_path / "run", *member, "--kill-at-step", "9", "--steps-log", str(steps_log), check=False)
    assert killed.returncode == -9  # SIGKILL: no handler ran, no cleanup happened
    fold0 = tmp_path / "run" / "run" / "members" / "tiny" / "fold0"
    assert not (fold0 / "DONE.json").exists()
    _summary(_worker(tmp_path / "run", *member, "--steps-log", str(steps_log)))
    trained = len(steps_log.read_text().splitlines())
    planned = 2 * 3 * 5  # two folds x 3 epochs x 5 steps
    # killed after step 9 = epoch 2, step 4; the last checkpoint was epoch 2, step 3: 1 step trained twice
    assert trained == planned + 1
    steps = pd.read_csv(fold0 / "steps.csv")
    assert len(steps) == 15 and steps[["epoch", "step"]].duplicated().sum() == 0
    assert np.isfinite(steps["loss"]).all()

    _worker(tmp_path / "straight", *member)
    np.testing.assert_allclose(
        predictions.read(fold0 / "oof.parquet").to_numpy(),
        predictions.read(tmp_path / "straight" / "run" / "members" / "tiny" / "fold0" / "oof.parquet").to_numpy(),
        atol=1e-6)


# ---- data parallel on logical devices ------------------------------------------------------


def _partition_and_probs(root: Path):
    member_dir = root / "run" / "members" / "tiny"
    folds = {k: json.loads((member_dir / f"fold{k}" / "DONE.json").read_text()) for k in (0, 1)}
    oof = predictions.read(member_dir / "oof.parquet")
    return {k: sorted(d["predicted_ids"]) for k, d in folds.items()}, oof


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_a_fold_trains_and_predicts_on_two_logical_devices_with_the_same_partition(tmp_path, backend):
    if backend == "jax" and importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed in this environment (requirements-dev.txt installs it)")
    env = {"KERAS_BACKEND": backend}
    if backend == "jax":
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    member = ["--member", "head_epochs=0", "--member", "finetune_epochs=2", "--member", "batch_size=4"]
    one = _summary(_worker(tmp_path / "one", *member, "--member", "data_parallel=off", env=env))
    two = _summary(_worker(tmp_path / "two", *member, "--member", "data_parallel=on", "--cpu-devices", "2", env=env))
    assert one["backend"] == two["backend"] == backend
    assert one["fold0"]["placement"]["devices"] == 1
    assert two["fold0"]["placement"]["devices"] == 2 and two["fold0"]["placement"]["global_batch"] == 8
    partition_one, oof_one = _partition_and_probs(tmp_path / "one")
    partition_two, oof_two = _partition_and_probs(tmp_path / "two")
    assert partition_one == partition_two
    assert list(oof_one.index) == list(oof_two.index)
    assert np.isfinite(oof_two.to_numpy()).all() and oof_two.to_numpy().std() > 0


def test_the_embedding_cache_notices_an_image_replaced_in_place(tmp_path):
    from PIL import Image
    from fashion_stack.models.embeddings import member_embeddings
    member = tiny_member("frozen", mode="frozen")
    paths = []
    for n, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        paths.append(str(tmp_path / f"{n}.png"))
        Image.new("RGB", (20, 20), colour).save(paths[-1])
    keras.utils.set_random_seed(0)  # the same random trunk each time it is built
    first = member_embeddings(member, ["a", "b", "c"], paths, tmp_path / "cache")
    again = member_embeddings(member, ["a", "b", "c"], paths, tmp_path / "cache")
    np.testing.assert_array_equal(first.features, again.features)  # reused
    Image.new("RGB", (20, 20), (250, 250, 250)).save(paths[1])  # replaced under the same name
    os.utime(paths[1], ns=(10**18, 10**18))
    keras.utils.set_random_seed(0)
    changed = member_embeddings(member, ["a", "b", "c"], paths, tmp_path / "cache")
    assert not np.allclose(changed.features[1], first.features[1])
    np.testing.assert_allclose(changed.features[[0, 2]], first.features[[0, 2]], atol=1e-5)
