"""Peak memory per stage of the real competition config on the stand-in (500 images at 96 px).

    python -m benchmarks.bench_memory --imat-dir ../shared/data/imat2018 --out /tmp/mem [--set KEY=VALUE ...]
                                      [--counts 250,200,50] [--overlay smoke] [--trunk-weights null]

Builds benchmarks.competition_standin's stand-in (the real label map and label sets, images served
from 127.0.0.1), runs `configs/imaterialist2018.yaml` on it in a subprocess with every member at
96 px and one epoch (a member's memory does not grow with its epochs), and prints each stage's
wall time and peak resident memory as the pipeline recorded them (stage_times.json: the process's high-water mark, reset at each stage's
start, so each figure is that stage's own, or what the process still holds from earlier stages).
A stage whose units ran in child processes (the members' hardware.isolation "member", the default)
has peak_MB = the pipeline process's peak (process_MB) + the largest child's own peak (child_MB):
the children run one at a time, so that bounds what was resident at once. It counts twice the
pages both processes map from the same files (TensorFlow's libraries, about 0.65 GB), so the table
also gives tree_PSS_MB: every 0.5 s the benchmark sums the proportional set size (shared pages
divided among the processes sharing them) over the pipeline's whole process tree, and keeps each
stage's largest sum (the stage the log last said was starting; a sample can miss a peak shorter
than 0.5 s). --counts sets the stand-in's
train, validation and test images (default 250,200,50: 500 images). --overlay NAME (repeatable) puts
a shipped or given overlay under the measured one: `--overlay smoke` measures the rehearsal a user
runs first (the config shrunk by configs/overlays/smoke.yaml: batch 16, two workers).
The members train the way the config trains them with its ImageNet weights, offline: each trunk
randomly initialised (weights: random, as in the rehearsal overlay; the scores are meaningless, the
memory is the config's). --trunk-weights null trains every trunk from scratch instead: another
path, with more memory (every layer and every BatchNorm trains), which the config never runs.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd

from benchmarks.competition_standin import build_standin, standin_server

ROOT = Path(__file__).resolve().parent.parent
# an overlay (see --overlay): every member at 96 px, one epoch; batch sizes and the rest as configured
MEASURED = "every_member: {input_size: 96, head_epochs: 0, finetune_epochs: 1, tta_flip: false}\n"
CONFIG = "imaterialist2018"


def trunk_weight_overrides(trunk_weights: str) -> list:
    """--trunk-weights random (the default): every pretrained member's trunk randomly initialised and
    trained as the config trains it with its ImageNet weights (head phase, then the top blocks under a
    trunk whose BatchNorm runs in inference mode), offline, as the rehearsal overlay does. null:
    every trunk from scratch (one phase, every layer and every BatchNorm training), a path the
    config never runs."""
    if trunk_weights not in ("random", "null"):
        raise ValueError(f"--trunk-weights {trunk_weights!r}: use random or null")
    return [f"every_member.weights={trunk_weights}"]


def measure(imat_dir: Path, out: Path, overrides: list, counts=(250, 200, 50), overlays=(),
            trunk_weights: str = "random") -> pd.DataFrame:
    overlay = out / "measured.yaml"
    overlay.write_text(MEASURED)
    overrides = trunk_weight_overrides(trunk_weights) + list(overrides)  # the user's --set still wins
    with standin_server() as server:
        data = build_standin(out, imat_dir, server, *counts)
        args = [sys.executable, "-m", "fashion_stack", "run", "--config", CONFIG, "--data-dir", str(data),
                "--run-dir", str(out / "run")]
        for name in list(overlays) + [str(overlay)]:  # later overlays win: the measured one last
            args += ["--overlay", name]
        for override in overrides:
            args += ["--set", override]
        started = time.perf_counter()
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        with open(out / "pipeline.log", "w") as log:
            pipeline = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
            samples = TreeSampler(pipeline.pid, out / "pipeline.log")
            try:
                code = pipeline.wait()
            finally:
                samples.stop()
        wall = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"the pipeline failed (exit {code}); see {out / 'pipeline.log'}")
    from fashion_stack.pipeline import STAGES
    times = json.loads((out / "run" / "stage_times.json").read_text())
    table = pd.DataFrame([{"stage": name, "seconds": times[name]["seconds"], "peak_MB": times[name]["peak_memory_mb"],
                           # older runs recorded only the total (no children then)
                           "process_MB": times[name].get("process_peak_memory_mb", times[name]["peak_memory_mb"]),
                           "child_MB": times[name].get("child_peak_memory_mb"),
                           "tree_PSS_MB": samples.peaks.get(name)}
                          for name in STAGES if name in times])
    for column in ("child_MB", "tree_PSS_MB"):
        table[column] = table[column].astype("Int64")
    # the run's peak is the largest stage's: the kernel's own maximum (getrusage) is reset with the
    # high-water mark at each stage's start, so it cannot be read for the whole run
    table.loc[len(table)] = {"stage": "whole run", "seconds": round(wall, 1), "peak_MB": table["peak_MB"].max(),
                             "process_MB": table["process_MB"].max(), "child_MB": table["child_MB"].max(),
                             "tree_PSS_MB": max(samples.peaks.values(), default=None)}
    return table


STAGE_START = re.compile(r"INFO stage (\w+): starting")


class TreeSampler:
    """Every `interval_s`, the sum of Pss (/proc/PID/smaps_rollup) over a process and all its
    descendants, in a thread until stop(); `peaks`: the largest sum per stage, the stage being the
    one the pipeline's log last said was starting."""

    def __init__(self, root_pid: int, log_path: Path, interval_s: float = 0.5):
        self.root_pid, self.log_path, self.interval_s = root_pid, Path(log_path), interval_s
        self.peaks: dict = {}  # stage -> MB
        self._stage, self._offset = "start-up", 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            total = sum(_pss_kib(pid) for pid in _tree(self.root_pid)) / 1024
            self._follow_log()  # after the sum: a stage that started meanwhile gets the sample
            if total:
                self.peaks[self._stage] = max(self.peaks.get(self._stage, 0), round(total))
            self._stop.wait(self.interval_s)

    def _follow_log(self) -> None:
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except OSError:
            return
        cut = data.rfind(b"\n") + 1  # whole lines only; the rest is read again next time
        self._offset += cut
        starts = STAGE_START.findall(data[:cut].decode("utf-8", "replace"))
        if starts:
            self._stage = starts[-1]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _tree(root: int) -> list:
    children: dict = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:  # "pid (comm) state ppid ...": comm may hold spaces and parentheses
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


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
    parser.add_argument("--overlay", dest="overlays", action="append", default=[],
                        help="an overlay under the measured one (repeatable), e.g. smoke: the rehearsal")
    parser.add_argument("--trunk-weights", choices=("random", "null"), default="random",
                        help="random (default): random trunks trained on the config's pretrained path (head, then "
                             "top blocks, BatchNorm in inference mode), as the rehearsal overlay runs them; null: "
                             "every trunk from scratch (one phase, every layer and BatchNorm training)")
    parser.add_argument("--counts", type=parse_counts, default=(250, 200, 50),
                        help="the stand-in's train,validation,test images (default 250,200,50)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    table = measure(args.imat_dir, args.out, args.overrides, args.counts, args.overlays, args.trunk_weights)
    print(f"stand-in: {sum(args.counts)} images ({','.join(map(str, args.counts))} train,validation,test); "
          f"trunk weights: {args.trunk_weights}; overlays: {', '.join(args.overlays) or 'none'}")
    print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
