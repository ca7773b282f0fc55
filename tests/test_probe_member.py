"""The probe member (issue 21): frozen embeddings of other members, per-label logistic regression,
k-fold like any member. Checked against scikit-learn fitted directly, and on the learnable
synthetic images (label j paints a patch of colour j) against the frequency floor."""
from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
sklearn_linear = pytest.importorskip("sklearn.linear_model")

from fashion_stack.core import atomic, predictions  # noqa: E402
from fashion_stack.core.config import ConfigError, PipelineConfig, validate  # noqa: E402
from fashion_stack.datasets.folds import read_folds  # noqa: E402
from fashion_stack.datasets.manifest import pool_labels, read_manifest  # noqa: E402
from fashion_stack.models.embeddings import EmbeddingTable  # noqa: E402
from fashion_stack.models.probe import LinearProbe, fit_probe, probe_features  # noqa: E402
from fashion_stack.models.stage import member_hash, probed_members, run_members  # noqa: E402
from models_synthetic import N_LABELS, make_run, tiny_member  # noqa: E402
from test_members_learn import LABEL_IDS, assert_member_learnt  # noqa: E402


def _learnable(n=120, dim=10, labels=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim))
    y = (x[:, :labels] + 0.3 * rng.normal(size=(n, labels)) > 0.4).astype(np.float32)
    return x * 5 + 3, y  # scaled and shifted: the probe standardises


def test_probe_equals_scikit_learn_on_standardised_features_with_the_chosen_c(tmp_path):
    x, y = _learnable()
    probe = fit_probe(x, y, [0.01, 1.0], inner_folds=3, seed=0)
    assert set(probe.inner_log_loss) == {0.01, 1.0} and probe.c == min(probe.inner_log_loss, key=probe.inner_log_loss.get)
    z = (x - x.mean(axis=0)) / x.std(axis=0)
    for j in range(y.shape[1]):
        reference = sklearn_linear.LogisticRegression(C=probe.c, max_iter=5000, tol=1e-10).fit(z, y[:, j])
        np.testing.assert_allclose(probe.predict(x)[:, j], reference.predict_proba(z)[:, 1], atol=2e-4)
        np.testing.assert_allclose(probe.coef[:, j], reference.coef_[0], rtol=1e-3, atol=1e-4)
    probe.save(tmp_path / "probe.npz")
    again = LinearProbe.load(tmp_path / "probe.npz")
    np.testing.assert_array_equal(again.predict(x), probe.predict(x))
    assert again.c == probe.c and again.inner_log_loss == probe.inner_log_loss


def test_probe_chooses_strong_regularisation_on_noise_and_predicts_a_constant_label_as_its_rate():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(90, 40))
    y = np.column_stack([rng.random(90) < 0.3, np.zeros(90)]).astype(np.float32)  # noise; a label never seen
    probe = fit_probe(x, y, [0.001, 10.0], inner_folds=3)
    assert probe.c == 0.001  # noise: the weakest fit has the lower inner log loss
    assert np.all(probe.predict(x)[:, 1] < 1e-3) and not probe.coef[:, 1].any()


def test_probe_features_concatenate_tables_and_average_each_with_its_mirror():
    a = EmbeddingTable(["p:1", "p:2"], np.array([[1.0, 2.0], [3.0, 4.0]], np.float32),
                       np.array([[3.0, 2.0], [5.0, 0.0]], np.float32))
    b = EmbeddingTable(["p:2", "p:1"], np.array([[7.0], [9.0]], np.float32), None)
    np.testing.assert_array_equal(probe_features([a, b], ["p:2", "p:1"]), [[4.0, 2.0, 7.0], [2.0, 2.0, 9.0]])


def test_probe_config_names_frozen_members_only():
    config = PipelineConfig()
    config.members = [tiny_member("ft"), tiny_member("frozen", mode="frozen"), tiny_member("probe", mode="probe")]
    with pytest.raises(ConfigError, match="probe_of"):
        validate(config)
    config.members[2].probe_of = ["ft"]
    with pytest.raises(ConfigError, match="'ft' is not a frozen member.*frozen"):
        validate(config)
    config.members[2].probe_of = ["frozen"]
    validate(config)


def test_probe_member_trains_k_fold_on_frozen_members_embeddings_and_beats_the_frequency_floor(tmp_path):
    ctx = make_run(tmp_path, n_train=60, n_validation=0, n_test=4, k=2, pool="train")
    # two frozen trunks (random tiny_cnn: colour statistics survive its pooling), one with flip TTA
    frozen = dict(mode="frozen", input_size=16, frozen_epochs=1, weights=None)
    ctx.config.members = [tiny_member("trunk_a", **frozen, tta_flip=True), tiny_member("trunk_b", seed=3, **frozen),
                          tiny_member("probe", mode="probe", probe_of=["trunk_a", "trunk_b"], probe_c=[0.01, 0.1, 1.0])]
    summary = run_members(ctx)
    folds = read_folds(ctx.run.folds)
    y = pool_labels(read_manifest(ctx.run.manifest), list(folds.index), ctx.label_space(), ctx.config.data.pool)
    oof = predictions.read(ctx.run.member_dir("probe") / "oof.parquet", LABEL_IDS).reindex(folds.index).to_numpy()
    assert_member_learnt(oof, y, folds.to_numpy())
    test = predictions.read(ctx.run.member_dir("probe") / "test.parquet", LABEL_IDS)
    assert test.shape == (4, N_LABELS)
    unit = atomic.read_json(ctx.run.member_dir("probe") / "fold0" / "DONE.json")
    assert unit["scores"]["chosen_c"] in (0.01, 0.1, 1.0)
    assert summary["members"]["probe"]["units_trained"] == 2
    assert run_members(ctx)["members"]["probe"]["units_trained"] == 0  # a second run keeps everything


def test_probe_settings_include_the_probed_members_trunk_settings_but_not_their_heads():
    frozen = tiny_member("trunk", mode="frozen")
    probe = tiny_member("probe", mode="probe", probe_of=["trunk"])
    config = PipelineConfig(members=[frozen, probe])
    base = member_hash(probe, "train", LABEL_IDS, probed_members(config, probe))
    frozen.frozen_epochs += 5  # the head's training: not the probe's input
    assert member_hash(probe, "train", LABEL_IDS, probed_members(config, probe)) == base
    frozen.input_size = (24, 24)  # the trunk's input: another probe
    assert member_hash(probe, "train", LABEL_IDS, probed_members(config, probe)) != base


def test_probe_with_more_features_than_rows_equals_scikit_learn_through_the_row_space():
    x, y = _learnable(n=40, dim=90, labels=3, seed=2)  # wide: solved in the 40-dimensional row space
    probe = fit_probe(x, y, [0.05], inner_folds=2)
    z = (x - x.mean(axis=0)) / x.std(axis=0)
    for j in range(y.shape[1]):
        reference = sklearn_linear.LogisticRegression(C=0.05, max_iter=5000, tol=1e-10).fit(z, y[:, j])
        np.testing.assert_allclose(probe.predict(x)[:, j], reference.predict_proba(z)[:, 1], atol=2e-4)
        np.testing.assert_allclose(probe.coef[:, j], reference.coef_[0], rtol=1e-3, atol=1e-4)


def test_probe_matches_scikit_learn_on_correlated_features_and_a_rare_label():
    # CNN embeddings are strongly correlated (a few directions carry most of the variance) and
    # some labels have a handful of positives: the case where a solver stopping early is visible
    rng = np.random.default_rng(3)
    n, dim = 300, 120
    factors = rng.normal(size=(n, 6))
    x = factors @ rng.normal(size=(6, dim)) * 3 + 0.3 * rng.normal(size=(n, dim))
    score = factors[:, 0] + 0.5 * factors[:, 1]
    y = np.column_stack([score > 0.5, score > 2.2]).astype(np.float32)  # the second: a few positives
    assert 3 <= y[:, 1].sum() <= 15
    z = (x - x.mean(axis=0)) / x.std(axis=0)
    for c in (0.001, 0.1):
        probe = fit_probe(x, y, [c], inner_folds=2)
        for j in range(y.shape[1]):
            reference = sklearn_linear.LogisticRegression(C=c, max_iter=10000, tol=1e-12).fit(z, y[:, j])
            np.testing.assert_allclose(probe.predict(x)[:, j], reference.predict_proba(z)[:, 1], atol=2e-4)
