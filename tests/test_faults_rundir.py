"""Fault suite, the run directory and the lineage rule (issue 9, items 1, 2 and 5): a finished
unit is trusted only while its inputs and its artifacts are as recorded; one run at a time; an
unwritable run directory is one clear line. Each case is one row of docs/FAULTS.md."""
import json
import logging
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from fashion_stack import pipeline as run_pipeline
from fashion_stack.core import atomic, lineage
from fashion_stack.core.rundir import (DONE, RunDirError, UnfinishedUnitError, is_done, is_finished, mark_done, run_lock,
                         upstream_digest)
from fashion_stack.core.config import PROJECT_ROOT as ROOT


def finished_unit(tmp_path, rows=5):
    unit = tmp_path / "unit"
    table = pd.DataFrame({"1": np.arange(rows, dtype=np.float32)}, index=pd.Index([f"i{k}" for k in range(rows)],
                                                                                   name="imageId"))
    atomic.write_parquet(unit / "oof.parquet", table)
    atomic.write_json(unit / "scores.json", {"f1": 0.5})
    atomic.write_text(unit / "model" / "weights.txt", "w")
    mark_done(unit, "config", "folds", inputs_hash={"labels": "a", "images": "b"},
              artifacts=["oof.parquet", "scores.json", "model"])
    return unit


# ---- verify before trusting -------------------------------------------------------------------

def test_finished_unit_is_skipped_while_inputs_and_artifacts_hold(tmp_path):
    unit = finished_unit(tmp_path)
    record = json.loads((unit / DONE).read_text())
    assert {a["path"] for a in record["artifacts"]} == {"oof.parquet", "scores.json", os.path.join("model", "weights.txt")}
    assert next(a for a in record["artifacts"] if a["path"] == "oof.parquet")["rows"] == 5
    assert is_done(unit, "config", "folds", inputs_hash={"labels": "a", "images": "b"})


def test_changed_input_is_named_and_the_unit_recomputed(tmp_path, caplog):
    unit = finished_unit(tmp_path)
    with caplog.at_level(logging.INFO):
        assert not is_done(unit, "config", "folds", inputs_hash={"labels": "EDITED", "images": "b"})
    assert "its inputs changed since it was made (labels)" in caplog.text
    assert (unit / "oof.parquet").exists()  # nothing removed before the replacement is written


@pytest.mark.parametrize("damage, problem", [
    (lambda u: (u / "oof.parquet").write_bytes((u / "oof.parquet").read_bytes()[:40]), "changed since it was written"),
    (lambda u: (u / "oof.parquet").unlink(), "missing"),
    (lambda u: (u / "scores.json").write_text('{"f1": 0.9}'), "changed since it was written"),
    (lambda u: (u / "model" / "weights.txt").unlink(), "missing"),
], ids=["truncated-parquet", "deleted-parquet", "edited-json", "deleted-model-file"])
def test_damaged_artifact_is_reported_with_its_path_and_rebuilt(tmp_path, caplog, damage, problem):
    unit = finished_unit(tmp_path)
    damage(unit)
    with caplog.at_level(logging.WARNING):
        assert not is_done(unit, "config", "folds", inputs_hash={"labels": "a", "images": "b"})
    assert str(unit) in caplog.text and problem in caplog.text and "rebuilding it" in caplog.text
    with pytest.raises(UnfinishedUnitError, match=rf"{problem}.*run --stages stack again"):
        upstream_digest(unit, "stack")


def test_same_bytes_under_a_new_mtime_are_still_trusted(tmp_path):
    unit = finished_unit(tmp_path)
    before = upstream_digest(unit, "stack")
    os.utime(unit / "oof.parquet", ns=(1, 1))  # copied or touched, content the same: rehashed, trusted
    assert is_done(unit, "config", "folds", inputs_hash={"labels": "a", "images": "b"})
    assert upstream_digest(unit, "stack") == before


@pytest.mark.parametrize("content", [b"", b'{"config_hash": "con', b"[1, 2]"], ids=["empty", "truncated", "not-a-record"])
def test_unreadable_done_record_means_not_finished(tmp_path, caplog, content):
    unit = finished_unit(tmp_path)
    (unit / DONE).write_bytes(content)
    with caplog.at_level(logging.WARNING):
        assert not is_done(unit, "config", "folds", inputs_hash={"labels": "a", "images": "b"})
    assert "DONE.json is unreadable" in caplog.text
    assert not is_finished(unit)
    with pytest.raises(UnfinishedUnitError, match="has no valid DONE.json: it is not finished; run --stages stack"):
        upstream_digest(unit, "stack")


def test_unit_without_done_record_is_never_consumed(tmp_path):
    unit = finished_unit(tmp_path)
    (unit / DONE).unlink()  # e.g. killed after oof.parquet, before DONE.json
    with pytest.raises(UnfinishedUnitError, match="unit has no valid DONE.json"):
        upstream_digest(unit, "stack")


def test_consumer_digest_follows_content_not_mtime(tmp_path):
    unit = finished_unit(tmp_path)
    first = upstream_digest(unit, "stack")
    atomic.write_json(unit / "scores.json", {"f1": 0.5})  # rebuilt, same bytes
    mark_done(unit, "config", "folds", artifacts=["oof.parquet", "scores.json", "model"])
    assert upstream_digest(unit, "stack") == first
    atomic.write_json(unit / "scores.json", {"f1": 0.6})
    mark_done(unit, "config", "folds", artifacts=["oof.parquet", "scores.json", "model"])
    assert upstream_digest(unit, "stack") != first


def test_row_digests_change_exactly_for_the_ids_whose_row_changed():
    frame = pd.DataFrame({"labels": ["1 2", "3", "4", "2"], "bytes": [10, 11, 12, 13]})
    ids = ["a", "b", "c", "d"]
    before = lineage.RowDigests(ids, frame)
    edited = frame.copy()
    edited.loc[2, "labels"] = "4 5"  # image c's label changed
    after = lineage.RowDigests(ids, edited)
    assert before.of(["a", "b"]) == after.of(["a", "b"])  # units that never read c: unchanged
    assert before.of(["a", "c"]) != after.of(["a", "c"])
    assert before.of(["a", "b"]) != before.of(["b", "a"])  # order is part of what a unit read
    with pytest.raises(KeyError, match="zz"):
        before.of(["a", "zz"])


# ---- one run at a time ------------------------------------------------------------------------

def cli(tmp_path, run) -> list:
    return ["--run-dir", str(run), "--data-dir", str(tmp_path), "--stages", "folds"]


def errors(stderr: str) -> list:
    """The error lines of a CLI run's stderr (log lines aside), checked to hold no traceback."""
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("error")]


def test_second_run_on_a_run_directory_stops_at_once_naming_the_holder(tmp_path, capsys):
    run = tmp_path / "run"
    with run_lock(run):
        code = run_pipeline.main(cli(tmp_path, run))
        err = capsys.readouterr().err
    assert code == 2 and not (run / "config.yaml").exists()  # stopped before writing anything
    assert len(errors(err)) == 1 and re.fullmatch(
        rf"error: run directory {re.escape(str(run))} is in use by process {os.getpid()} on \S+ since "
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d; wait for it to finish or use another --run-dir", errors(err)[0])


@pytest.mark.integration
def test_lock_of_a_killed_run_is_taken_over(tmp_path, caplog):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from fashion_stack.core.rundir import run_lock\n"
        "with run_lock(sys.argv[2]):\n    print('held', flush=True); time.sleep(600)"), str(ROOT), str(run)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirError, match=f"in use by process {holder.pid}"):
            with run_lock(run):
                pass
        holder.kill()  # kill -9: the holder never releases the lock itself
        holder.wait()
    finally:
        holder.kill()
    with caplog.at_level(logging.WARNING):
        with run_lock(run):
            pass
    assert f"taking over the lock of process {holder.pid}" in caplog.text


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_run_directory_is_one_clear_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    run.chmod(0o555)
    try:
        assert run_pipeline.main(cli(tmp_path, run)) == 2
    finally:
        run.chmod(0o755)
    assert [f"run directory {run} is not writable" in line for line in errors(capsys.readouterr().err)] == [True]


@pytest.mark.parametrize("fails", ["lock", "config"])
def test_unwritable_run_directory_is_one_clear_line_even_with_nothing_to_do(tmp_path, capsys, monkeypatch, fails):
    # as root, permissions cannot make a folder read-only: the file system's refusal is injected
    from fashion_stack.core import rundir as core_rundir
    run = tmp_path / "run"
    run.mkdir()
    if fails == "lock":
        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")
        monkeypatch.setattr(core_rundir, "open", refuse, raising=False)
    else:
        def refuse_write(path, text):
            raise PermissionError(13, "Permission denied", str(path))
        monkeypatch.setattr(run_pipeline.atomic, "write_text", refuse_write)
    assert run_pipeline.main(cli(tmp_path, run)) == 2
    assert errors(capsys.readouterr().err) == [
        f"error: run directory {run} is not writable (Permission denied); fix its permissions or choose another --run-dir"]
