"""Fault suite, whole runs (issue 9, items 1 and 2), on a tiny generated dataset through the CLI:
a changed label or image reaches exactly the units that read it; a damaged artifact under a
finished unit is found, named and rebuilt; an unfinished unit is never consumed; a failing stage
keeps the previous output. Each case is one row of docs/FAULTS.md.

One finished run is made per module and copied per test (its DONE records hold paths relative
to their units, so a copy is as finished as the original); the cases that edit the data get a
run of their own."""
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

pytest.importorskip("keras")

from fashion_stack import pipeline as run_pipeline  # noqa: E402
from fashion_stack.core.config import DemoConfig  # noqa: E402
from fashion_stack.datasets.demo import generate_demo  # noqa: E402

STAGES = "prepare,folds,members,stack,decide,submit"
SETTINGS = ["folds.k=2", "stack.stackers=[mean, weighted]", "decision.rules=[global, topk]",
            "members=[{name: cnn, backbone: tiny_cnn, input_size: 32, weights: null, head_epochs: 0, "
            "finetune_epochs: 1, batch_size: 16}]"]


def tiny_data(folder):
    return generate_demo(folder, DemoConfig(n_train=30, n_validation=16, n_test=8, image_size=40))


def run(data_dir, run_dir, *extra, stages=STAGES, redo="") -> int:
    argv = ["--data-dir", str(data_dir), "--run-dir", str(run_dir), "--stages", stages, "--redo", redo]
    for setting in SETTINGS + list(extra):
        argv += ["--set", setting]
    return run_pipeline.main(argv)


def done(path) -> dict:
    return json.loads((path / "DONE.json").read_text())


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("finished")
    data_dir = tiny_data(root / "data")
    assert run(data_dir, root / "run") == 0
    return data_dir, root / "run"


@pytest.fixture
def copy_of_finished(finished, tmp_path):
    data_dir, original = finished
    shutil.copytree(original, tmp_path / "run")
    return data_dir, tmp_path / "run"


@pytest.mark.parametrize("damaged", [
    {"manifest.parquet": lambda p: p.write_bytes(p.read_bytes()[:-50]),  # truncated
     "members/cnn/oof.parquet": lambda p: p.unlink(),  # deleted
     "ensemble/weighted/test.parquet": lambda p: p.write_bytes(b"PAR1")},
    {"members/cnn/fold0/oof.parquet": lambda p: p.write_bytes(p.read_bytes()[:100]),
     "members/cnn/fold1/DONE.json": lambda p: p.write_text('{"config_hash": ')},  # cut short by a kill
], ids=["manifest-member-stacker", "fold-artifact-and-record"])
def test_damaged_artifacts_under_finished_units_are_named_and_rebuilt(copy_of_finished, caplog, damaged):
    data_dir, run_dir = copy_of_finished
    trained = done(run_dir / "members/cnn/fold0")
    for relative, damage in damaged.items():
        damage(run_dir / relative)
    assert run(data_dir, run_dir) == 0  # was: ArrowInvalid / FileNotFoundError / JSONDecodeError later on
    if not any(relative.startswith("members/cnn/fold") for relative in damaged):
        assert done(run_dir / "members/cnn/fold0") == trained  # only the damaged units were rebuilt
    for relative in damaged:
        named = f"{run_dir / relative} is unreadable" if relative.endswith("DONE.json") else f"{run_dir / relative}: "
        assert named in caplog.text, relative
    for unit in ("prepare", "members/cnn/fold0", "members/cnn/fold1", "members/cnn", "ensemble/weighted", "decision"):
        record = done(run_dir / unit)
        assert record["artifacts"] and all((run_dir / unit / a["path"]).exists() for a in record["artifacts"]), unit
    pd.read_parquet(run_dir / "manifest.parquet")
    pd.read_parquet(run_dir / "ensemble/weighted/test.parquet")
    caplog.clear()
    assert run(data_dir, run_dir) == 0
    assert "rebuilding" not in caplog.text and "recomputing" not in caplog.text


def test_deleted_test_labels_rebuild_the_decision_instead_of_looping(copy_of_finished, capsys):
    data_dir, run_dir = copy_of_finished
    (run_dir / "decision" / "test_labels.csv").unlink()
    assert run(data_dir, run_dir, stages="decide,submit") == 0  # was "run decide first" -> "already done"
    assert (run_dir / "decision" / "test_labels.csv").exists() and (run_dir / "submission.csv").exists()
    capsys.readouterr()
    assert run(data_dir, run_dir, stages="decide,submit") == 0
    assert "Nothing to do" in capsys.readouterr().out


def test_stacker_without_done_record_is_not_consumed(copy_of_finished, caplog):
    data_dir, run_dir = copy_of_finished
    (run_dir / "ensemble" / "weighted" / "DONE.json").unlink()  # killed after oof.parquet, before DONE.json
    assert run(data_dir, run_dir, stages="decide") == 0
    assert "not finished (no DONE.json) yet: stacker weighted; not scored" in caplog.text
    assert "weighted" not in set(pd.read_csv(run_dir / "decision" / "scores.csv")["source"])
    assert run(data_dir, run_dir, stages="stack,decide") == 0  # the stacker finishes: decide follows it
    assert "weighted" in set(pd.read_csv(run_dir / "decision" / "scores.csv")["source"])


def test_submit_refuses_a_decision_without_its_done_record(copy_of_finished, capsys):
    data_dir, run_dir = copy_of_finished
    (run_dir / "decision" / "DONE.json").unlink()
    assert run(data_dir, run_dir, stages="submit") == 1
    assert "decision has no valid DONE.json: it is not finished; run --stages decide" in capsys.readouterr().err


def test_failing_decide_keeps_the_previous_decision(copy_of_finished, monkeypatch, capsys):
    data_dir, run_dir = copy_of_finished
    decision = run_dir / "decision"
    before = {p.name: p.read_bytes() for p in decision.iterdir()}
    from fashion_stack.ensemble import decide_stage

    def fail(*args, **kwargs):
        raise ValueError("simulated failure in the middle of decide")
    monkeypatch.setattr(decide_stage, "nested_cv_predict", fail)
    assert run(data_dir, run_dir, stages="decide", redo="decide") == 1
    assert "simulated failure" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in decision.iterdir()} == before  # was: deleted before the failure
    monkeypatch.undo()
    assert run(data_dir, run_dir, stages="decide,submit") == 0  # the previous decision is still finished


# ---- edits to the data: a run of its own --------------------------------------------------------

def edit_label(json_path, position, labels):
    doc = json.loads(json_path.read_text())
    doc["annotations"][position]["labelId"] = labels
    json_path.write_text(json.dumps(doc))
    return str(doc["annotations"][position]["imageId"])


def test_changed_labels_and_images_reach_exactly_the_units_that_read_them(tmp_path, caplog):
    # regime b (pool: validation): the member's one unit trains on train and predicts the pool,
    # so train and validation labels reach different units
    data_dir, run_dir = tiny_data(tmp_path / "data"), tmp_path / "run"
    regime_b = "data.pool=validation"
    assert run(data_dir, run_dir, regime_b) == 0
    unit, member = run_dir / "members/cnn/fold_all", run_dir / "members/cnn"
    first = {name: done(run_dir / name) for name in ("members/cnn/fold_all", "members/cnn", "ensemble/mean",
                                                     "decision", "folds_unit")}

    edit_label(data_dir / "validation.json", 0, ["1", "2"])  # a pool label: scored, never trained on
    caplog.clear()
    assert run(data_dir, run_dir, regime_b) == 0  # no --redo needed, nothing "done, skipped" wrongly
    assert done(unit) == first["members/cnn/fold_all"]  # the 1M-image unit is not retrained
    assert done(member)["inputs_hash"]["pool labels"] != first["members/cnn"]["inputs_hash"]["pool labels"]
    for derived in ("ensemble/mean", "decision"):  # fitted on the pool's labels: recomputed
        assert done(run_dir / derived)["finished_at"] > first[derived]["finished_at"], derived
    assert done(run_dir / "folds_unit") == first["folds_unit"]  # the same ids: the same folds
    assert "its inputs changed since it was made (pool labels)" in caplog.text

    # a training label edited and a training image overwritten in place (its folder's mtime kept, the
    # case the old folder-level check missed): the unit that trained on them retrains, in one rerun
    trained_before = done(unit)
    edit_label(data_dir / "train.json", 3, ["1"])
    image = data_dir / "images" / f"{json.loads((data_dir / 'train.json').read_text())['images'][5]['imageId']}.jpg"
    folder_mtime = image.parent.stat().st_mtime_ns
    Image.fromarray(np.full((40, 40, 3), 200, dtype=np.uint8)).save(image, quality=90)
    os.utime(image.parent, ns=(folder_mtime, folder_mtime))
    caplog.clear()
    assert run(data_dir, run_dir, regime_b) == 0
    assert done(unit)["finished_at"] > trained_before["finished_at"]
    assert "its inputs changed since it was made (train images, train labels)" in caplog.text
    assert done(run_dir / "folds_unit") == first["folds_unit"]
