"""The foundation stages through the CLI entry point, on a tiny demo dataset."""
import pandas as pd
import pytest

from fashion_stack import pipeline as run_pipeline
from fashion_stack.datasets.folds import read_folds
from fashion_stack.datasets.manifest import read_manifest


@pytest.fixture
def tiny_demo_args(tmp_path):
    return ["--run-dir", str(tmp_path / "run"), "--set", "demo.n_train=45", "--set", "demo.n_validation=15",
            "--set", "demo.n_test=12", "--set", "demo.image_size=48"]


def test_prepare_and_folds_on_the_demo_then_rerun_skips(tiny_demo_args, tmp_path, capsys):
    assert run_pipeline.main(tiny_demo_args + ["--stages", "download,prepare,folds"]) == 0
    run = tmp_path / "run"
    manifest = read_manifest(run / "manifest.parquet")
    assert manifest["split"].value_counts().to_dict() == {"train": 45, "validation": 15, "test": 12}
    assert set(manifest["status"]) == {"ok"}
    folds = read_folds(run / "folds.csv")
    pool = manifest[manifest["split"] != "test"]["imageId"]
    assert sorted(folds.index) == sorted(pool) and sorted(folds.unique()) == [0, 1, 2]
    assert (run / "config.yaml").exists() and (run / "env.json").exists()
    counts = pd.read_csv(run / "fold_label_counts.csv")
    assert len(counts) == 228 and (counts[["fold0", "fold1", "fold2"]].sum(axis=1) == counts["total"]).all()

    capsys.readouterr()
    assert run_pipeline.main(tiny_demo_args + ["--stages", "prepare,folds"]) == 0
    screen = capsys.readouterr().out
    assert screen.count("already done, skipped") == 2


def test_changed_folds_config_is_stale_until_redo(tiny_demo_args, tmp_path, capsys):
    assert run_pipeline.main(tiny_demo_args + ["--stages", "prepare,folds"]) == 0
    changed = tiny_demo_args + ["--set", "folds.seed=7", "--stages", "folds"]
    assert run_pipeline.main(changed) == 3
    assert "--redo" in capsys.readouterr().err
    assert run_pipeline.main(changed + ["--redo", "folds"]) == 0
