"""Submission writer, validator (each malformed case named), CLI exit codes, and the submit stage."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fashion_stack.core.config import PipelineConfig
from fashion_stack.core.context import StageContext
from fashion_stack.core.labels import LabelSpace
from fashion_stack.core.rundir import RunDir, mark_done
from fashion_stack.datasets.manifest import make_manifest
from fashion_stack.submissions.stage import fallback_labels, run_submit
from fashion_stack.submissions.validate import validate_submission
from fashion_stack.submissions.writer import SubmissionError, write_submission

ROOT = Path(__file__).resolve().parent.parent
TEST_IDS = ["1", "2", "3", "10"]
LABELS = [str(i) for i in range(1, 9)]
GOOD = "image_id,label_id\n1,1 2\n2,3\n3,4 5 6\n10,8\n"


def check(tmp_path, text, max_labels=23, encoding="utf-8", raw=None):
    path = tmp_path / "sub.csv"
    path.write_bytes(raw if raw is not None else text.encode(encoding))
    return validate_submission(path, TEST_IDS, LABELS, max_labels=max_labels)


def test_valid_file_has_no_problem(tmp_path):
    assert check(tmp_path, GOOD) == []


def test_rows_in_any_order_are_valid(tmp_path):
    assert check(tmp_path, "image_id,label_id\n10,8\n3,4\n2,3\n1,1\n") == []


@pytest.mark.parametrize("text, expected", [
    ("imageId,labels\n1,1\n2,3\n3,4\n10,8\n", ["line 1: header"]),
    ("image_id,label_id\n1,1\n2,3\n3,4\n", ["missing 1 test image_id(s): 10"]),
    (GOOD + "11,1\n", ["line 6 (image_id '11'): extra image_id"]),
    (GOOD + "2,3\n", ["line 6 (image_id '2'): duplicate image_id, first on line 3"]),
    ("image_id,label_id\n1,1 99\n2,3\n3,4\n10,8\n", ["line 2 (image_id '1'): unknown label(s) 99"]),
    ("image_id,label_id\n1,1 2 1\n2,3\n3,4\n10,8\n", ["line 2 (image_id '1'): repeated label(s) 1"]),
    ("image_id,label_id\n1,\n2,3\n3,4\n10,8\n", ["line 2 (image_id '1'): empty label_id field"]),
    ("image_id,label_id\n1,1 2 3 4\n2,3\n3,4\n10,8\n", ["line 2 (image_id '1'): 4 labels, more than the maximum 3"]),
    ("image_id,label_id\n1,1,2\n2,3\n3,4\n10,8\n", ["line 2: malformed: 3 column(s)", "missing 1 test image_id(s): 1"]),
    ("image_id,label_id\n1\n2,3\n3,4\n10,8\n", ["line 2: malformed: 1 column(s)", "missing 1 test image_id(s): 1"]),
    ("image_id,label_id\n1,1\n\n2,3\n3,4\n10,8\n", ["line 3: malformed: 0 column(s)"]),
    ("", ["empty file"]),
], ids=["header", "missing", "extra", "duplicate", "unknown", "repeated", "empty", "too-many",
        "too-many-columns", "too-few-columns", "blank-line", "empty-file"])
def test_validator_names_each_problem(tmp_path, text, expected):
    problems = check(tmp_path, text, max_labels=3)
    assert len(problems) == len(expected), problems
    for problem, fragment in zip(problems, expected):
        assert fragment in problem


def test_validator_reports_bad_encoding_and_keeps_checking(tmp_path):
    raw = "image_id,label_id\n1,1\n2,3\n3,4\n".encode() + b"10,8 \xe9\n"
    problems = check(tmp_path, None, raw=raw)
    assert "bad encoding: line 5" in problems[0]
    assert any("unknown label(s) \ufffd" in p for p in problems[1:])


def test_validator_reports_byte_order_mark(tmp_path):
    problems = check(tmp_path, None, raw=b"\xef\xbb\xbf" + GOOD.encode())
    assert len(problems) == 1 and "byte-order mark" in problems[0]


def test_validator_collects_every_problem_at_once(tmp_path):
    text = "image,label\n1,1 1\n1,99\n42,\n"
    problems = check(tmp_path, text)
    joined = "\n".join(problems)
    for fragment in ["header", "repeated label(s) 1", "duplicate image_id", "unknown label(s) 99",
                     "extra image_id", "empty label_id field", "missing 3 test image_id(s): 2, 3, 10"]:
        assert fragment in joined
    assert len(problems) == 7


def test_without_label_map_unknown_labels_pass(tmp_path):
    path = tmp_path / "sub.csv"
    path.write_text("image_id,label_id\n1,999\n2,3\n3,4\n10,8\n")
    assert validate_submission(path, TEST_IDS) == []


def test_writer_round_trip_keeps_order_and_labels(tmp_path):
    label_sets = {"10": ["8"], "1": ["1", "2"], "3": ["4", "5", "6"], "2": ["3"]}
    path = write_submission(tmp_path / "out" / "submission.csv", TEST_IDS, label_sets, LABELS)
    assert path.read_text() == GOOD
    frame = pd.read_csv(path, dtype=str)
    assert list(frame["image_id"]) == TEST_IDS
    assert {i: s.split() for i, s in zip(frame["image_id"], frame["label_id"])} == label_sets
    assert [p.name for p in path.parent.iterdir()] == ["submission.csv"]  # no temp file left


def test_writer_refuses_invalid_and_leaves_previous_file(tmp_path):
    path = tmp_path / "submission.csv"
    path.write_text("previous")
    bad = {"1": ["1", "1"], "2": [], "3": ["99"]}  # repeated, empty, unknown, and 10 missing
    with pytest.raises(SubmissionError) as err:
        write_submission(path, TEST_IDS, bad, LabelSpace(tuple(LABELS), tuple(LABELS)))
    message = str(err.value)
    for fragment in ["4 problem(s)", "repeated label(s) 1", "image_id '2'): empty", "unknown label(s) 99",
                     "image_id '10'): empty"]:
        assert fragment in message
    assert ".tmp" not in message
    assert path.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]


def test_writer_refuses_ids_outside_the_test_list(tmp_path):
    with pytest.raises(SubmissionError, match="not in the test list"):
        write_submission(tmp_path / "s.csv", TEST_IDS, {i: ["1"] for i in TEST_IDS + ["77"]})


def test_writer_enforces_max_labels(tmp_path):
    many = {i: LABELS for i in TEST_IDS}
    with pytest.raises(SubmissionError, match="8 labels, more than the maximum 5"):
        write_submission(tmp_path / "s.csv", TEST_IDS, many, max_labels=5)


# ---- CLI ---------------------------------------------------------------------------------

def write_test_json(tmp_path):
    path = tmp_path / "test.json"
    path.write_text(json.dumps({"images": [{"url": "", "imageId": int(i)} for i in TEST_IDS]}))
    label_map = tmp_path / "label_map.csv"
    label_map.write_text("labelId,labelName\n" + "".join(f"{lab},name{lab}\n" for lab in LABELS))
    return path, label_map


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "fashion_stack.submissions.validate", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


@pytest.mark.integration
def test_cli_exit_codes(tmp_path):
    test_json, label_map = write_test_json(tmp_path)
    good = tmp_path / "good.csv"
    good.write_text(GOOD)
    result = run_cli(good, "--test", test_json, "--label-map", label_map)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1] == "valid: 4 rows" and "against 4 test ids" in result.stdout

    bad = tmp_path / "bad.csv"
    bad.write_text("image_id,label_id\n1,1 99\n2,3\n3,4\n")
    result = run_cli(bad, "--test", test_json, "--label-map", label_map)
    assert result.returncode == 1
    assert "unknown label(s) 99" in result.stdout and "missing 1 test image_id(s): 10" in result.stdout
    assert "invalid: 2 problem(s)" in result.stdout

    result = run_cli(good, "--test", test_json, "--max-labels", "2")
    assert result.returncode == 1 and "3 labels, more than the maximum 2" in result.stdout

    result = run_cli(good, "--test", tmp_path / "absent.json")
    assert result.returncode == 2 and "absent.json" in result.stderr


@pytest.mark.integration
def test_cli_reads_zipped_test_json(tmp_path):
    import zipfile
    test_json, _ = write_test_json(tmp_path)
    with zipfile.ZipFile(tmp_path / "test.json.zip", "w") as archive:
        archive.write(test_json, "test.json")
    test_json.unlink()
    good = tmp_path / "good.csv"
    good.write_text(GOOD)
    result = run_cli(good, "--test", tmp_path / "test.json")
    assert result.returncode == 0, result.stdout + result.stderr


# ---- submit stage ----------------------------------------------------------------------

def make_submit_run(tmp_path, test_status):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "label_map.csv").write_text(
        "labelId,labelName\n" + "".join(f"{lab},name{lab}\n" for lab in LABELS))
    train = [("t1", "3 1 2"), ("t2", "3 1"), ("t3", "3 4 1 2"), ("t4", "5 3")]  # 3 x4, 1 x3, 2 x2
    rows = [manifest_row(i, "train", lab, "ok") for i, lab in train]
    rows.append(manifest_row("v1", "validation", "8 8", "unreadable"))  # ignored: unusable
    rows += [manifest_row(i, "test", "", s) for i, s in zip(TEST_IDS, test_status)]
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    make_manifest(rows).to_parquet(run.manifest)
    return StageContext(config=PipelineConfig(), run=run, data_dir=data_dir)


def manifest_row(image_id, split, labels, status):
    return dict(imageId=image_id, split=split, labels=labels, path=f"/img/{image_id}.jpg", width=8,
                height=8, mode="RGB", bytes=100, status=status, reason="" if status == "ok" else status)


def write_test_labels(run, label_sets):
    run.decision_dir.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({"imageId": list(label_sets), "labels": [" ".join(v) for v in label_sets.values()]})
    frame.to_csv(run.decision_dir / "test_labels.csv", index=False)
    mark_done(run.decision_dir, "decision-config", None, artifacts=["test_labels.csv"])  # as decide marks it


def test_fallback_is_most_frequent_labels_up_to_median_cardinality(tmp_path):
    ctx = make_submit_run(tmp_path, ["ok"] * 4)
    # training cardinalities 3, 2, 4, 2 -> median 2.5 -> 2 labels; the unreadable image is ignored
    assert fallback_labels(pd.read_parquet(ctx.run.manifest), ctx.label_space()) == ["3", "1"]


def test_run_submit_writes_test_json_order_with_fallback(tmp_path):
    ctx = make_submit_run(tmp_path, ["ok", "missing", "ok", "unreadable"])
    write_test_labels(ctx.run, {"3": ["4"], "1": ["1", "2"]})
    summary = run_submit(ctx)
    assert summary["rows"] == 4 and summary["fallback_rows"] == ["2", "10"]
    assert ctx.run.submission.read_text() == "image_id,label_id\n1,1 2\n2,3 1\n3,4\n10,3 1\n"


def test_run_submit_refuses_usable_test_image_without_labels(tmp_path):
    ctx = make_submit_run(tmp_path, ["ok"] * 4)
    write_test_labels(ctx.run, {"1": ["1"], "2": ["1"], "3": ["1"]})
    with pytest.raises(ValueError, match=r"no labels for 1 usable test image\(s\), e.g. \['10'\]"):
        run_submit(ctx)
    assert not ctx.run.submission.exists()


def test_score_submission_equals_scikit_learn(tmp_path):
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import MultiLabelBinarizer
    from fashion_stack.submissions.score import main as score_main, score_submission
    truth = {"1": ["a", "b"], "2": ["c"], "3": ["a", "d", "e"]}
    guess = {"3": ["a", "e", "f"], "1": ["b"], "2": ["c", "a"]}  # other row order: joined by id
    for name, rows in (("sol.csv", truth), ("sub.csv", guess)):
        (tmp_path / name).write_text("image_id,label_id\n" + "".join(f"{k},{' '.join(v)}\n" for k, v in rows.items()))
    binarizer = MultiLabelBinarizer().fit(list(truth.values()) + list(guess.values()))
    y_true = binarizer.transform([truth[k] for k in truth])
    y_pred = binarizer.transform([guess[k] for k in truth])
    scores = score_submission(tmp_path / "sub.csv", tmp_path / "sol.csv")
    assert scores["micro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="micro"))
    assert scores["samples_f1"] == pytest.approx(f1_score(y_true, y_pred, average="samples"))
    (tmp_path / "short.csv").write_text("image_id,label_id\n1,a\n")
    with pytest.raises(ValueError, match="no row for 2"):
        score_submission(tmp_path / "short.csv", tmp_path / "sol.csv")
    assert score_main([str(tmp_path / "short.csv"), str(tmp_path / "sol.csv")]) == 2
