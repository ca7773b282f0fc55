"""Fold balance on the real iMaterialist validation labels: multilabel-stratified vs plain KFold.

    python -m benchmarks.bench_folds [--k 5] [--seeds 3]

Prints per-label fold-proportion deviation (relative to the pool rate) for both, and their ratio.
Needs ../shared/data/imat2018."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from fashion_stack.core.labels import LabelSpace
from fashion_stack.datasets.competition import read_split
from fashion_stack.datasets.folds import assign_folds, proportion_deviation

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "imat2018"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--data", type=Path, default=SHARED)
    args = parser.parse_args(argv)
    if not args.data.exists():
        print(f"needs the real iMaterialist files in {args.data}", file=sys.stderr)
        return 2
    label_space = LabelSpace.from_csv(args.data / "label_map_228.csv")
    split = read_split(args.data / "validation.json", "validation", label_space)
    labels = split.label_matrix(label_space)
    rows = []
    for seed in range(args.seeds):
        for stratified in (True, False):
            fold_of = assign_folds(labels, args.k, seed, stratified=stratified)
            rows.append({"method": "multilabel-stratified" if stratified else "plain KFold", "seed": seed,
                         **proportion_deviation(labels, fold_of)})
    table = pd.DataFrame(rows).groupby("method")[["mean_rel_dev", "max_rel_dev", "empty_cells"]].mean()
    table["mean_rel_dev / plain"] = table["mean_rel_dev"] / table.loc["plain KFold", "mean_rel_dev"]
    print(f"{len(labels)} images, {labels.shape[1]} labels, k={args.k}, mean over {args.seeds} seeds")
    print(table.to_string(float_format=lambda v: f"{v:.4f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
