"""Fault suite, issue 24 (hostile round two): silent wrong results, reads and writes where they
should not be, tracebacks instead of one line, the submission validator. Each case is a row of
docs/FAULTS.md; the moved-data and run-directory cases are in test_faults_moved_data.py."""
import errno
import io
import json
import re
import tracemalloc
import zipfile

import pytest
from PIL import Image

from benchmarks.local_http import LocalServer, send_body
from fashion_stack import pipeline as run_pipeline
from fashion_stack.core import rundir as core_rundir
from fashion_stack.core.config import ConfigError, DownloadConfig, PipelineConfig, load_config
from fashion_stack.core.context import StageContext
from fashion_stack.core.labels import LabelError, LabelSpace
from fashion_stack.core.rundir import RunDir
from fashion_stack.datasets import competition, imageops
from fashion_stack.datasets.competition import CompetitionDataError, read_split
from fashion_stack.datasets.download import download_images
from fashion_stack.datasets.images import inspect_image
from fashion_stack.datasets.prepare import run_prepare
from fashion_stack.reports import plots
from fashion_stack.submissions.validate import validate_submission


def jpeg(colour=(200, 30, 30), size=(12, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def competition_dir(root, train, test, labels="labelId,labelName\n1,a\n2,b\n", urls=None):
    """A flat-layout data dir: train {id: [labels]}, test [ids], one JPEG per distinct id."""
    urls = urls or {}
    (root / "images").mkdir(parents=True)
    (root / "label_map.csv").write_text(labels)
    (root / "train.json").write_text(json.dumps({
        "images": [{"imageId": i, "url": urls.get(("train", i), f"http://x/train/{i}")} for i in train],
        "annotations": [{"imageId": i, "labelId": lab} for i, lab in train.items()]}))
    (root / "test.json").write_text(json.dumps({
        "images": [{"imageId": i, "url": urls.get(("test", i), f"http://x/test/{i}")} for i in test]}))
    for image_id in set(train) | set(test):
        (root / "images" / f"{image_id}.jpg").write_bytes(jpeg())
    return root


def context(data_dir, run_dir) -> StageContext:
    config = PipelineConfig()
    config.data.dir, config.data.pool, config.data.validation = str(data_dir), "train", "absent.json"
    return StageContext(config=config, run=RunDir(run_dir), data_dir=data_dir)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error")]
    assert len(lines) == 1, err
    return lines[0]


# ---- 1-5: silent wrong results ----------------------------------------------------------------

def test_flat_layout_test_id_equal_to_a_train_id_with_another_url_is_refused(tmp_path):
    data_dir = competition_dir(tmp_path / "data", {"1": ["1"], "2": ["2"]}, ["2", "3"],
                               urls={("train", "2"): "http://x/shirt.jpg", ("test", "2"): "http://x/shoe.jpg"})
    ctx = context(data_dir, tmp_path / "run")
    with pytest.raises(CompetitionDataError) as caught:  # was: test 2 predicted from the train photo
        run_prepare(ctx)
    message = str(caught.value)
    assert "train.json" in message and "test.json" in message and "imageId(s) 2 " in message
    assert "data.image_layout: per_split" in message and "\n" not in message
    assert not ctx.run.manifest.exists()


def test_flat_layout_test_id_repeating_a_train_id_with_the_same_url_is_one_photo(tmp_path):
    data_dir = competition_dir(tmp_path / "data", {"1": ["1"], "2": ["2"]}, ["2", "3"],
                               urls={("train", "2"): "http://x/same.jpg", ("test", "2"): "http://x/same.jpg"})
    assert run_prepare(context(data_dir, tmp_path / "run"))["images"] == 4


def test_label_id_with_whitespace_is_refused_in_annotations_and_label_map(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"images": [{"imageId": "7"}], "annotations": [{"imageId": "7", "labelId": ["1 2"]}]}))
    with pytest.raises(CompetitionDataError, match=r"train\.json: annotations\[0\] \(imageId '7'\): labelId '1 2' "
                                                   r"contains whitespace"):
        read_split(path, "train")  # was: accepted, then split into labels 1 and 2 downstream
    label_map = tmp_path / "label_map.csv"
    label_map.write_text("labelId,labelName\n1,a\n1 2,b\n")
    with pytest.raises(LabelError, match=r"label_map\.csv: labelId with whitespace .* on line\(s\) \[3\]"):
        LabelSpace.from_csv(label_map)


@pytest.mark.parametrize("setting", ["decision.min_labels=25", "decision.max_labels=30"])
def test_label_counts_beyond_the_competition_limit_are_refused_at_load(setting, capsys):
    assert run_pipeline.main(["--set", "decision.max_labels=30", "--set", setting, "--stages", "prepare"]) == 2
    assert re.search(r"decision\.(min|max)_labels is (25|30); the competition accepts at most 23",
                     one_error_line(capsys))  # was: a submission the validator and Kaggle reject, called valid


def test_json_key_given_twice_is_refused_naming_file_and_key(tmp_path):
    path = tmp_path / "train.json"
    path.write_text('{"images": [{"imageId": "1"}], "annotations": [{"imageId": "1", "labelId": ["1"]}], '
                    '"annotations": []}')
    with pytest.raises(CompetitionDataError, match=r"train\.json: the key 'annotations' appears twice"):
        read_split(path, "train")  # was: the second list silently won


# ---- 6-8: writes and reads where they should not be --------------------------------------------

@pytest.mark.parametrize("setting, key", [
    ("members=[{name: ../../../escaped_member, backbone: tiny_cnn}]", "members[0].name"),
    ("name=../../x", "name"),
    ("members=[{name: 'two words', backbone: tiny_cnn}]", "members[0].name"),
])
def test_names_that_would_leave_the_run_directory_are_refused_before_any_write(tmp_path, monkeypatch, capsys,
                                                                               setting, key):
    monkeypatch.chdir(tmp_path)
    assert run_pipeline.main(["--set", setting, "--stages", "members"]) == 2
    assert f"{key} '" in one_error_line(capsys)
    assert list(tmp_path.rglob("*")) == []  # nothing written anywhere: no runs/, no escaped_member
    with pytest.raises(ValueError, match="member name"):
        RunDir(tmp_path / "run").member_dir("../x")  # and the run directory's own paths refuse it too


def test_label_map_pointed_at_another_file_does_not_echo_its_content(tmp_path):
    secrets = tmp_path / "secrets.env"
    secrets.write_text("AWS_SECRET_ACCESS_KEY=hunter2\nOTHER=x\n")
    with pytest.raises(LabelError) as caught:
        LabelSpace.from_csv(secrets)
    assert "hunter2" not in str(caught.value) and "not a label map" in str(caught.value)


@pytest.fixture
def small_image_limit(monkeypatch):
    monkeypatch.setattr(imageops, "MAX_IMAGE_BYTES", 256 * 1024)
    return 256 * 1024


def endless_body(handler):
    """A body far larger than any image, without a Content-Length, sent until the client hangs up."""
    handler.send_response(200)
    handler.send_header("Content-Type", "image/jpeg")
    handler.send_header("Connection", "close")
    handler.end_headers()
    block = b"\xff" * 65536
    try:
        for _ in range(200):  # 13 MB
            handler.wfile.write(block)
    except OSError:
        pass


def test_download_body_is_streamed_and_cut_at_the_image_limit(tmp_path, small_image_limit):
    routes = {"/huge.jpg": endless_body,
              "/announced.jpg": lambda h: send_body(h, b"\xff" * (small_image_limit + 1), "image/jpeg")}
    with LocalServer(routes) as server:
        tracemalloc.start()
        result = download_images([("huge", server.url("/huge.jpg")), ("announced", server.url("/announced.jpg"))],
                                 tmp_path / "images", DownloadConfig(workers=1, timeout_s=5, retries=0))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    reasons = dict(zip(result.failures["imageId"], result.failures["reason"]))
    assert reasons["huge"].startswith("body larger than 262,144 bytes")
    assert "Content-Length 262,145" in reasons["announced"]
    assert peak < 4 * small_image_limit  # was: the whole body in memory (935 MB for 400 MB)


def test_image_file_larger_than_the_limit_is_listed_without_being_read(tmp_path):
    huge = tmp_path / "1.jpg"
    with open(huge, "wb") as handle:
        handle.truncate(2**30)  # 1 GB, sparse: no disk used
    tracemalloc.start()
    fields = inspect_image(huge, tmp_path / "repaired.jpg")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert fields["status"] == "unreadable" and "larger than the 67,108,864" in fields["reason"]
    assert peak < 2**20  # was: read whole before being refused


def test_zip_expanding_far_beyond_its_size_is_refused_while_reading(tmp_path):
    path = tmp_path / "train.json.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("train.json", '{"images": []' + " " * 8 * 2**20 + "}")  # 8 MB in ~8 kB
    with pytest.raises(CompetitionDataError, match=r"train\.json\.zip: train\.json expands beyond [\d,]+ bytes "
                                                   rf"\({competition.MAX_ZIP_RATIO} times its compressed"):
        competition.load_json(path)


# ---- 12-16: one line, not a traceback ----------------------------------------------------------

def test_full_disk_at_the_start_is_one_line(tmp_path, monkeypatch, capsys):
    def full(handle, holder):
        if holder:
            raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(core_rundir, "_write_holder", full)
    assert run_pipeline.main(["--run-dir", str(tmp_path / "run"), "--stages", "prepare"]) == 2
    assert one_error_line(capsys) == (f"error: run directory {tmp_path / 'run'} is not writable (No space left on "
                                      "device); free some space on its disk or choose another --run-dir")


def test_label_name_with_dollar_signs_is_drawn_as_text(tmp_path):
    path = plots.bars(tmp_path / "labels.png", ["price $^^$ range", "plain"], [0.4, 0.7], "F1", "per label")
    assert path.is_file()  # was: matplotlib's mathtext ParseSyntaxException, naming no label


@pytest.mark.parametrize("content, message", [
    ("[" * 20000, r"is nested too deeply to be a config"),
    ("name: caf\xe9\n".encode("latin-1"), r"is not UTF-8 \(byte 0xe9 at offset 9\)"),
], ids=["nested", "latin-1"])
def test_unreadable_config_is_one_line_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError, match=rf"config {re.escape(str(path))} {message}"):
        load_config(path)


def test_overlong_image_id_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "test.json"
    path.write_text(json.dumps({"images": [{"imageId": 1}, {"imageId": int("9" * 300)}]}))
    with pytest.raises(CompetitionDataError, match=r"test\.json: images\[1\]: imageId '9{300}' is longer than 200"):
        read_split(path, "test", labelled=False)  # was: "File name too long" naming an image path


def test_stages_run_in_pipeline_order_and_an_empty_list_is_refused(tmp_path, capsys):
    data_dir = competition_dir(tmp_path / "data", {str(i): ["1" if i % 2 else "2"] for i in range(1, 9)}, ["9"])
    argv = ["--data-dir", str(data_dir), "--run-dir", str(tmp_path / "run"), "--set", "data.pool=train",
            "--set", "folds.k=2", "--set", "data.validation=absent.json"]
    assert run_pipeline.main(argv + ["--stages", ""]) == 2
    assert "--stages '' names no stage" in one_error_line(capsys)  # was: nothing run, exit 0
    assert run_pipeline.main(argv + ["--stages", "folds,prepare"]) == 0  # was: folds first, "run prepare"
    assert (tmp_path / "run" / "folds.csv").is_file()


def test_folder_named_like_an_image_and_an_unreadable_image_are_listed(tmp_path, monkeypatch):
    data_dir = competition_dir(tmp_path / "data", {"1": ["1"], "2": ["2"], "3": ["1"], "4": ["2"]}, ["9"])
    (data_dir / "images" / "2.jpg").unlink()
    (data_dir / "images" / "2.jpg").mkdir()
    locked = data_dir / "images" / "3.jpg"
    real_open = open

    def refusing_open(file, *args, **kwargs):  # as root, chmod cannot refuse a read: the refusal is injected
        if str(file) == str(locked):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)
    monkeypatch.setattr(imageops, "open", refusing_open, raising=False)
    summary = run_prepare(context(data_dir, tmp_path / "run"))  # was: PermissionError stopped prepare
    skipped = (tmp_path / "run" / "skipped_images.csv").read_text()
    assert summary["skipped"] == 2
    assert "2,train,unreadable,not a file (a folder" in skipped  # was: "missing file"
    assert "3,train,unreadable,cannot read: Permission denied" in skipped


# ---- 17-19: the submission validator -----------------------------------------------------------

@pytest.mark.parametrize("data, problem", [
    (b'image_id,label_id\n1,"1 2\n2,1\n', r"line 2: malformed CSV \(unexpected end of data\); an unterminated quote"),
    (b"image_id,label_id\r1,1\r2,1\r", r"line 1: holds a bare CR \(old Mac line ends\?\)"),
    (b"image_id,label_id\n1,\x001\n2,1\n", r"line 2 \(image_id '1'\): unknown label\(s\) '\\x001' not in the label map"),
], ids=["unterminated-quote", "cr-only", "nul-byte"])
def test_validator_names_what_a_csv_reader_would_misread(tmp_path, data, problem):
    path = tmp_path / "submission.csv"
    path.write_bytes(data)
    problems = validate_submission(path, ["1", "2"], ["1", "2"])  # was: "valid" / a _csv.Error traceback / "1"
    assert any(re.search(problem, p) for p in problems), problems


def test_disk_image_cache_is_named_by_what_its_rows_hold(tmp_path):
    """Issue 24 item 9, the decoded-pixel cache: named by its rows' content hashes (the manifest's
    sha256), a moved data directory finds its rows again, and an image replaced in place never
    reads the old picture's pixels (the name once hashed the paths only)."""
    from fashion_stack.models.image_cache import image_cache

    def cache(folder, contents):
        paths = [f"{folder}/1.jpg", f"{folder}/2.jpg"]
        return image_cache("disk", tmp_path / "cache", paths, 8, "stretch", 0, contents=contents).file
    assert cache("/data", ["aa", "bb"]) == cache("/moved/data", ["aa", "bb"])
    assert cache("/data", ["aa", "bb"]) != cache("/data", ["aa", "cc"])
