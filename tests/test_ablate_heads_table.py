"""The frozen ablation's table and chart: rows against avg/stretch/224, fold-paired, best first."""
from types import SimpleNamespace

import numpy as np

from benchmarks.ablate_heads import BASELINE, print_table
from fashion_stack.ensemble.comparison import fold_paired


def test_table_and_chart_measure_every_row_against_the_baseline(tmp_path, capsys):
    results = {
        BASELINE: {"folds": [0.56, 0.565, 0.558], "oof": 0.560},
        ("avg", "pad", "320x224"): {"folds": [0.575, 0.58, 0.573], "oof": 0.576},
        ("csra", "stretch", "224"): {"folds": [0.553, 0.556, 0.552], "oof": 0.554},
    }
    base = SimpleNamespace(backbone="mobilenet_v2", frozen_epochs=40, learning_rate=1e-3)
    print_table(results, tmp_path, base)
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| avg") or line.startswith("| csra")]
    assert [r.split(" | ")[1:3] for r in rows] == [["pad", "320x224"], ["stretch", "224"], ["stretch", "224"]]
    mean, low, high = fold_paired(np.subtract([0.575, 0.58, 0.573], [0.56, 0.565, 0.558]))
    assert f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]" in rows[0]
    assert "a maximum over 3 candidates" in out and "avg / pad / 320x224" in out
    assert (tmp_path / "vs_baseline.png").read_bytes()[:4] == b"\x89PNG"


def test_no_chart_without_the_baseline_row(tmp_path, capsys):
    print_table({("avg", "pad", "224"): {"folds": [0.5, 0.5, 0.5], "oof": 0.5}}, tmp_path,
                SimpleNamespace(backbone="m", frozen_epochs=1, learning_rate=1e-3))
    assert not (tmp_path / "vs_baseline.png").exists()
    assert "| avg | pad | 224 |" in capsys.readouterr().out
