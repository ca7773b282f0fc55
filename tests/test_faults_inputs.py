"""Fault suite, inputs (issue 9, items 4 and 7): imageIds that could name paths outside the data
directory, label ids of the wrong type, broken label maps, and submission files as Kaggle takes
them (CRLF, trailing blank lines) or as no one should (a 1 MB line). Each case is one row of
docs/FAULTS.md."""
import json
import tracemalloc

import pytest

from fashion_stack.core.labels import LabelError, LabelSpace
from fashion_stack.datasets.competition import CompetitionDataError, read_split
from fashion_stack.core.config import PipelineConfig
from fashion_stack.core.context import StageContext
from fashion_stack.core.rundir import RunDir
from fashion_stack.datasets.prepare import run_prepare
from fashion_stack.submissions.validate import MAX_LINE_BYTES, validate_submission


@pytest.fixture
def label_space(tmp_path):
    path = tmp_path / "label_map.csv"
    path.write_text("labelId,labelName\n1,a\n2,b\n27,c\n")
    return LabelSpace.from_csv(path)


def write_split(path, image_ids, label_ids=None):
    doc = {"images": [{"url": f"http://x/{n}", "imageId": i} for n, i in enumerate(image_ids)]}
    if label_ids is not None:
        doc["annotations"] = [{"imageId": i, "labelId": labels} for i, labels in zip(image_ids, label_ids)]
    path.write_text(json.dumps(doc))
    return path


# ---- imageIds: checked once, in the reader --------------------------------------------------

@pytest.mark.parametrize("image_id, problem", [
    ("../../../../x", "path separator"),
    ("a/b", "path separator"),
    ("a\\b", "path separator"),
    ("..", r"'\.\.'"),
    ("x\ny", "control character"),
    ("x\x00", "control character"),
    ("", "is empty"),
    ("   ", "is empty"),
])
def test_unsafe_image_id_is_refused_naming_file_position_and_id(tmp_path, label_space, image_id, problem):
    path = write_split(tmp_path / "train.json", ["1", image_id], [["1"], ["2"]])
    with pytest.raises(CompetitionDataError, match=rf"train\.json: images\[1\]: imageId .*{problem}"):
        read_split(path, "train", label_space)


@pytest.mark.parametrize("image_id", [None, 1.5, True, {"id": 1}])
def test_image_id_that_is_not_a_string_or_integer_is_refused(tmp_path, label_space, image_id):
    path = write_split(tmp_path / "test.json", ["1", image_id])
    with pytest.raises(CompetitionDataError, match=r"images\[1\]: imageId must be a string or an integer"):
        read_split(path, "test", label_space, labelled=False)


def test_unsafe_id_in_annotations_only_is_refused_too(tmp_path, label_space):
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"images": [{"imageId": "1"}],
                                "annotations": [{"imageId": "../1", "labelId": ["1"]}]}))
    with pytest.raises(CompetitionDataError, match=r"annotations\[0\]: imageId '\.\./1'"):
        read_split(path, "train", label_space)


def test_prepare_stage_refuses_the_id_before_touching_any_path(tmp_path):
    # the escape the issue found: an id that walks up out of images/ (and out of repaired/)
    data_dir = tmp_path / "data"
    (data_dir / "images").mkdir(parents=True)
    (data_dir / "label_map.csv").write_text("labelId,labelName\n1,a\n")
    write_split(data_dir / "train.json", ["1", "../../x"], [["1"], ["1"]])
    write_split(data_dir / "test.json", ["5"])
    outside = tmp_path / "x.jpg"
    outside.write_bytes(b"not the pipeline's")
    config = PipelineConfig()
    config.data.dir = str(data_dir)
    ctx = StageContext(config=config, run=RunDir(tmp_path / "run"), data_dir=data_dir)
    with pytest.raises(CompetitionDataError, match=r"train\.json: images\[1\]: imageId '\.\./\.\./x' contains a path"):
        run_prepare(ctx)
    assert outside.read_bytes() == b"not the pipeline's"
    assert not ctx.run.manifest.exists() and not (ctx.run.root / "repaired").exists()


# ---- label ids: strings or integers, in a list ----------------------------------------------

def test_label_ids_as_integers_in_a_list_are_read_as_strings(tmp_path, label_space):
    split = read_split(write_split(tmp_path / "train.json", ["1"], [[27, "2"]]), "train", label_space)
    assert split.images["labelIds"].tolist() == [["27", "2"]]


@pytest.mark.parametrize("label_ids, shown", [
    ("27", "the string '27'"),  # was split into '2' and '7'
    (27, "27"),  # was a TypeError
    ({"27": 1}, r"\{'27': 1\}"),
])
def test_label_ids_not_in_a_list_are_refused_naming_the_image(tmp_path, label_space, label_ids, shown):
    path = write_split(tmp_path / "train.json", ["1", "img9"], [["1"], label_ids])
    with pytest.raises(CompetitionDataError,
                       match=rf"annotations\[1\] \(imageId 'img9'\): labelId must be a list.*got {shown}"):
        read_split(path, "train", label_space)


@pytest.mark.parametrize("entry", [None, True, 2.0, "", ["1"]])
def test_label_id_entries_of_another_type_are_refused(tmp_path, label_space, entry):
    path = write_split(tmp_path / "train.json", ["img9"], [["1", entry]])
    with pytest.raises(CompetitionDataError, match=r"imageId 'img9'\): labelId entries must be non-empty strings"):
        read_split(path, "train", label_space)


# ---- the label map: errors name the file and the row ----------------------------------------

@pytest.mark.parametrize("text, message", [
    ("", r"label_map\.csv: the label map is empty"),
    ("labelId,labelName\n", r"label_map\.csv: the label map has a header but no labels"),
    ("labelId,labelName\n1,a\n2,b\n1,c\n", r"label_map\.csv: labelId '1' appears on lines \[2, 4\]"),
    ("labelId,labelName\n1,a\n,b\n", r"label_map\.csv: empty labelId on line\(s\) \[3\]"),  # was a label 'nan'
    ("labelId,labelName\n1,a\n2,\n", r"label_map\.csv: empty labelName on line\(s\) \[3\]"),
    ("id,name\n1,a\n", r"label_map\.csv: not a label map: its first line is not a header with labelId and labelName"),
    ("labelId,labelName\n1,a\n2,b,c,d\n", r"label_map\.csv: cannot read the label map.*line 3"),
])
def test_broken_label_map_names_file_and_row(tmp_path, text, message):
    path = tmp_path / "label_map.csv"
    path.write_text(text)
    with pytest.raises(LabelError, match=message):
        LabelSpace.from_csv(path)


def test_missing_label_map_names_the_file_and_the_setting(tmp_path):
    with pytest.raises(LabelError, match=r"absent\.csv: label map not found \(config data.label_map\)"):
        LabelSpace.from_csv(tmp_path / "absent.csv")


def test_label_named_like_a_missing_value_stays_a_name(tmp_path):
    path = tmp_path / "label_map.csv"
    path.write_text("labelId,labelName\n1,NA\n2, null \n")
    assert LabelSpace.from_csv(path).names == ("NA", "null")


# ---- the submission validator: what Kaggle accepts, streamed --------------------------------

TEST_IDS = ["1", "2", "3"]
GOOD = "image_id,label_id\n1,1 2\n2,27\n3,1\n"


def validate(tmp_path, data: bytes):
    path = tmp_path / "submission.csv"
    path.write_bytes(data)
    return validate_submission(path, TEST_IDS, ["1", "2", "27"])


@pytest.mark.parametrize("data", [
    GOOD.encode(),
    GOOD.replace("\n", "\r\n").encode(),  # CRLF
    (GOOD + "\n\n").encode(),  # trailing blank lines
    (GOOD.replace("\n", "\r\n") + "\r\n\r\n").encode(),
    GOOD.rstrip("\n").encode(),  # no final line end
], ids=["lf", "crlf", "trailing-blank", "crlf-trailing-blank", "no-final-newline"])
def test_validator_accepts_what_kaggle_accepts(tmp_path, data):
    assert validate(tmp_path, data) == []


def test_blank_line_between_rows_is_still_reported(tmp_path):
    problems = validate(tmp_path, b"image_id,label_id\n1,1\n\n2,27\n3,1\n")
    assert len(problems) == 1 and "line 3: malformed: 0 column(s)" in problems[0]


def test_oversized_line_is_one_clear_problem_and_the_rest_is_checked(tmp_path):
    long_row = b"2," + b"1 " * (MAX_LINE_BYTES // 2 + 10) + b"\n"  # was a csv field-limit traceback
    problems = validate(tmp_path, b"image_id,label_id\n1,1\n" + long_row + b"3,1 99\n")
    assert any(f"line 3: longer than {MAX_LINE_BYTES} bytes" in p for p in problems)
    assert any("line 4 (image_id '3'): unknown label(s) 99" in p for p in problems)
    assert any("missing 1 test image_id(s): 2" in p for p in problems)


def test_validator_memory_does_not_grow_with_a_huge_line(tmp_path):
    path = tmp_path / "submission.csv"
    with open(path, "wb") as handle:  # a 40 MB file that is one line
        handle.write(b"image_id,label_id\n1,")
        for _ in range(40):
            handle.write(b"7" * (1 << 20))
    tracemalloc.start()
    problems = validate_submission(path, TEST_IDS, None)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert any("longer than" in p for p in problems)
    assert peak < 4 * MAX_LINE_BYTES + (1 << 20), f"peak {peak} bytes while reading a 40 MB line"
