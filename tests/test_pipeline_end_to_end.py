"""The whole CLI on a tiny demo: data to a validated submission and a report, then a rerun that
does nothing, then a new member that trains alone while only the stages after it recompute."""
import json
import subprocess
import sys

import pytest

from fashion_stack import pipeline as run_pipeline
from fashion_stack.core.config import PROJECT_ROOT
from fashion_stack.datasets.demo import demo_cache_dir
from fashion_stack.core.config import load_config, parse_override

pytestmark = pytest.mark.integration  # runs the pipeline as a user does, in subprocesses

pytest.importorskip("keras")

TINY = ["demo.n_train=45", "demo.n_validation=15", "demo.n_test=12", "demo.image_size=48", "folds.k=2",
        "stack.stackers=[mean, xgboost]", "decision.rules=[global, expected_f1, group]",
        "ablation.bootstrap=50"]


def member(name, size, epochs=2, seed=0):
    return (f"members=[{{name: {name}, backbone: tiny_cnn, input_size: {size}, weights: null, "
            f"head_epochs: 0, finetune_epochs: {epochs}, seed: {seed}}}]")


def args(run_dir, members):
    out = ["--run-dir", str(run_dir)]
    for override in TINY + [members]:
        out += ["--set", override]
    return out


def test_demo_end_to_end_rerun_and_added_member(tmp_path, capsys):
    run = tmp_path / "run"
    one = member("cnn_a", 32)
    assert run_pipeline.main(args(run, one)) == 0
    screen = capsys.readouterr().out
    assert "Submission:" in screen and "Report:" in screen and "Chosen:" in screen
    assert (run / "report" / "index.html").exists() and (run / "report" / "ablation.csv").exists()

    config = load_config(None, [parse_override(o) for o in TINY])
    test_json = demo_cache_dir(config.demo) / "test.json"
    verdict = subprocess.run([sys.executable, "-m", "fashion_stack.submissions.validate", str(run / "submission.csv"),
                              "--test", str(test_json), "--label-map", str(test_json.parent / "label_map.csv")],
                             cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert verdict.returncode == 0 and "valid: 12 rows" in verdict.stdout

    assert run_pipeline.main(args(run, one)) == 0
    assert "Nothing to do" in capsys.readouterr().out

    two = one.replace("]", ", {name: cnn_b, backbone: tiny_cnn, input_size: 40, weights: null, "
                           "head_epochs: 0, finetune_epochs: 2, seed: 1}]")
    first_fold = json.loads((run / "members" / "cnn_a" / "fold0" / "DONE.json").read_text())
    assert run_pipeline.main(args(run, two)) == 0
    screen = capsys.readouterr().out
    assert json.loads((run / "members" / "cnn_a" / "fold0" / "DONE.json").read_text()) == first_fold
    assert (run / "members" / "cnn_b" / "oof.parquet").exists()
    assert "Nothing to do" not in screen
    stack_members = json.loads((run / "stages" / "features" / "DONE.json").read_text())["summary"]["member_names"]
    assert stack_members == ["cnn_a", "cnn_b"]
    assert "cnn_b" in (run / "report" / "ablation.csv").read_text()
