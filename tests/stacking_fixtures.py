"""Synthetic member predictions and a tiny run directory for the features and stack tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fashion_stack.core.config import MemberConfig, PipelineConfig, plugin
from fashion_stack.core.context import StageContext
from fashion_stack.core import predictions
from fashion_stack.core.predictions import make_table
from fashion_stack.core.rundir import RunDir, mark_done
from fashion_stack.datasets.folds import write_folds
from fashion_stack.datasets.manifest import make_manifest

LABEL_IDS = tuple(str(i) for i in range(1, 9))
GROUPS = ("category", "category", "category", "color", "color", "color", "gender", "gender")


def noisy_members(y: np.ndarray, qualities=(1.0, 1.6, 2.2), noise: float = 1.5, seed: int = 0) -> np.ndarray:
    """(images, members, labels) probabilities: member m sees logit = +-quality_m + noise."""
    rng = np.random.default_rng(seed)
    signs = 2.0 * y.astype(np.float64) - 1.0
    logits = np.stack([q * signs + rng.normal(0.0, noise, y.shape) for q in qualities], axis=1)
    return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)


def correlated_truth(n: int, n_labels: int = 8, seed: int = 0) -> np.ndarray:
    """Independent labels of varied frequency, except label 2 = label 0 AND label 1."""
    rng = np.random.default_rng(seed)
    prevalence = np.linspace(0.15, 0.5, n_labels)
    y = (rng.random((n, n_labels)) < prevalence).astype(np.uint8)
    y[:, 0] = rng.random(n) < 0.6
    y[:, 1] = rng.random(n) < 0.6
    y[:, 2] = y[:, 0] & y[:, 1]
    return y


def member_tables(probs: np.ndarray, image_ids, names=("a", "b", "c")) -> dict:
    return {name: make_table(image_ids, probs[:, m, :], LABEL_IDS) for m, name in enumerate(names)}


def make_run(root: Path, n_pool: int = 120, n_test: int = 30, k: int = 3, stackers=("mean", "linear"),
             members=("a", "b"), seed: int = 0) -> StageContext:
    """A run directory with manifest, folds, label map and finished members, ready to stack."""
    data_dir, run = root / "data", RunDir(root / "run")
    data_dir.mkdir(parents=True)
    pd.DataFrame({"labelId": LABEL_IDS, "labelName": [f"l{i}" for i in LABEL_IDS],
                  "taskId": GROUPS, "taskName": GROUPS}).to_csv(data_dir / "label_map.csv", index=False)
    y = correlated_truth(n_pool, seed=seed)
    pool_ids = [f"p{i}" for i in range(n_pool)]
    test_ids = [f"t{i}" for i in range(n_test)]
    rows = [_manifest_row(i, "train", " ".join(np.array(LABEL_IDS)[y[r].astype(bool)]))
            for r, i in enumerate(pool_ids)] + [_manifest_row(i, "test", "") for i in test_ids]
    run.root.mkdir(parents=True)
    make_manifest(rows).to_parquet(run.manifest)
    folds_hash = write_folds(run.folds, pool_ids, np.arange(n_pool) % k)
    oof = noisy_members(y, qualities=(1.2, 2.0)[: len(members)], seed=seed)
    test = noisy_members(correlated_truth(n_test, seed=seed + 1), qualities=(1.2, 2.0)[: len(members)], seed=seed + 1)
    for m, name in enumerate(members):
        member_dir = run.member_dir(name)
        predictions.write(member_dir / "oof.parquet", make_table(pool_ids, oof[:, m], LABEL_IDS))
        predictions.write(member_dir / "test.parquet", make_table(test_ids, test[:, m], LABEL_IDS))
        mark_done(member_dir / "fold0", "member-config", folds_hash)  # as the members stage marks its units
        mark_done(member_dir, "member-config", folds_hash, artifacts=["oof.parquet", "test.parquet"])  # and the member
    config = PipelineConfig(members=[MemberConfig(name=name) for name in members])
    quick = {"xgboost": {"n_estimators": 20, "min_positives": 5, "n_jobs": 1}}
    config.stack.stackers = [plugin(name, **quick.get(name, {})) for name in stackers]
    return StageContext(config=config, run=run, data_dir=data_dir)


def _manifest_row(image_id: str, split: str, labels: str) -> dict:
    return {"imageId": image_id, "split": split, "labels": labels, "path": f"{image_id}.jpg",
            "width": 16, "height": 16, "mode": "RGB", "bytes": 100, "status": "ok", "reason": ""}
