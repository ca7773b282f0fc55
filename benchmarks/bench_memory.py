"""Peak memory per stage of the real competition config on the stand-in (500 images at 96 px).

    python -m benchmarks.bench_memory --imat-dir ../shared/data/imat2018 --out /tmp/mem [--set KEY=VALUE ...]
                                      [--counts 250,200,50]

Builds benchmarks.competition_standin's stand-in (the real label map and label sets, images served
from 127.0.0.1), runs `configs/imaterialist2018.yaml` on it in a subprocess with every member at
96 px, no pretrained weights (the stand-in machine is offline) and one epoch (a member's memory does
not grow with its epochs), and prints each stage's wall time and peak resident memory as the
pipeline recorded them (stage_times.json: the process's high-water mark, reset at each stage's
start, so each figure is that stage's own, or what the process still holds from earlier stages).
A stage whose units ran in child processes (the members' hardware.isolation "member", the default)
has peak_MB = the pipeline process's peak (process_MB) + the largest child's own peak (child_MB):
the children run one at a time, so that bounds what was resident at once. --counts sets the
stand-in's train, validation and test images (default 250,200,50: 500 images).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from benchmarks.competition_standin import build_standin, standin_server

ROOT = Path(__file__).resolve().parent.parent
# an overlay (see --overlay): every member at 96 px, offline, one epoch; batch sizes and the rest as configured
MEASURED = ("every_member: {input_size: 96, weights: null, head_epochs: 0, finetune_epochs: 1, "
            "tta_flip: false}\n")


def measure(imat_dir: Path, out: Path, overrides: list, counts=(250, 200, 50)) -> pd.DataFrame:
    overlay = out / "measured.yaml"
    overlay.write_text(MEASURED)
    with standin_server() as server:
        data = build_standin(out, imat_dir, server, *counts)
        args = [sys.executable, "-m", "fashion_stack", "run", "--config", "imaterialist2018", "--data-dir", str(data),
                "--run-dir", str(out / "run"), "--overlay", str(overlay)]
        for override in overrides:
            args += ["--set", override]
        started = time.perf_counter()
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        with open(out / "pipeline.log", "w") as log:
            code = subprocess.call(args, env=env, stdout=log, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"the pipeline failed (exit {code}); see {out / 'pipeline.log'}")
    from fashion_stack.pipeline import STAGES
    times = json.loads((out / "run" / "stage_times.json").read_text())
    table = pd.DataFrame([{"stage": name, "seconds": times[name]["seconds"], "peak_MB": times[name]["peak_memory_mb"],
                           # older runs recorded only the total (no children then)
                           "process_MB": times[name].get("process_peak_memory_mb", times[name]["peak_memory_mb"]),
                           "child_MB": times[name].get("child_peak_memory_mb")}
                          for name in STAGES if name in times])
    table["child_MB"] = table["child_MB"].astype("Int64")
    # the run's peak is the largest stage's: the kernel's own maximum (getrusage) is reset with the
    # high-water mark at each stage's start, so it cannot be read for the whole run
    table.loc[len(table)] = {"stage": "whole run", "seconds": round(wall, 1), "peak_MB": table["peak_MB"].max(),
                             "process_MB": table["process_MB"].max(), "child_MB": table["child_MB"].max()}
    return table


def parse_counts(text: str) -> tuple:
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        counts = ()
    if len(counts) != 3 or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"--counts {text!r}: give three positive numbers, train,validation,test")
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--imat-dir", type=Path, default=ROOT.parent / "shared" / "data" / "imat2018")
    parser.add_argument("--out", type=Path, required=True, help="an empty folder for the stand-in and its run")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="more config overrides")
    parser.add_argument("--counts", type=parse_counts, default=(250, 200, 50),
                        help="the stand-in's train,validation,test images (default 250,200,50)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    table = measure(args.imat_dir, args.out, args.overrides, args.counts)
    print(f"stand-in: {sum(args.counts)} images ({','.join(map(str, args.counts))} train,validation,test)")
    print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
