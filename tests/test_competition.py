import json
import zipfile
from collections import Counter

import numpy as np
import pytest

from fashion_stack.core.labels import LabelError, LabelSpace
from fashion_stack.datasets.competition import CompetitionDataError, read_competition, read_split


@pytest.fixture
def small_space(tmp_path):
    path = tmp_path / "label_map.csv"
    path.write_text("labelId,labelName\n1,a\n2,b\n10,c\n")
    return LabelSpace.from_csv(path)


def write_json(path, images, annotations=None):
    doc = {"images": images}
    if annotations is not None:
        doc["annotations"] = annotations
    path.write_text(json.dumps(doc))
    return path


def test_ids_are_strings_and_duplicates_merge(tmp_path, small_space):
    path = write_json(tmp_path / "train.json", [{"url": "u1", "imageId": "1"}, {"url": "u2", "imageId": "2"}],
                      [{"labelId": ["2", "1", "2"], "imageId": "1"}, {"labelId": ["10"], "imageId": "2"}])
    split = read_split(path, "train", small_space)
    assert split.image_ids == ["1", "2"]
    assert split.images["labelIds"].tolist() == [["2", "1"], ["10"]]
    assert split.duplicate_labels_merged == 1
    np.testing.assert_array_equal(split.label_matrix(small_space), [[1, 1, 0], [0, 0, 1]])


def test_integer_test_ids_and_zip(tmp_path, small_space):
    raw = tmp_path / "inner.json"
    write_json(raw, [{"url": "u", "imageId": 7}, {"url": "v", "imageId": 8}])
    with zipfile.ZipFile(tmp_path / "test.json.zip", "w") as archive:
        archive.write(raw, "test.json")
    split = read_split(tmp_path / "test.json", "test", small_space)  # finds the .zip
    assert split.image_ids == ["7", "8"] and not split.labelled


@pytest.mark.parametrize("images,annotations,message", [
    ([{"imageId": "1"}], [{"labelId": ["99"], "imageId": "1"}], r"unknown labelId.*'99'.*1"),
    ([{"imageId": "1"}, {"imageId": "1"}], [{"labelId": ["1"], "imageId": "1"}], r"duplicate imageId.*1"),
    ([{"imageId": "1"}], [{"labelId": ["1"], "imageId": "1"}, {"labelId": ["1"], "imageId": "5"}], r"not in images: 5"),
    ([{"imageId": "1"}, {"imageId": "2"}], [{"labelId": ["1"], "imageId": "1"}], r"without an annotation.*2"),
    ([{"imageId": "1"}], [{"labelId": [], "imageId": "1"}], r"no labelId.*1"),
])
def test_bad_files_name_the_ids(tmp_path, small_space, images, annotations, message):
    path = write_json(tmp_path / "train.json", images, annotations)
    with pytest.raises(CompetitionDataError, match=message):
        read_split(path, "train", small_space)


def test_missing_file_names_it(tmp_path, small_space):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        read_split(tmp_path / "nope.json", "train", small_space)


def test_label_space_round_trip(small_space):
    sets = [["1"], ["2", "10"], ["1", "2", "10"]]
    assert small_space.decode(small_space.encode(sets)) == sets
    with pytest.raises(LabelError, match="'3'"):
        small_space.encode([["3"]])


def test_real_imaterialist_validation(imat_dir):
    space = LabelSpace.from_csv(imat_dir / "label_map_228.csv")
    assert len(space) == 228 and len(space.group_names()) == 8
    assert space.group_mask("category").sum() == 105
    split = read_split(imat_dir / "validation.json", "validation", space)
    sizes = split.images["labelIds"].map(len)
    assert len(split.images) == 9897
    assert sizes.sum() == 79402
    histogram = Counter(sizes)
    assert histogram[1] == 48 and histogram[2] == 27 and histogram[19] == 2 and max(histogram) == 19
    test = read_split(imat_dir / "test.json", "test", space)
    assert len(test.images) == 39706 and test.image_ids[0] == "1"


def test_real_ccp(ccp_dir):
    space = LabelSpace.from_csv(ccp_dir / "label_map.csv")
    splits = read_competition(ccp_dir, {"train": "train.json", "validation": "validation.json",
                                        "test": "test.json"}, space)
    assert {k: len(v.images) for k, v in splits.items()} == {"train": 1398, "validation": 300, "test": 400}
    assert len(space) == 58 and not space.has_groups()
