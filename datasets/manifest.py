"""Reading the manifest (one row per image of every split) and the id lists and label matrices
that later stages take from it. The format is in docs/CONTRACTS.md (manifest.parquet)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from fashion_stack.core.labels import LabelSpace
from fashion_stack.core.lineage import RowDigests
from fashion_stack.datasets.competition import example_ids
from fashion_stack.datasets.images import STATUSES, USABLE_STATUSES

# bytes, mtime_ns: the original file's size and modification time when it was inspected (0, 0 when
# missing): the per-file stamps that tell prepare, on a rerun, which images to look at again.
# sha256: the original's content hash (short): what later units record, so the same bytes at
# another place or under another mtime are the same input ("" when the file could not be read)
COLUMNS = ("imageId", "split", "labels", "path", "width", "height", "mode", "bytes", "mtime_ns", "sha256", "status",
           "reason")
# added after the first manifests were written: an earlier manifest reads with it empty (prepare
# then hashes those files once, without decoding them)
_ADDED_COLUMNS = {"sha256": ""}
SPLITS = ("train", "validation", "test")
LABELLED_SPLITS = ("train", "validation")
POOLS = {"train+validation": ("train", "validation"), "train": ("train",), "validation": ("validation",)}
_STRING_COLUMNS = ("imageId", "split", "labels", "path", "mode", "sha256", "status", "reason")
_INT_COLUMNS = ("width", "height", "bytes", "mtime_ns")


class ManifestError(ValueError):
    """A manifest that breaks the format, or a lookup the manifest cannot answer."""


def make_manifest(rows: list) -> pd.DataFrame:
    """Rows (dicts with the manifest columns) -> a manifest with the contract's column order and
    dtypes. A row without mtime_ns gets 0 (unknown: prepare re-inspects such an image on a rerun)."""
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    return _typed(frame.fillna({"mtime_ns": 0, "sha256": ""}))


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.astype({**{c: str for c in _STRING_COLUMNS}, **{c: "int64" for c in _INT_COLUMNS}})


def read_manifest(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; run the prepare stage first")
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as err:  # truncated or not parquet (pyarrow's ArrowInvalid is a ValueError)
        raise ManifestError(f"{path}: unreadable ({err}); run --stages prepare, which rebuilds it") from None
    frame = frame.assign(**{c: v for c, v in _ADDED_COLUMNS.items() if c not in frame.columns})
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ManifestError(f"{path}: manifest lacks column(s) {missing}; rerun the prepare stage (--redo prepare)")
    unknown = sorted(set(frame["status"].unique()) - set(STATUSES))  # unique() first: no per-row Python
    if unknown:
        raise ManifestError(f"{path}: unknown status value(s) {unknown}; expected one of {list(STATUSES)}")
    return _typed(frame[list(COLUMNS)])


def usable(manifest: pd.DataFrame) -> pd.DataFrame:
    """The rows whose image decodes (status ok or repaired), in manifest order."""
    return manifest[manifest["status"].isin(USABLE_STATUSES)].reset_index(drop=True)


def pool_ids(manifest: pd.DataFrame, pool: str) -> list:
    """Usable imageIds of the splits that make up `pool` (config.data.pool), in manifest order.

    The pool is keyed by imageId (folds.csv, prediction tables), so ids that its splits share
    (per_split layout of the real data) raise, naming them.
    """
    if pool not in POOLS:
        raise ManifestError(f"pool {pool!r} is not one of {sorted(POOLS)} (config data.pool)")
    rows = usable(manifest)
    ids = rows.loc[rows["split"].isin(POOLS[pool]), "imageId"]
    shared = list(ids[ids.duplicated()].unique())
    if shared:
        raise ManifestError(
            f"pool {pool!r}: imageId(s) {example_ids(shared)} occur in both of its splits, but the pool is keyed "
            "by imageId; use data.pool: validation or train (the real competition's splits reuse ids)")
    return list(ids)


def test_ids(manifest: pd.DataFrame) -> list:
    """Usable test imageIds in test.json order (the manifest keeps file order)."""
    rows = usable(manifest)
    return list(rows.loc[rows["split"] == "test", "imageId"])


def manifest_labels(manifest: pd.DataFrame, image_ids, label_space: LabelSpace,
                    splits: Sequence[str] = LABELLED_SPLITS) -> np.ndarray:
    """Multi-hot uint8 (len(image_ids), len(label_space)), row i for image_ids[i].

    Ids are looked up by imageId among the rows of `splits` (default: both labelled splits;
    pass POOLS[pool] or ("train",) where the real data's splits reuse ids). An id that is not
    there, or that two of those splits share (its labels would be ambiguous), raises naming it.
    """
    unknown = sorted(set(splits) - set(LABELLED_SPLITS))
    if unknown:
        raise ManifestError(f"splits {unknown} carry no labels; choose from {list(LABELLED_SPLITS)}")
    labelled = manifest[manifest["split"].isin(splits)]
    labels_by_id = pd.Series(labelled["labels"].to_numpy(), index=labelled["imageId"].to_numpy())
    wanted = [str(i) for i in image_ids]
    absent = [i for i in wanted if i not in labels_by_id.index]
    if absent:
        raise ManifestError(
            f"imageId(s) not among the manifest's {'/'.join(splits)} images: {example_ids(absent)}; "
            "the ids must come from those rows of this run's manifest")
    ambiguous = sorted(set(labels_by_id.index[labels_by_id.index.duplicated()]) & set(wanted))
    if ambiguous:
        raise ManifestError(
            f"imageId(s) appear in more than one labelled split, labels ambiguous: {example_ids(ambiguous)}; "
            "pass splits= to say which split the ids come from")
    return label_space.encode(labels.split() for labels in labels_by_id.loc[wanted])


def pool_labels(manifest: pd.DataFrame, image_ids, label_space: LabelSpace, pool: str) -> np.ndarray:
    """Truth for stacking-pool ids (config.data.pool), looked up among the pool's splits only."""
    if pool not in POOLS:
        raise ManifestError(f"unknown pool {pool!r}; use one of {sorted(POOLS)}")
    return manifest_labels(manifest, image_ids, label_space, splits=POOLS[pool])


def labelled_usable(manifest: pd.DataFrame) -> pd.DataFrame:
    """Rows of the labelled splits whose image decoded."""
    return manifest[manifest["split"].isin(LABELLED_SPLITS) & manifest["status"].isin(USABLE_STATUSES)]


def label_frequencies(manifest: pd.DataFrame, label_space: LabelSpace) -> pd.Series:
    """Count of each labelId over the labelled usable images, in label-space order."""
    labelled = labelled_usable(manifest)
    counts = label_space.encode(labelled["labels"].str.split()).sum(axis=0)
    return pd.Series(counts, index=list(label_space.label_ids), name="images")


class ManifestDigests:
    """What a unit reads from the manifest, as digests (core.lineage): the labels of a list of ids,
    and the content of the image files that stand for them (content hash and status: ok, or
    repaired into a copy), looked up among the usable rows of the given splits. Not their paths
    or mtimes: a moved, copied or touched data directory holds the same inputs. Cells are hashed
    once per splits; a unit's digest then costs a lookup per id."""

    LABEL_COLUMNS = ("labels",)
    IMAGE_COLUMNS = ("sha256", "status")

    def __init__(self, manifest: pd.DataFrame):
        self._rows = usable(manifest)
        self._cache: dict = {}

    def labels(self, image_ids, splits: Sequence[str]) -> str:
        return self.labels_and_images(image_ids, splits)[0]

    def images(self, image_ids, splits: Sequence[str]) -> str:
        return self._digests(tuple(splits)).of(image_ids, self.IMAGE_COLUMNS)

    def labels_and_images(self, image_ids, splits: Sequence[str]) -> tuple:
        """(labels digest, images digest) of the ids, looked up once."""
        both = self._digests(tuple(splits)).each(image_ids, {"labels": self.LABEL_COLUMNS,
                                                             "images": self.IMAGE_COLUMNS})
        return both["labels"], both["images"]

    def _digests(self, splits: tuple) -> RowDigests:
        if splits not in self._cache:
            rows = self._rows[self._rows["split"].isin(splits)]
            self._cache[splits] = RowDigests(rows["imageId"], rows[list(self.LABEL_COLUMNS + self.IMAGE_COLUMNS)])
        return self._cache[splits]
