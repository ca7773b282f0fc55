"""Readers for the run artifacts that the submit, compare, ablate and report stages share:
manifest, folds, label-set CSVs (decision/*_labels.csv) and true label matrices, all joined by
imageId, never by row position. Manifest and folds are read by the datasets floor's own readers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fashion_stack.core.labels import LabelSpace
from fashion_stack.core.rundir import RunDir
from fashion_stack.datasets import folds as folds_io
from fashion_stack.datasets import manifest as manifest_io
from fashion_stack.datasets.images import USABLE_STATUSES as USABLE
from fashion_stack.datasets.manifest import label_frequencies  # noqa: F401  (re-exported for the report sections)
from fashion_stack.ensemble.decide_stage import read_label_sets  # noqa: F401  (re-exported for the report sections)


class RunDataError(ValueError):
    """A run artifact that is missing or does not match the others; the message names the file."""


def read_manifest(run: RunDir) -> pd.DataFrame:
    return manifest_io.read_manifest(run.manifest)


def read_folds(run: RunDir) -> pd.Series:
    """fold (int) indexed by imageId (str), checked against folds.csv.sha256."""
    return folds_io.read_folds(run.folds)


def true_labels(manifest: pd.DataFrame, image_ids, label_space: LabelSpace, pool: str) -> np.ndarray:
    """Multi-hot truth of stacking-pool ids in `image_ids` order, from the manifest's labels column."""
    return manifest_io.pool_labels(manifest, list(image_ids), label_space, pool)

