"""Fault suite, issue 24 (items 5, 9, 10, 20), whole runs through the CLI on a tiny generated
dataset: a moved, copied (mtimes not kept) or touched data directory, or one given by a relative
path, is the same input (at most a re-read, never a retrain, never an error asking for --redo); a
moved run directory names its new place; a renamed member is what compare follows; temporary
files of killed writes are removed at the next start. Each case is a row of docs/FAULTS.md."""
import json
import os
import shutil

import pandas as pd
import pytest

pytest.importorskip("keras")

from fashion_stack import pipeline as run_pipeline  # noqa: E402
from fashion_stack.core.config import DemoConfig  # noqa: E402
from fashion_stack.datasets.demo import generate_demo  # noqa: E402

STAGES = "prepare,folds,members"
MEMBER = ("members=[{name: cnn, backbone: tiny_cnn, input_size: 32, weights: null, head_epochs: 0, "
          "finetune_epochs: 1, batch_size: 16}]")
SETTINGS = ["folds.k=2", MEMBER]


def run(data_dir, run_dir, *extra, stages=STAGES, redo="") -> int:
    argv = ["--data-dir", str(data_dir), "--run-dir", str(run_dir), "--stages", stages, "--redo", redo]
    for setting in SETTINGS + list(extra):
        argv += ["--set", setting]
    return run_pipeline.main(argv)


def done(path) -> dict:
    return json.loads((path / "DONE.json").read_text())


def copy_without_mtimes(source, target):
    """`cp -r` without -p: same bytes, every file with a new mtime."""
    shutil.copytree(source, target, copy_function=shutil.copyfile)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("moved")
    data_dir = generate_demo(root / "data", DemoConfig(n_train=30, n_validation=16, n_test=8, image_size=40))
    assert run(data_dir, root / "run") == 0
    return data_dir, root / "run"


def lineage_of(run_dir) -> dict:
    """What the members' units depend on: the folds' and units' recorded keys and hashes."""
    units = {unit: done(run_dir / unit) for unit in ("folds_unit", "members/cnn/fold0", "members/cnn/fold1",
                                                      "members/cnn")}
    return {unit: (r["config_hash"], r["folds_hash"], r["inputs_hash"], r["finished_at"]) for unit, r in units.items()}


@pytest.mark.parametrize("change", ["moved", "copied without mtimes", "touched", "relative path"])
def test_moved_copied_or_touched_data_retrains_nothing(finished, tmp_path, caplog, monkeypatch, change):
    data_dir, original = finished
    run_dir = tmp_path / "run"
    shutil.copytree(original, run_dir)
    before = lineage_of(run_dir)
    target = tmp_path / "elsewhere" / "data"
    if change == "moved":
        shutil.copytree(data_dir, target)  # copy2: mtimes kept, as a mv keeps them
    elif change == "copied without mtimes":
        copy_without_mtimes(data_dir, target)
    elif change == "touched":
        copy_without_mtimes(data_dir, target)
        for image in (target / "images").iterdir():
            os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    else:
        shutil.copytree(data_dir, target)
        monkeypatch.chdir(target.parent)
        target = target.relative_to(target.parent)
    caplog.set_level("INFO")
    assert run(target, run_dir) == 0  # was: "Pass --redo STAGE", then every fold retrained
    assert "--redo" not in caplog.text
    assert lineage_of(run_dir) == before  # the folds and every member unit kept, untouched
    assert "cnn fold0: done, skipped" in caplog.text and "cnn fold1: done, skipped" in caplog.text
    manifest = pd.read_parquet(run_dir / "manifest.parquet")
    usable = manifest[manifest["status"] == "ok"]
    assert usable["path"].str.startswith(str((tmp_path / "elsewhere" / "data").resolve())).all()  # new place


def test_changed_bytes_still_retrain_the_units_that_read_them(finished, tmp_path, caplog):
    """The content check is not a blind eye: after a copy, one image with other bytes of the same
    size retrains the units that decode it."""
    data_dir, original = finished
    run_dir = tmp_path / "run"
    shutil.copytree(original, run_dir)
    target = tmp_path / "data"
    copy_without_mtimes(data_dir, target)
    manifest = pd.read_parquet(run_dir / "manifest.parquet")
    image_id = manifest.loc[(manifest["split"] == "train") & (manifest["status"] == "ok"), "imageId"].iloc[0]
    image = target / "images" / f"{image_id}.jpg"
    data = bytearray(image.read_bytes())
    data[-3] ^= 0x01  # one bit of the entropy-coded data: same size, other pixels
    image.write_bytes(bytes(data))
    caplog.set_level("INFO")
    assert run(target, run_dir) == 0
    assert "its inputs changed since it was made" in caplog.text and "train images" in caplog.text


def test_moved_run_directory_names_its_new_place(finished, tmp_path, capsys):
    data_dir, original = finished
    moved = tmp_path / "moved_run"
    shutil.copytree(original, moved)
    before = lineage_of(moved)
    assert run(data_dir, moved) == 0
    assert lineage_of(moved) == before  # nothing retrained for the move
    screen = capsys.readouterr().out
    assert str(original) not in screen  # was: skipped_images=<old place>/skipped_images.csv
    assert str(moved.resolve()) in screen
    manifest = pd.read_parquet(moved / "manifest.parquet")
    assert not manifest["path"].str.startswith(str(original)).any()


def test_renamed_member_is_what_compare_follows(finished, tmp_path, capsys):
    data_dir, original = finished
    run_dir = tmp_path / "run"
    shutil.copytree(original, run_dir)
    renamed = MEMBER.replace("name: cnn", "name: renamed")
    assert run(data_dir, run_dir, renamed, stages="members,compare") == 0
    table = pd.read_csv(run_dir / "report" / "fold_scores.csv")
    assert set(table["member"]) == {"renamed"}  # was: the old member read from members/cnn on disk
    assert (run_dir / "members" / "cnn").is_dir()  # the old folder is left alone, just not read
    screen = capsys.readouterr().out
    assert "Best member: renamed," in screen and "member cnn" not in screen


def test_leftover_temporary_files_are_removed_and_listed_at_the_next_start(finished, tmp_path, caplog):
    data_dir, original = finished
    run_dir = tmp_path / "run"
    shutil.copytree(original, run_dir)
    # what a kill -9 inside core.atomic leaves behind: a temporary beside its target
    leftovers = [run_dir / "members/cnn/fold0/.oof.parquet.partial.k3j2h1x9.tmp",
                 run_dir / "report/.index.html.partial.a8b7c6d5.tmp"]
    for leftover in leftovers:
        leftover.parent.mkdir(parents=True, exist_ok=True)
        leftover.write_bytes(b"half")
    caplog.set_level("INFO")
    assert run(data_dir, run_dir) == 0
    assert not any(leftover.exists() for leftover in leftovers)
    assert "removed 2 temporary file(s) left by interrupted writes" in caplog.text
    assert "fold0/.oof.parquet.partial.k3j2h1x9.tmp" in caplog.text
