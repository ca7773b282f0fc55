"""The probe member's solver against scikit-learn, same data, same C, same run: wall time of one
fit of every label, the largest difference in predicted probability, and how the cost grows with
the number of photos.

    python -m benchmarks.bench_probe [--rows 500,1000,2000] [--dim 1280] [--labels 58] [--c 0.001]

Data: synthetic embeddings shaped like a frozen CNN's (standardised, a few strong directions
carrying most of the variance plus noise, so the features are strongly correlated as pooled
ImageNet features are) and labels of very different rates (1% to 50%) driven by those directions.
The probe fits all labels as one problem in the rows' orthogonal basis with a diagonal
preconditioner (models/probe.py); scikit-learn's LogisticRegression (lbfgs, tol 1e-4, its
defaults) fits one label at a time on the same standardised features. The last two columns say which
is nearer the true optimum: each against scikit-learn at tol 1e-10 on three labels.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.linear_model import LogisticRegression

from fashion_stack.models.probe import _fit_labels


def synthetic(rows: int, dim: int, labels: int, seed: int = 0) -> tuple:
    rng = np.random.default_rng(seed)
    factors = rng.normal(size=(rows, 16)) * np.geomspace(4, 0.5, 16)
    x = factors @ rng.normal(size=(16, dim)) + rng.normal(size=(rows, dim))
    z = ((x - x.mean(axis=0)) / x.std(axis=0)).astype(np.float32)
    score = factors @ rng.normal(size=(16, labels)) + rng.normal(size=(rows, labels)) * 2
    rates = np.geomspace(0.01, 0.5, labels)
    cut = np.array([np.quantile(score[:, j], 1 - rate) for j, rate in enumerate(rates)])
    y = (score > cut).astype(np.float64)
    return z, y


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="500,1000,2000")
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--labels", type=int, default=58)
    parser.add_argument("--c", type=float, default=0.001)
    args = parser.parse_args(argv)
    print(f"{'rows':>6} {'probe s':>8} {'sklearn s':>10} {'ratio':>6} {'max |dp|':>9}   "
          f"{'vs a tight fit (3 labels): probe':>33} {'sklearn':>8}")
    for rows in [int(r) for r in args.rows.split(",")]:
        z, y = synthetic(rows, args.dim, args.labels)
        start = time.perf_counter()
        coef, intercept = _fit_labels(z, y, args.c)
        ours = time.perf_counter() - start
        start = time.perf_counter()
        reference = np.column_stack([LogisticRegression(C=args.c, max_iter=1000).fit(z, y[:, j]).predict_proba(z)[:, 1]
                                     for j in range(y.shape[1])])
        theirs = time.perf_counter() - start
        probs = 1 / (1 + np.exp(-(z @ coef + intercept)))
        # which of the two is nearer the optimum: scikit-learn at a tight tolerance on the rarest,
        # the middle and the commonest label
        picked = [0, y.shape[1] // 2, y.shape[1] - 1]
        tight = np.column_stack([LogisticRegression(C=args.c, tol=1e-10, max_iter=20000).fit(z, y[:, j])
                                 .predict_proba(z)[:, 1] for j in picked])
        print(f"{rows:>6} {ours:>8.2f} {theirs:>10.2f} {theirs / ours:>5.1f}x {np.abs(probs - reference).max():>9.1e}   "
              f"{np.abs(probs[:, picked] - tight).max():>33.1e} {np.abs(reference[:, picked] - tight).max():>8.1e}",
              flush=True)


if __name__ == "__main__":
    main()
