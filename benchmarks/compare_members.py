"""Members of one or more run directories side by side on the same folds: each fold's OOF micro-F1
(best global threshold on that fold, as the members stage scores it), the pooled OOF, and the
fold-paired difference against a baseline member (mean and a 95% t interval, k - 1 degrees of freedom).

    python -m benchmarks.compare_members RUN:MEMBER [RUN:MEMBER ...] [--baseline RUN:MEMBER] [--plot PNG]

The runs must share their folds (the same folds.csv hash); a member from other folds is refused.
Every row but the baseline is a candidate: the best one's margin is a maximum over the rows.
--plot draws each row's fold-paired difference and interval as a bar chart (reports.plots.interval_bars).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from fashion_stack.core import atomic
from fashion_stack.ensemble.comparison import fold_paired


def member_folds(run_dir: Path, member: str) -> dict:
    """{"folds": [fold micro-F1 ...], "oof": pooled, "folds_hash": ...} from the run's DONE records."""
    member_dir = Path(run_dir) / "members" / member
    scores_file = member_dir / "scores.json"
    if not scores_file.is_file():
        raise SystemExit(f"{scores_file}: missing; run the members stage for {member!r} in {run_dir} first")
    units = sorted(p for p in member_dir.glob("fold*") if (p / "DONE.json").is_file())
    if not units:
        raise SystemExit(f"{member_dir}: no finished fold units (fold*/DONE.json)")
    records = [atomic.read_json(p / "DONE.json") for p in units]
    hashes = {r["folds_hash"] for r in records}
    if len(hashes) != 1:
        raise SystemExit(f"{member_dir}: fold units from different folds ({sorted(hashes)}); rerun with --redo members")
    scores = atomic.read_json(scores_file)
    return {"folds": [r["scores"]["micro_f1@best"] for r in records], "oof": scores["oof"]["micro_f1@best"],
            "folds_hash": hashes.pop(), "epochs": [r.get("chosen_epoch") for r in records]}


def parse(spec: str) -> tuple:
    run, sep, member = spec.rpartition(":")
    if not sep or not run or not member:
        raise SystemExit(f"{spec!r}: expected RUN_DIR:MEMBER")
    return Path(run), member


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("members", nargs="+", help="RUN_DIR:MEMBER")
    parser.add_argument("--baseline", help="RUN_DIR:MEMBER (default: the first)")
    parser.add_argument("--plot", help="PNG path: each row's difference against the baseline with its interval")
    args = parser.parse_args(argv)
    specs = [parse(s) for s in args.members]
    baseline_spec = parse(args.baseline) if args.baseline else specs[0]
    if baseline_spec not in specs:
        specs.insert(0, baseline_spec)
    rows = {spec: member_folds(*spec) for spec in specs}
    base = rows[baseline_spec]
    other = [spec for spec, row in rows.items() if row["folds_hash"] != base["folds_hash"]]
    if other:
        raise SystemExit("not on the baseline's folds: " + ", ".join(f"{r}:{m}" for r, m in other))
    print(f"| member (run) | fold micro-F1 | mean of folds | OOF | vs {baseline_spec[1]}: mean [95% CI] |")
    print("|---|---|---|---|---|")
    differences = {}  # member -> (mean, low, high), in the table's order
    for (run, member), row in sorted(rows.items(), key=lambda kv: -kv[1]["oof"]):
        if (run, member) == baseline_spec:
            paired = "baseline"
        else:
            differences[member] = fold_paired(np.subtract(row["folds"], base["folds"]))
            paired = "{:+.4f} [{:+.4f}, {:+.4f}]".format(*differences[member])
        print(f"| {member} ({run.name}) | {' '.join(f'{f:.4f}' for f in row['folds'])} | "
              f"{np.mean(row['folds']):.4f} | {row['oof']:.4f} | {paired} |")
    if args.plot and differences:
        plot_differences(args.plot, differences, baseline_spec[1])
        print(f"plot: {args.plot}")
    return 0


def plot_differences(path, differences: dict, baseline: str) -> Path:
    """Each row's fold-paired micro-F1 difference against the baseline, with its 95% interval."""
    from fashion_stack.reports.plots import interval_bars  # matplotlib only when a plot is asked for
    names = list(differences)
    mean, low, high = (np.array([differences[n][i] for n in names]) for i in range(3))
    return interval_bars(path, names, mean, low, high, xlabel="micro-F1 difference: fold-paired mean, 95% t interval",
                         title=f"against {baseline}" + (f"\n(the best bar is a maximum over {len(names)} candidates)"
                                                        if len(names) > 1 else ""))


if __name__ == "__main__":
    sys.exit(main())
