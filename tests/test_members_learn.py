"""A member must learn: on the learnable synthetic images of models_synthetic (label j paints a
bright patch in cell j), its OOF micro-F1 must beat the frequency floor (every image gets the k
labels most frequent in the other folds) by a margin. The same check refuses a model that learnt
nothing (the best constant output). Kept small (60 images, 2 folds) so that it stays in the
fast suite that CI runs: a member that stopped learning fails CI, not only the slow runs."""
from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from fashion_stack.core import atomic, predictions  # noqa: E402
from fashion_stack.core.metrics import frequency_floor, micro_f1  # noqa: E402
from fashion_stack.datasets.folds import read_folds  # noqa: E402
from fashion_stack.datasets.manifest import pool_labels, read_manifest  # noqa: E402
from fashion_stack.models.stage import run_members  # noqa: E402
from models_synthetic import N_LABELS, make_run, tiny_member  # noqa: E402

MARGIN = 0.1  # micro-F1 above the floor that a member which learnt the patches clears easily
LABEL_IDS = [str(j + 1) for j in range(N_LABELS)]
LEARNER = dict(input_size=16, head_epochs=0, finetune_epochs=9, learning_rate=3e-3, batch_size=16)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    ctx = make_run(tmp_path_factory.mktemp("learn"), n_train=60, n_validation=0, n_test=4, k=2, pool="train")
    ctx.config.members = [tiny_member("learner", **LEARNER)]
    run_members(ctx)
    folds = read_folds(ctx.run.folds)
    y = pool_labels(read_manifest(ctx.run.manifest), list(folds.index), ctx.label_space(), ctx.config.data.pool)
    return ctx, y, folds.to_numpy()


def margin_over_floor(oof_probs: np.ndarray, y: np.ndarray, folds: np.ndarray) -> float:
    """OOF micro-F1 at the untuned threshold 0.5 minus the out-of-fold frequency floor."""
    return micro_f1(y, oof_probs >= 0.5) - frequency_floor(y, folds, "micro", N_LABELS)["oof"]


def assert_member_learnt(oof_probs, y, folds) -> None:
    margin = margin_over_floor(oof_probs, y, folds)
    assert margin > MARGIN, f"OOF micro-F1 only {margin:+.3f} over the frequency floor: the member learnt nothing"


def _oof(ctx, member: str) -> np.ndarray:
    oof = predictions.read(ctx.run.member_dir(member) / "oof.parquet", LABEL_IDS)
    return oof.reindex(read_folds(ctx.run.folds).index).to_numpy()


def test_a_trained_member_beats_the_frequency_floor_by_a_margin(trained):
    ctx, y, folds = trained
    assert_member_learnt(_oof(ctx, "learner"), y, folds)
    scores = atomic.read_json(ctx.run.member_dir("learner") / "scores.json")
    assert scores["oof"]["micro_f1@0.5"] == pytest.approx(micro_f1(y, _oof(ctx, "learner") >= 0.5))


def test_a_member_that_learnt_nothing_fails_the_same_check(trained):
    _, y, folds = trained
    constant = np.empty(y.shape)  # the best constant: each label's rate in the other folds
    for fold in np.unique(folds):
        constant[folds == fold] = y[folds != fold].mean(axis=0)
    with pytest.raises(AssertionError, match="learnt nothing"):
        assert_member_learnt(constant, y, folds)
