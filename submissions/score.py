"""Score a submission against a solution file in the same format (image_id,label_id), as the
leaderboard would: micro-F1 (the competition's metric) and sample-averaged F1.

    python -m fashion_stack.submissions.score SUBMISSION.csv SOLUTION.csv

The built-in demo writes its hidden test labels as test_solution.csv, so a demo run can be scored
end to end; a real competition's solution stays on Kaggle."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from fashion_stack.core.metrics import micro_f1, samples_f1


def read_label_file(path: str | Path) -> pd.Series:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if list(frame.columns) != ["image_id", "label_id"]:
        raise ValueError(f"{path}: header must be image_id,label_id, is {','.join(frame.columns)}")
    ids = frame["image_id"].str.strip()
    dupes = ids[ids.duplicated()].unique()
    if len(dupes):
        raise ValueError(f"{path}: duplicated image_id(s) {list(dupes[:10])}")
    return pd.Series([labels.split() for labels in frame["label_id"]], index=ids)


def score_submission(submission: str | Path, solution: str | Path) -> dict:
    predicted, truth = read_label_file(submission), read_label_file(solution)
    missing = truth.index.difference(predicted.index)
    if len(missing):
        raise ValueError(f"{submission}: no row for {len(missing)} solution image(s), e.g. {list(missing[:5])}")
    predicted = predicted.loc[truth.index]
    labels = sorted({label for row in pd.concat([predicted, truth]) for label in row})
    column = {label: j for j, label in enumerate(labels)}

    def encode(rows):
        matrix = np.zeros((len(rows), len(labels)), dtype=bool)
        for i, row in enumerate(rows):
            matrix[i, [column[label] for label in row]] = True
        return matrix
    y_true, y_pred = encode(truth), encode(predicted)
    return {"micro_f1": micro_f1(y_true, y_pred), "samples_f1": samples_f1(y_true, y_pred), "images": len(truth)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("submission")
    parser.add_argument("solution")
    args = parser.parse_args(argv)
    try:
        scores = score_submission(args.submission, args.solution)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"micro-F1 {scores['micro_f1']:.4f}  sample-F1 {scores['samples_f1']:.4f}  ({scores['images']} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
