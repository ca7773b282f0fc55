"""The compare stage's diversity table (issue 21): members' pairwise correlation of OOF logits and
of errors, checked against numpy's corrcoef on the same cells."""
from __future__ import annotations

import numpy as np
import pytest

from fashion_stack.core import predictions
from fashion_stack.datasets.folds import read_folds
from fashion_stack.datasets.manifest import pool_labels, read_manifest
from fashion_stack.reports.compare import member_correlations
from models_synthetic import N_LABELS, make_run, tiny_member

LABEL_IDS = [str(j + 1) for j in range(N_LABELS)]


def test_member_correlations_equal_numpy_corrcoef_of_logits_and_errors(tmp_path):
    ctx = make_run(tmp_path, n_train=30, n_validation=0, n_test=2, k=3, pool="train")
    ids = list(read_folds(ctx.run.folds).index)
    y = pool_labels(read_manifest(ctx.run.manifest), ids, ctx.label_space(), "train").astype(float)
    rng = np.random.default_rng(0)
    base = np.clip(y * 0.6 + 0.2 + 0.1 * rng.normal(size=y.shape), 0.01, 0.99)
    probs = {"a": base, "b": np.clip(base + 0.05 * rng.normal(size=y.shape), 0.01, 0.99),
             "c": rng.uniform(0.01, 0.99, size=y.shape)}
    ctx.config.members = [tiny_member(name) for name in probs]
    for name, p in probs.items():
        order = rng.permutation(len(ids))  # tables in another row order: joined by imageId
        predictions.write(ctx.run.member_dir(name) / "oof.parquet",
                          predictions.make_table([ids[i] for i in order], p[order], LABEL_IDS))
    table = member_correlations(ctx).set_index(["member_a", "member_b"])
    assert list(table.index) == [("a", "b"), ("a", "c"), ("b", "c")]
    logit = {n: np.log(p / (1 - p)) for n, p in probs.items()}
    for a, b in table.index:
        assert table.loc[(a, b), "logit_correlation"] == pytest.approx(
            np.corrcoef(logit[a].ravel(), logit[b].ravel())[0, 1], abs=1e-6)
        assert table.loc[(a, b), "error_correlation"] == pytest.approx(
            np.corrcoef((y - probs[a]).ravel(), (y - probs[b]).ravel())[0, 1], abs=1e-6)
    assert table.loc[("a", "b"), "logit_correlation"] > 0.9 > 0.1 > abs(table.loc[("a", "c"), "logit_correlation"])
    assert table.loc[("a", "b"), "error_correlation"] > table.loc[("a", "c"), "error_correlation"]
