import os

import pandas as pd
import pytest

from fashion_stack.core import atomic
from fashion_stack.core.rundir import StaleArtifactError, environment_record, is_done, mark_done


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "a" / "x.json"
    atomic.write_json(target, {"k": 1})
    assert atomic.read_json(target) == {"k": 1}
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert atomic.read_json(target) == {"k": 1}
    assert os.listdir(target.parent) == ["x.json"]


def test_parquet_round_trip(tmp_path):
    frame = pd.DataFrame({"a": [1.5, 2.5]}, index=pd.Index(["1", "2"], name="imageId"))
    atomic.write_parquet(tmp_path / "p.parquet", frame)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "p.parquet"), frame)


def test_done_skip_stale_and_redo(tmp_path):
    unit = tmp_path / "unit"
    assert not is_done(unit, "c1", "f1")
    unit.mkdir()
    (unit / "out.txt").write_text("result")
    mark_done(unit, "c1", "f1", seconds=3)
    assert is_done(unit, "c1", "f1")
    with pytest.raises(StaleArtifactError, match="--redo"):
        is_done(unit, "c2", "f1")
    with pytest.raises(StaleArtifactError):
        is_done(unit, "c1", "f2")
    assert not is_done(unit, "c2", "f1", redo=True)
    assert (unit / "out.txt").read_text() == "result"  # kept until its replacement is written


def test_environment_record_has_versions():
    import platform
    import subprocess
    from importlib import metadata
    record = environment_record()
    assert record["python"] == platform.python_version()
    assert record["packages"]["numpy"] == metadata.version("numpy")
    assert record["packages"]["pandas"] == metadata.version("pandas")
    sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert record["git_sha"] == (sha or None)


@pytest.mark.skipif(os.name != "posix", reason="file modes and umask are POSIX")
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_files_get_the_usual_mode(tmp_path, umask):
    # a temporary file is created 0o600; the atomic write must end with the mode a plain open()
    # gives under the same umask, or other users and tools could not read the run's outputs
    old = os.umask(umask)
    try:
        atomic.write_text(tmp_path / "atomic.txt", "x")
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old)
    mode = lambda name: (tmp_path / name).stat().st_mode & 0o777  # noqa: E731
    assert mode("atomic.txt") == mode("plain.txt") == 0o666 & ~umask


def test_changed_inputs_recompute_without_asking(tmp_path):
    from fashion_stack.core.rundir import files_hash
    member_oof = tmp_path / "oof.parquet"
    member_oof.write_text("v1")
    unit = tmp_path / "stacker"
    unit.mkdir()
    mark_done(unit, "c1", "f1", inputs_hash=files_hash([member_oof]))
    assert is_done(unit, "c1", "f1", inputs_hash=files_hash([member_oof]))
    os.utime(member_oof, ns=(1, 1))  # the member was retrained: its file was replaced
    assert not is_done(unit, "c1", "f1", inputs_hash=files_hash([member_oof]))
    mark_done(unit, "c1", "f1", inputs_hash="x")
    with pytest.raises(StaleArtifactError):  # its own config changed: that still needs --redo
        is_done(unit, "c2", "f1", inputs_hash="y")


def test_derived_stage_skips_until_inputs_or_outputs_change(tmp_path):
    from fashion_stack.core.config import PipelineConfig
    from fashion_stack.core.context import StageContext
    from fashion_stack.core.rundir import RunDir, derived_stage
    source, target = tmp_path / "in.csv", tmp_path / "out.txt"
    source.write_text("a")
    calls = []

    @derived_stage("demo_stage", inputs=lambda ctx: [source], outputs=lambda ctx: [target])
    def stage(ctx):
        calls.append(1)
        target.write_text(source.read_text())
        return {"rows": 1}

    ctx = StageContext(config=PipelineConfig(), run=RunDir(tmp_path / "run"), data_dir=tmp_path)
    assert stage(ctx) == {"rows": 1}
    assert stage(ctx) == {"rows": 1, "up_to_date": True} and len(calls) == 1
    os.utime(source, ns=(5, 5))
    stage(ctx)
    target.unlink()
    stage(ctx)
    ctx.redo = {"demo_stage"}
    stage(ctx)
    assert len(calls) == 4
