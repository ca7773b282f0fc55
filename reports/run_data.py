"""Readers for the run artifacts that the submit, compare, ablate and report stages share:
manifest, folds, label-set CSVs (decision/*_labels.csv) and true label matrices, all joined by
imageId, never by row position. Manifest and folds are read by the datasets floor's own readers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from core.labels import LabelSpace
from core.rundir import RunDir
from datasets import folds as folds_io
from datasets import manifest as manifest_io
from datasets.images import USABLE_STATUSES as USABLE


class RunDataError(ValueError):
    """A run artifact that is missing or does not match the others; the message names the file."""


def read_manifest(run: RunDir) -> pd.DataFrame:
    return manifest_io.read_manifest(run.manifest)


def read_folds(run: RunDir) -> pd.Series:
    """fold (int) indexed by imageId (str), checked against folds.csv.sha256."""
    return folds_io.read_folds(run.folds)


def read_label_sets(path: str | Path) -> dict:
    """`imageId,labels` CSV (labels space-separated) -> {imageId: [labelId, ...]} in file order."""
    path = Path(path)
    if not path.exists():
        raise RunDataError(f"{path} not found; run --stages decide first")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if not {"imageId", "labels"} <= set(frame.columns):
        raise RunDataError(f"{path}: needs columns imageId,labels; has {list(frame.columns)}")
    dupes = frame["imageId"][frame["imageId"].duplicated()].unique()
    if len(dupes):
        raise RunDataError(f"{path}: duplicated imageId(s) {list(dupes[:10])}")
    return {image_id.strip(): labels.split() for image_id, labels in zip(frame["imageId"], frame["labels"])}


def true_labels(manifest: pd.DataFrame, image_ids, label_space: LabelSpace, pool: str) -> np.ndarray:
    """Multi-hot truth of stacking-pool ids in `image_ids` order, from the manifest's labels column."""
    return manifest_io.pool_labels(manifest, list(image_ids), label_space, pool)


def label_frequencies(manifest: pd.DataFrame, label_space: LabelSpace) -> pd.Series:
    """Count of each labelId over the labelled usable images, in label-space order."""
    labelled = manifest[(manifest["split"] != "test") & manifest["status"].isin(USABLE)]
    counts = label_space.encode(labelled["labels"].str.split()).sum(axis=0)
    return pd.Series(counts, index=list(label_space.label_ids), name="images")
