"""A members-stage run in its own process, for the tests that need one: several logical CPU devices
(they must be set before the backend starts), another Keras backend, or a real kill -9.

    python tests/scale_worker.py RUN_ROOT [--cpu-devices N] [--kill-at-step S] [--steps-log FILE]
                                  [--member key=value ...]

Makes (or reuses) the tiny synthetic run under RUN_ROOT (tests/models_synthetic.py), trains the
member on it and prints a JSON summary on its last line. --kill-at-step sends SIGKILL to this
process after that many training steps in total (counted across epochs), as `kill -9` would.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]


def parse_args(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("--cpu-devices", type=int, default=1)
    parser.add_argument("--kill-at-step", type=int, default=0)
    parser.add_argument("--steps-log", type=Path)
    parser.add_argument("--member", action="append", default=[], help="member override key=value (YAML value)")
    parser.add_argument("--n-train", type=int, default=24)
    parser.add_argument("--k", type=int, default=2)
    return parser.parse_args(argv)


def split_cpu(devices: int) -> None:
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if devices <= 1 or backend != "tensorflow":
        return  # JAX: the test sets XLA_FLAGS=--xla_force_host_platform_device_count=N
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)


def main(argv=None) -> int:
    args = parse_args(argv)
    split_cpu(args.cpu_devices)
    import keras
    import yaml

    from fashion_stack.models.stage import run_members
    from models_synthetic import make_run, tiny_member

    overrides = {}
    for text in args.member:
        key, value = text.split("=", 1)
        parsed = yaml.safe_load(value)
        if isinstance(parsed, bool) and key in ("data_parallel", "jit_compile"):
            parsed = "on" if parsed else "off"  # YAML 1.1 reads on/off as booleans (the config loader maps them too)
        overrides[key] = parsed
    root = args.root
    if (root / "run" / "folds.csv").exists():
        from fashion_stack.core.context import StageContext
        from fashion_stack.core.config import PipelineConfig
        from fashion_stack.core.rundir import RunDir
        config = PipelineConfig()
        config.folds.k = args.k
        ctx = StageContext(config=config, run=RunDir(root / "run"), data_dir=root / "data")
    else:
        ctx = make_run(root, n_train=args.n_train, k=args.k)
    ctx.config.members = [tiny_member("tiny", **overrides)]

    class StepLog(keras.callbacks.Callback):
        """Appends one line per trained step (flushed), and kills the process when told to."""

        def __init__(self):
            super().__init__()
            self.steps = 0

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1
            if args.steps_log:
                with open(args.steps_log, "a") as handle:
                    handle.write(f"{self.steps} {float(logs.get('loss', float('nan'))):.6f}\n")
            if args.kill_at_step and self.steps == args.kill_at_step:
                os.kill(os.getpid(), signal.SIGKILL)

    from fashion_stack.models.stage import load_stage_data, run_member
    data = load_stage_data(ctx)
    summary = run_member(ctx, ctx.config.members[0], data, callbacks=[StepLog()])
    done = json.loads((ctx.run.fold_dir("tiny", 0) / "DONE.json").read_text())
    print(json.dumps({"backend": keras.backend.backend(), "summary": summary, "fold0": done}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
