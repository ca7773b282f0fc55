"""The default run directory is relative (runs/<config name>, under the working directory), as the
README's demo command and an installed `fashion-stack run` use it."""
from __future__ import annotations

from fashion_stack import pipeline as run_pipeline


def test_a_relative_run_directory_runs_the_first_stages_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "tiny.yaml"
    config.write_text("name: tiny\ndemo: {n_train: 12, n_validation: 6, n_test: 6, image_size: 32}\n")
    code = run_pipeline.main(["--config", str(config), "--stages", "download,prepare,folds"])
    assert code == 0
    assert (tmp_path / "runs" / "tiny" / "manifest.parquet").is_file()
    assert (tmp_path / "runs" / "tiny" / "folds.csv").is_file()
