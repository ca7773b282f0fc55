"""Fold assignment: multilabel-stratified k-fold (iterative stratification, Sechidis et al. 2011),
seeded, saved once as folds.csv with its sha256, and shared by every member and the stacker."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold
from sklearn.model_selection import KFold

from fashion_stack.core import atomic, lineage
from fashion_stack.core.labels import LabelSpace
from fashion_stack.core.rundir import is_done, mark_done, upstream_digest
from fashion_stack.datasets.manifest import POOLS, manifest_labels, pool_ids, read_manifest


class FoldsError(RuntimeError):
    """folds.csv is missing, malformed, or does not match the pool."""


def assign_folds(label_matrix: np.ndarray, k: int, seed: int, stratified: bool = True) -> np.ndarray:
    """Fold number (0..k-1) for each row. `stratified=False` gives a plain shuffled KFold, kept as
    the baseline the balance benchmark compares against."""
    n = label_matrix.shape[0]
    if n < k:
        raise FoldsError(f"cannot make {k} folds from {n} images; lower folds.k")
    splitter = (MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed) if stratified
                else KFold(n_splits=k, shuffle=True, random_state=seed))
    fold_of = np.full(n, -1, dtype=np.int64)
    for fold, (_, held_out) in enumerate(splitter.split(np.zeros(n), label_matrix)):
        fold_of[held_out] = fold
    return fold_of


def fold_label_counts(label_matrix: np.ndarray, fold_of: np.ndarray, label_space: LabelSpace) -> pd.DataFrame:
    """Positives per label (rows) and fold (columns), with the total."""
    k = int(fold_of.max()) + 1
    counts = np.stack([label_matrix[fold_of == f].sum(axis=0) for f in range(k)], axis=1)
    table = pd.DataFrame(counts, index=pd.Index(label_space.label_ids, name="labelId"),
                         columns=[f"fold{f}" for f in range(k)])
    table.insert(0, "labelName", label_space.names)
    table["total"] = counts.sum(axis=1)
    return table


def proportion_deviation(label_matrix: np.ndarray, fold_of: np.ndarray) -> dict:
    """How far each fold's per-label positive rate strays from the pool's rate.

    Returns mean and max absolute deviation over (label, fold) of the rate, relative to the pool
    rate, over labels with at least k positives (rarer ones cannot be balanced), plus the number of (label, fold) cells that have no
    positive although the label has at least k positives (a fold that cannot score that label)."""
    k = int(fold_of.max()) + 1
    present = label_matrix.sum(axis=0) >= k
    pool_rate = label_matrix.mean(axis=0)[present]
    fold_rates = np.stack([label_matrix[fold_of == f].mean(axis=0)[present] for f in range(k)])
    relative = np.abs(fold_rates - pool_rate) / pool_rate
    counts = np.stack([label_matrix[fold_of == f].sum(axis=0) for f in range(k)])
    return {
        "mean_rel_dev": float(relative.mean()),
        "max_rel_dev": float(relative.max()),
        "empty_cells": int((counts[:, present] == 0).sum()),
    }


def write_folds(path: Path, image_ids, fold_of: np.ndarray) -> str:
    """Write folds.csv and folds.csv.sha256; return the hash."""
    frame = pd.DataFrame({"imageId": [str(i) for i in image_ids], "fold": fold_of.astype(int)})
    data = frame.to_csv(index=False).encode()
    digest = hashlib.sha256(data).hexdigest()
    atomic.write_bytes(path, data)
    atomic.write_text(Path(str(path) + ".sha256"), f"{digest}  {Path(path).name}\n")
    return digest


def read_folds(path: Path) -> pd.Series:
    """fold per imageId (str index), checked against the recorded sha256."""
    path = Path(path)
    if not path.exists():
        raise FoldsError(f"{path} not found: run the folds stage first (--stages folds)")
    data = path.read_bytes()
    recorded = Path(str(path) + ".sha256")
    if recorded.exists() and recorded.read_text().split()[0] != hashlib.sha256(data).hexdigest():
        raise FoldsError(f"{path} does not match {recorded.name}: it was edited after it was made; "
                         "rerun with --redo folds (and the stages after it)")
    frame = pd.read_csv(path, dtype={"imageId": str, "fold": int})
    if list(frame.columns) != ["imageId", "fold"] or frame["imageId"].duplicated().any():
        dupes = frame["imageId"][frame["imageId"].duplicated()].unique().tolist() if "imageId" in frame else []
        raise FoldsError(f"{path}: expected unique imageIds in columns imageId,fold (duplicated: {dupes[:10]}); "
                         "rerun with --redo folds")
    return frame.set_index("imageId")["fold"]


def run_folds(ctx) -> dict:
    """Folds over the pool. Up to date while the folds settings, the pool and the pool's imageIds
    are as recorded and folds.csv passes its check. Labels are not an input: they only balance
    the folds, so a label edit keeps the assignment (and reaches only the units that read that
    label); --redo folds re-stratifies."""
    cfg = ctx.config
    run = ctx.run
    unit = run.root / "folds_unit"
    config_hash = ctx.data_hash("folds", pool=cfg.data.pool)
    upstream_digest(run.root / "prepare", "prepare")  # the manifest of a finished prepare, intact
    manifest = read_manifest(run.manifest)
    ids = pool_ids(manifest, cfg.data.pool)
    inputs = {"pool ids": lineage.digest(ids)}
    artifacts = [run.folds, Path(f"{run.folds}.sha256"), run.root / "fold_label_counts.csv"]
    if is_done(unit, config_hash, None, redo=ctx.redo_stage("folds"), inputs_hash=inputs):
        folds = read_folds(run.folds)
        return {"pool": len(folds), "k": cfg.folds.k, "up_to_date": True,
                "fold_sizes": folds.value_counts().sort_index().tolist()}
    label_space = ctx.label_space()
    labels = manifest_labels(manifest, ids, label_space, splits=POOLS[cfg.data.pool])
    fold_of = assign_folds(labels, cfg.folds.k, cfg.folds.seed)
    digest = write_folds(run.folds, ids, fold_of)
    atomic.write_csv(run.root / "fold_label_counts.csv", fold_label_counts(labels, fold_of, label_space), index=True)
    balance = proportion_deviation(labels, fold_of)
    mark_done(unit, config_hash, None, inputs_hash=inputs, artifacts=artifacts, folds_sha256=digest, balance=balance)
    sizes = np.bincount(fold_of, minlength=cfg.folds.k).tolist()
    return {"pool": len(ids), "k": cfg.folds.k, "fold_sizes": sizes, "sha256": digest[:12], **balance}
