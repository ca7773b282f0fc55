"""fashion_stack.datasets.manifest: id lists and label matrices taken from a hand-written manifest."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fashion_stack.core import atomic
from fashion_stack.core.labels import LabelSpace
from fashion_stack.datasets.manifest import ManifestError, make_manifest, manifest_labels, pool_ids, read_manifest, usable
from fashion_stack.datasets.manifest import test_ids as usable_test_ids  # aliased: pytest would collect test_ids

LABELS = LabelSpace(("1", "2", "3", "10"), ("shirt", "dress", "hat", "red"))
# imageId, split, labels, status; test ids deliberately out of numeric and text order
ROWS = [
    ("t1", "train", "1 2", "ok"),
    ("t2", "train", "10", "repaired"),
    ("t3", "train", "3", "unreadable"),
    ("v1", "validation", "2 3 10", "ok"),
    ("v2", "validation", "1", "missing"),
    ("30", "test", "", "ok"),
    ("4", "test", "", "unreadable"),
    ("200", "test", "", "repaired"),
]


def make_rows(rows=ROWS) -> pd.DataFrame:
    return make_manifest([
        {"imageId": image_id, "split": split, "labels": labels, "path": f"/images/{image_id}.jpg",
         "width": 8, "height": 8, "mode": "RGB", "bytes": 100, "status": status,
         "reason": "" if status == "ok" else "why"}
        for image_id, split, labels, status in rows])


def test_usable_keeps_ok_and_repaired_in_order():
    assert list(usable(make_rows())["imageId"]) == ["t1", "t2", "v1", "30", "200"]


@pytest.mark.parametrize("pool, expected", [
    ("train+validation", ["t1", "t2", "v1"]), ("train", ["t1", "t2"]), ("validation", ["v1"])])
def test_pool_ids(pool, expected):
    assert pool_ids(make_rows(), pool) == expected


def test_pool_ids_rejects_unknown_pool():
    with pytest.raises(ManifestError, match="'trainval'.*data.pool"):
        pool_ids(make_rows(), "trainval")


def test_test_ids_keep_file_order_and_drop_unusable():
    assert usable_test_ids(make_rows()) == ["30", "200"]


def test_manifest_labels_follow_requested_order():
    ids = ["v1", "t3", "t1", "t2"]  # unusable t3 still has known labels
    expected = np.array([[0, 1, 1, 1], [0, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 1]], dtype=np.uint8)
    matrix = manifest_labels(make_rows(), ids, LABELS)
    assert matrix.dtype == np.uint8
    np.testing.assert_array_equal(matrix, expected)


def test_manifest_labels_names_absent_and_test_ids():
    with pytest.raises(ManifestError, match="nope, 30"):
        manifest_labels(make_rows(), ["t1", "nope", "30"], LABELS)


def test_manifest_labels_refuses_id_in_two_labelled_splits():
    rows = make_rows(ROWS + [("t1", "validation", "3", "ok")])
    with pytest.raises(ManifestError, match="more than one labelled split.*t1"):
        manifest_labels(rows, ["t1"], LABELS)
    np.testing.assert_array_equal(manifest_labels(rows, ["t2"], LABELS), [[0, 0, 0, 1]])


def test_ids_reused_across_splits_are_looked_up_per_split():
    # per_split layout of the real data: train and validation both have an image "5"
    rows = make_rows([("5", "train", "1", "ok"), ("6", "train", "2", "ok"),
                      ("5", "validation", "3 10", "ok"), ("5", "test", "", "ok")])
    np.testing.assert_array_equal(manifest_labels(rows, ["5"], LABELS, splits=("validation",)), [[0, 0, 1, 1]])
    np.testing.assert_array_equal(manifest_labels(rows, ["6", "5"], LABELS, splits=("train",)),
                                  [[0, 1, 0, 0], [1, 0, 0, 0]])
    with pytest.raises(ManifestError, match="ambiguous: 5; pass splits="):
        manifest_labels(rows, ["5"], LABELS)
    with pytest.raises(ManifestError, match="carry no labels"):
        manifest_labels(rows, ["5"], LABELS, splits=("test",))
    assert pool_ids(rows, "validation") == ["5"] and pool_ids(rows, "train") == ["5", "6"]
    with pytest.raises(ManifestError, match="'train\\+validation'.*5.*data.pool: validation"):
        pool_ids(rows, "train+validation")


def test_read_manifest_round_trip_and_dtypes(tmp_path):
    path = tmp_path / "manifest.parquet"
    atomic.write_parquet(path, make_rows())
    back = read_manifest(path)
    pd.testing.assert_frame_equal(back, make_rows())
    assert back["width"].dtype == np.int64


def test_read_manifest_names_file_and_missing_column(tmp_path):
    path = tmp_path / "manifest.parquet"
    atomic.write_parquet(path, make_rows().drop(columns=["status"]))
    with pytest.raises(ManifestError, match=r"manifest.parquet.*\['status'\].*--redo prepare"):
        read_manifest(path)


def test_read_manifest_missing_file_says_run_prepare(tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare stage"):
        read_manifest(tmp_path / "manifest.parquet")
