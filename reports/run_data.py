"""Readers for the run artifacts that the submit, compare, ablate and report stages share:
manifest, folds, label-set CSVs (decision/*_labels.csv) and true label matrices, all joined by
imageId, never by row position."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from core.labels import LabelSpace
from core.rundir import RunDir

USABLE = ("ok", "repaired")


class RunDataError(ValueError):
    """A run artifact that is missing or does not match the others; the message names the file."""


def read_manifest(run: RunDir) -> pd.DataFrame:
    if not run.manifest.exists():
        raise RunDataError(f"{run.manifest} not found; run --stages prepare first")
    manifest = pd.read_parquet(run.manifest)
    manifest["imageId"] = manifest["imageId"].astype(str)
    manifest["labels"] = manifest["labels"].fillna("").astype(str)
    return manifest


def read_folds(run: RunDir) -> pd.Series:
    """fold (int) indexed by imageId (str)."""
    if not run.folds.exists():
        raise RunDataError(f"{run.folds} not found; run --stages folds first")
    folds = pd.read_csv(run.folds, dtype={"imageId": str})
    if not {"imageId", "fold"} <= set(folds.columns):
        raise RunDataError(f"{run.folds}: needs columns imageId,fold; has {list(folds.columns)}")
    return folds.set_index("imageId")["fold"].astype(int)


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


def true_labels(manifest: pd.DataFrame, image_ids, label_space: LabelSpace) -> np.ndarray:
    """Multi-hot truth in `image_ids` order, from the manifest's labels column."""
    try:  # the datasets floor owns this when it provides it
        from datasets.manifest import manifest_labels
    except ImportError:
        manifest_labels = None
    if manifest_labels is not None:
        return manifest_labels(manifest, list(image_ids), label_space)
    labels_of = manifest.set_index("imageId")["labels"]
    image_ids = [str(i) for i in image_ids]
    absent = [i for i in image_ids if i not in labels_of.index]
    if absent:
        raise RunDataError(f"imageId(s) not in the manifest: {absent[:10]}; the run's artifacts do not match")
    return label_space.encode(labels_of.loc[image_ids].str.split())


def label_frequencies(manifest: pd.DataFrame, label_space: LabelSpace) -> pd.Series:
    """Count of each labelId over the labelled usable images, in label-space order."""
    labelled = manifest[(manifest["split"] != "test") & manifest["status"].isin(USABLE)]
    counts = label_space.encode(labelled["labels"].str.split()).sum(axis=0)
    return pd.Series(counts, index=list(label_space.label_ids), name="images")
