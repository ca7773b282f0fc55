import numpy as np
import pandas as pd
import pytest

from fashion_stack.core.labels import LabelSpace
from fashion_stack.datasets.competition import read_split
from fashion_stack.datasets.folds import FoldsError, assign_folds, proportion_deviation, read_folds, write_folds


def random_labels(n=300, labels=12, seed=0):
    rng = np.random.default_rng(seed)
    rates = rng.uniform(0.03, 0.5, labels)
    return (rng.random((n, labels)) < rates).astype(np.uint8)


def test_every_image_in_exactly_one_fold_and_seeded():
    labels = random_labels()
    fold_of = assign_folds(labels, k=4, seed=3)
    assert set(fold_of) == {0, 1, 2, 3} and len(fold_of) == len(labels)
    assert np.all(np.bincount(fold_of) >= 70)
    np.testing.assert_array_equal(fold_of, assign_folds(labels, k=4, seed=3))
    assert not np.array_equal(fold_of, assign_folds(labels, k=4, seed=4))


def test_too_few_images():
    with pytest.raises(FoldsError, match="lower folds.k"):
        assign_folds(random_labels(n=2), k=3, seed=0)


def test_write_read_and_tamper_detection(tmp_path):
    path = tmp_path / "folds.csv"
    digest = write_folds(path, ["10", "2", "33"], np.array([0, 1, 0]))
    assert (tmp_path / "folds.csv.sha256").read_text().startswith(digest)
    folds = read_folds(path)
    assert folds.to_dict() == {"10": 0, "2": 1, "33": 0}
    path.write_text("imageId,fold\n10,1\n2,1\n33,0\n")
    with pytest.raises(FoldsError, match="edited"):
        read_folds(path)


def test_stratified_beats_plain_kfold_on_real_labels(imat_dir):
    space = LabelSpace.from_csv(imat_dir / "label_map_228.csv")
    labels = read_split(imat_dir / "validation.json", "validation", space).label_matrix(space)
    stratified = proportion_deviation(labels, assign_folds(labels, 5, 0))
    plain = proportion_deviation(labels, assign_folds(labels, 5, 0, stratified=False))
    assert stratified["mean_rel_dev"] < 0.5 * plain["mean_rel_dev"]
    assert stratified["empty_cells"] <= plain["empty_cells"]
