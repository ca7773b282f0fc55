"""Decision rules: fit on 10,000 x 228 and predict on 40,000 x 228 synthetic probabilities, then
the per-image decoders' predict time at several sizes.

    .venv/bin/python -m benchmarks.bench_decision [--repeats 3] [--seed 0] [--sizes 10000,20000,40000]

The label space mirrors iMaterialist 2018 (228 labels in 8 groups; one category and one gender
per image, about 8 labels per image); truth is drawn from calibrated probabilities (see SyntheticLabels).
Times are the best of --repeats runs; ratios are against the global-threshold rule measured in
the same run. The F1 columns score the 40,000 held-out rows (the rules were fitted on the other
10,000), so they compare rules on equal footing but say nothing about real members.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from fashion_stack.core.metrics import micro_f1, samples_f1
from fashion_stack.ensemble.decision import RULES, make_rule

GROUP_SIZES = {"category": 105, "material": 34, "pattern": 28, "style": 21, "color": 21,
               "neckline": 11, "sleeve": 5, "gender": 3}  # the real 228-label map's groups
PREDICT_TARGET_S = 1.0
GROWTH_RULES = ("expected_f1", "gfm")  # the per-image decoders, whose cost is the one that grows


class SyntheticLabels:
    """A fixed label world (group layout, label popularity) from which images are drawn; the
    probabilities are calibrated by construction (each truth is drawn from its probability),
    as a stacker's should be, so expected-F1 decoding is on fair ground."""

    def __init__(self, rng: np.random.Generator):
        self.groups = np.concatenate([[name] * size for name, size in GROUP_SIZES.items()]).astype(object)
        self.exclusive = [np.flatnonzero(self.groups == name) for name in ("category", "gender")]
        self.others = np.flatnonzero(~np.isin(self.groups, ("category", "gender")))
        self.popularity = [np.log(rng.dirichlet(np.full(c.size, 0.5)) + 1e-4) for c in self.exclusive]
        rates = np.clip(rng.dirichlet(np.full(self.others.size, 0.5)) * 2.0, 1e-4, 0.9)
        self.base_logits = np.log(rates / (1 - rates))  # with the noise, about 8 labels per image in all (real: 8.02)

    def draw(self, n_images: int, rng: np.random.Generator) -> tuple:
        probs = np.zeros((n_images, self.groups.size))
        for columns, popularity in zip(self.exclusive, self.popularity):
            logits = popularity + rng.normal(0.0, 2.5, (n_images, columns.size))
            softmax = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs[:, columns] = softmax / softmax.sum(axis=1, keepdims=True)
        probs[:, self.others] = 1 / (1 + np.exp(-(self.base_logits + rng.normal(0.0, 2.0, (n_images, self.others.size)))))
        y_true = np.zeros(probs.shape, dtype=bool)
        rows = np.arange(n_images)
        for columns in self.exclusive:
            cumulative = probs[:, columns].cumsum(axis=1)
            picked = (cumulative < rng.random((n_images, 1)) * cumulative[:, -1:]).sum(axis=1)
            y_true[rows, columns[np.minimum(picked, columns.size - 1)]] = True
        y_true[:, self.others] = rng.random((n_images, self.others.size)) < probs[:, self.others]
        return probs.astype(np.float32), y_true


def best_time(fn, repeats: int) -> tuple:
    """(best wall seconds, result, CPU seconds of that repeat). The CPU time (this process, all
    threads) is the figure to read on a shared machine, where the wall time also counts the others."""
    times, result = [], None
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        result = fn()
        times.append((time.perf_counter() - start, time.process_time() - cpu_start))
    wall, cpu = min(times)
    return wall, result, cpu


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sizes", default="10000,20000,40000", help="rows for the predict-time growth table")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    world = SyntheticLabels(rng)
    groups = world.groups
    fit_probs, fit_true = world.draw(10_000, rng)
    test_probs, test_true = world.draw(40_000, rng)
    rows, fitted = [], {}
    for name in ["global"] + sorted(set(RULES) - {"global"}):
        params = {"groups": groups} if name == "group" else {}
        fit_s, rule, _ = best_time(lambda: make_rule(name, **params).fit(fit_probs, fit_true), args.repeats)
        fitted[name] = rule
        predict_s, predicted, predict_cpu = best_time(lambda: rule.predict(test_probs), args.repeats)
        counts = predicted.sum(axis=1)
        rows.append((name, fit_s, predict_s, predict_cpu, micro_f1(test_true, predicted),
                     samples_f1(test_true, predicted), f"{counts.min()}..{counts.max()}"))
    print_table(rows, fit_probs, test_probs, test_true, args.repeats)
    print_growth(world, rule_of={name: rule for name, rule in fitted.items() if name in GROWTH_RULES},
                 sizes=[int(n) for n in args.sizes.split(",")], repeats=args.repeats, rng=rng)


def print_growth(world, rule_of: dict, sizes: list, repeats: int, rng) -> None:
    """Predict time of the per-image decoders (expected_f1, gfm) at several sizes: how it grows."""
    print(f"\npredict time by rows (228 labels), best of {repeats}; x = time / time at {sizes[0]:,} rows")
    header = f"{'rule':<18}" + "".join(f"{n:>12,}" for n in sizes) + f"{'x at max':>10}"
    print(header)
    print("-" * len(header))
    matrices = [world.draw(n, rng)[0] for n in sizes]
    for name, rule in rule_of.items():
        measured = [best_time(lambda: rule.predict(probs), repeats) for probs in matrices]
        for kind, times in (("wall s", [m[0] for m in measured]), ("CPU s", [m[2] for m in measured])):
            print(f"{name + ' ' + kind:<18}" + "".join(f"{t:12.3f}" for t in times) + f"{times[-1] / times[0]:10.2f}")


def print_table(rows: list, fit_probs, test_probs, test_true, repeats: int) -> None:
    base_fit, base_predict = rows[0][1], rows[0][2]
    print(f"fit on {fit_probs.shape[0]:,} x {fit_probs.shape[1]}, predict on {test_probs.shape[0]:,} x "
          f"{test_probs.shape[1]}; best of {repeats}; ratios vs global; "
          f"true labels per image {test_true.sum(axis=1).mean():.2f}")
    header = f"{'rule':<12}{'fit s':>9}{'fit x':>8}{'predict s':>11}{'predict x':>11}{'CPU s':>8}{'< 1 s':>7}" \
             f"{'micro-F1':>10}{'samples-F1':>12}{'labels':>9}"
    print(header)
    print("-" * len(header))
    for name, fit_s, predict_s, predict_cpu, micro, samples, span in rows:
        print(f"{name:<12}{fit_s:9.3f}{fit_s / base_fit:8.2f}{predict_s:11.3f}{predict_s / base_predict:11.2f}"
              f"{predict_cpu:8.3f}{'yes' if predict_s < PREDICT_TARGET_S else 'no':>7}{micro:10.4f}{samples:12.4f}{span:>9}")


if __name__ == "__main__":
    main()
