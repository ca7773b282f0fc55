import subprocess
import sys

import pytest

from fashion_stack.core.config import PROJECT_ROOT
from fashion_stack import pipeline as run_pipeline

pytestmark = pytest.mark.integration  # runs the pipeline as a user does, in subprocesses


def cli(*args):
    return subprocess.run([sys.executable, "run_pipeline.py", *args], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_help_lists_every_stage_and_what_it_writes():
    out = cli("--help")
    assert out.returncode == 0
    for name in run_pipeline.STAGES:
        assert f"  {name} " in out.stdout
    assert "manifest.parquet" in out.stdout and "submission.csv" in out.stdout


def test_unknown_stage_is_an_error_listing_valid_ones():
    out = cli("--stages", "prepare,fold")
    assert out.returncode == 2
    assert "unknown stage(s) ['fold']" in out.stderr and "folds" in out.stderr


def test_unknown_config_key_names_it(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nfolds:\n  kk: 2\n")
    out = cli("--config", str(bad), "--stages", "folds")
    assert out.returncode == 2 and "folds.kk" in out.stderr


def test_missing_data_dir(tmp_path):
    out = cli("--config", "configs/ccp.yaml", "--data-dir", str(tmp_path / "nope"), "--stages", "prepare")
    assert out.returncode == 2 and "does not exist" in out.stderr
