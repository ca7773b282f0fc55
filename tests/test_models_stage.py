"""The members stage on tiny synthetic runs: honest k-fold, both regimes, resume, seeds, NaN."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

keras = pytest.importorskip("keras")

from fashion_stack.core import predictions  # noqa: E402
from fashion_stack.core.rundir import StaleArtifactError  # noqa: E402
from fashion_stack.models import trainer  # noqa: E402
from fashion_stack.models.backbones import create_backbone  # noqa: E402
from fashion_stack.models.stage import load_stage_data, run_member, run_members  # noqa: E402
from fashion_stack.models.trainer import NonFiniteLossError, read_history  # noqa: E402
from models_synthetic import N_LABELS, make_run, tiny_member  # noqa: E402

LABEL_IDS = [str(j + 1) for j in range(N_LABELS)]
SCORE_KEYS = {"fold", "loss", "micro_f1@0.5", "micro_f1@best", "best_threshold", "samples_f1@best", "mAP",
              "n_images", "seconds", "train_images_per_s"}


def _pool(ctx):
    return list(pd.read_csv(ctx.run.folds, dtype={"imageId": str})["imageId"])


def _test_ids(ctx):
    manifest = pd.read_parquet(ctx.run.manifest)
    return list(manifest.loc[manifest["split"] == "test", "imageId"])


@pytest.fixture(scope="module")
def kfold_run(tmp_path_factory):
    ctx = make_run(tmp_path_factory.mktemp("kfold"), k=3)
    ctx.config.members = [tiny_member("tiny", augment=True, tta_flip=True),
                          tiny_member("frozen", mode="frozen", frozen_epochs=3, tta_flip=True)]
    summary = run_members(ctx)
    return ctx, summary


@pytest.mark.parametrize("member", ["tiny", "frozen"])
def test_each_fold_trains_and_predicts_disjoint_ids_whose_union_is_the_pool(kfold_run, member):
    ctx, _ = kfold_run
    pool = _pool(ctx)
    predicted = []
    for k in range(3):
        done = json.loads((ctx.run.fold_dir(member, k) / "DONE.json").read_text())
        trained, held_out = set(done["trained_ids"]), set(done["predicted_ids"])
        assert not trained & held_out
        assert trained | held_out == set(pool)
        assert set(predictions.read(ctx.run.fold_dir(member, k) / "oof.parquet").index) == held_out
        assert done["folds_hash"] == ctx.run.folds_hash()
        assert set(done["scores"]) == SCORE_KEYS
        predicted += done["predicted_ids"]
    assert sorted(predicted) == sorted(pool)  # each pool id predicted exactly once


@pytest.mark.parametrize("member", ["tiny", "frozen"])
def test_member_tables_are_the_pool_once_and_the_mean_of_the_fold_test_tables(kfold_run, member):
    ctx, _ = kfold_run
    member_dir = ctx.run.member_dir(member)
    oof = predictions.read(member_dir / "oof.parquet", LABEL_IDS)
    assert list(oof.index) == _pool(ctx)
    test = predictions.read(member_dir / "test.parquet", LABEL_IDS)
    folds = [predictions.read(ctx.run.fold_dir(member, k) / "test.parquet").loc[test.index] for k in range(3)]
    np.testing.assert_allclose(test.to_numpy(), np.mean([f.to_numpy() for f in folds], axis=0), rtol=1e-6)
    assert list(test.index) == _test_ids(ctx)
    for k in range(3):  # the fold model's OOF rows are its own
        fold_oof = predictions.read(ctx.run.fold_dir(member, k) / "oof.parquet")
        np.testing.assert_array_equal(oof.loc[fold_oof.index].to_numpy(), fold_oof.to_numpy())


def test_scores_and_history_are_written_for_the_report(kfold_run):
    ctx, summary = kfold_run
    scores = json.loads((ctx.run.member_dir("tiny") / "scores.json").read_text())
    assert scores["member"] == "tiny" and [f["fold"] for f in scores["folds"]] == [0, 1, 2]
    assert summary["members"]["tiny"]["oof_micro_f1@best"] == pytest.approx(scores["oof"]["micro_f1@best"])
    history = read_history(ctx.run.fold_dir("tiny", 0) / "history.csv")
    assert list(history["epoch"]) == [1, 2] and np.isfinite(history["loss"]).all()
    assert (ctx.run.fold_dir("tiny", 0) / "model.keras").exists()
    assert (ctx.run.member_dir("frozen") / "embeddings" / "mirrored.npy").exists()


def test_finished_units_are_skipped_changed_config_is_stale_and_redo_retrains(kfold_run):
    ctx, _ = kfold_run
    again = run_members(ctx)
    assert all(m["units_trained"] == 0 for m in again["members"].values())
    ctx.config.members[1].dropout = 0.5
    try:
        with pytest.raises(StaleArtifactError, match="--redo"):
            run_members(ctx)
        embeddings = ctx.run.member_dir("frozen") / "embeddings" / "features.npy"
        before = embeddings.stat().st_mtime_ns
        ctx.only_members, ctx.redo = ["frozen"], {"members"}
        redone = run_members(ctx)
        assert redone["members"]["frozen"]["units_trained"] == 3 and list(redone["members"]) == ["frozen"]
        assert embeddings.stat().st_mtime_ns != before  # redo recomputes the cache too
    finally:
        ctx.config.members[1].dropout = 0.2
        ctx.only_members, ctx.redo = None, set()


def test_regime_b_trains_on_train_and_predicts_the_validation_pool(tmp_path):
    ctx = make_run(tmp_path, pool="validation", k=2)
    ctx.config.members = [tiny_member("tiny")]
    summary = run_members(ctx)
    assert summary["units_per_member"] == 1
    done = json.loads((ctx.run.member_dir("tiny") / "fold_all" / "DONE.json").read_text())
    manifest = pd.read_parquet(ctx.run.manifest)
    assert done["trained_ids"] == list(manifest.loc[manifest["split"] == "train", "imageId"])
    assert done["predicted_ids"] == _pool(ctx)
    assert list(predictions.read(ctx.run.member_dir("tiny") / "oof.parquet").index) == _pool(ctx)
    # scored per folds.csv fold, so the comparison stage pairs members by fold in this regime too
    scores = json.loads((ctx.run.member_dir("tiny") / "scores.json").read_text())
    assert [f["fold"] for f in scores["folds"]] == [0, 1]
    from fashion_stack.reports.compare import fold_score_table
    table = fold_score_table(ctx.run)
    assert list(table["fold"][:2]) == ["0", "1"]


def test_regime_b_never_mixes_up_splits_that_reuse_ids(tmp_path, monkeypatch):
    # real competition: train, validation and test all number their images from 1
    ctx = make_run(tmp_path, pool="validation", k=2, reuse_ids=True)
    ctx.config.members = [tiny_member("tiny")]
    seen = {}
    real_train, real_predict = trainer.train_finetune, trainer.predict_images

    def spy_train(member, paths, *args, **kwargs):
        seen["train"] = list(paths)
        return real_train(member, paths, *args, **kwargs)

    def spy_predict(model, paths, **kwargs):
        seen.setdefault("predict", []).append(list(paths))
        return real_predict(model, paths, **kwargs)
    monkeypatch.setattr(trainer, "train_finetune", spy_train)
    monkeypatch.setattr(trainer, "predict_images", spy_predict)
    run_members(ctx)
    assert all("/train/" in p for p in seen["train"])
    oof_paths, test_paths = seen["predict"]
    assert all("/validation/" in p for p in oof_paths) and all("/test/" in p for p in test_paths)


def test_same_seed_gives_the_same_oof(tmp_path):
    tables = []
    for attempt in ("a", "b"):
        ctx = make_run(tmp_path / attempt, k=2)
        ctx.config.members = [tiny_member("tiny", augment=True, seed=7)]
        run_members(ctx)
        tables.append(predictions.read(ctx.run.member_dir("tiny") / "oof.parquet"))
    np.testing.assert_array_equal(tables[0].to_numpy(), tables[1].to_numpy())


class Interrupted(Exception):
    pass


class InterruptAfter(keras.callbacks.Callback):
    """Stops the process-like run after `n` finished epochs, counted across phases."""

    def __init__(self, n):
        super().__init__()
        self.n, self.finished = n, 0

    def on_epoch_end(self, epoch, logs=None):
        self.finished += 1
        if self.finished == self.n:
            raise Interrupted


class EpochRecorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.started = []

    def on_epoch_begin(self, epoch, logs=None):
        self.started.append(epoch + 1)


def test_interrupted_fold_resumes_without_losing_or_repeating_epochs(tmp_path):
    ctx = make_run(tmp_path, k=2)
    weights = tmp_path / "tiny_pretrained.weights.h5"
    create_backbone("tiny_cnn", 16, None).save_weights(str(weights))
    member = tiny_member("tiny", weights=str(weights), head_epochs=2, finetune_epochs=3)  # 2 phases
    ctx.config.members = [member]
    data = load_stage_data(ctx)
    with pytest.raises(Interrupted):
        run_member(ctx, member, data, callbacks=[InterruptAfter(4)])  # head 1-2, top 1-2 finished
    fold0 = ctx.run.fold_dir("tiny", 0)
    assert not (fold0 / "DONE.json").exists()
    recorder = EpochRecorder()
    run_member(ctx, member, data, callbacks=[recorder])
    # fold 0 ran only top epoch 3; fold 1 ran its 5 epochs from the start
    assert recorder.started == [3] + [1, 2] + [1, 2, 3]
    history = read_history(fold0 / "history.csv")
    assert list(zip(history["phase"], history["epoch"])) == [("head", 1), ("head", 2), ("top", 1), ("top", 2), ("top", 3)]
    assert (fold0 / "DONE.json").exists() and not (fold0 / "backup").exists()


def test_diverging_loss_stops_the_fold_with_an_error_and_it_is_not_done(tmp_path):
    ctx = make_run(tmp_path, k=2)
    ctx.config.members = [tiny_member("tiny", learning_rate=1e38, batch_size=4)]
    with pytest.raises(NonFiniteLossError, match="tiny fold0.*not marked done"):
        run_members(ctx)
    assert not (ctx.run.fold_dir("tiny", 0) / "DONE.json").exists()


def test_folds_that_do_not_match_the_pool_are_refused(tmp_path):
    ctx = make_run(tmp_path, k=2)
    ctx.config.data.pool = "train"  # folds.csv was made over train+validation
    ctx.config.members = [tiny_member("tiny")]
    with pytest.raises(RuntimeError, match="does not cover the pool"):
        run_members(ctx)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["frozen", "finetune"])
def test_mobilenet_v2_member_with_the_local_weights_file_runs_in_both_modes(tmp_path, mode):
    from conftest import shared_path
    weights = shared_path("weights", "mobilenet_v2_1.0_224_imagenet_notop.weights.h5")
    ctx = make_run(tmp_path, k=2)
    ctx.config.members = [tiny_member("mnv2", backbone="mobilenet_v2", input_size=32, weights=str(weights),
                                      mode=mode, head_epochs=1, finetune_epochs=1, frozen_epochs=2)]
    summary = run_members(ctx)
    assert summary["members"]["mnv2"]["units_trained"] == 2
    oof = predictions.read(ctx.run.member_dir("mnv2") / "oof.parquet", LABEL_IDS)
    assert list(oof.index) == _pool(ctx)
    if mode == "finetune":
        phases = list(read_history(ctx.run.fold_dir("mnv2", 0) / "history.csv")["phase"])
        assert phases == ["head", "top"]
