"""Measured defaults for the members' compilation switches: XLA (jit_compile) and
steps_per_execution, on this machine's backend, from in-memory batches (the step alone).

    python -m benchmarks.bench_step_options [--backbones tiny_cnn:64,mobilenet_v2:96] [--rounds 5]

Variants are timed in interleaved rounds (a, b, c, a, b, c, ...) and reported as medians with
their ratio to the default (XLA off, 1 step per execution), so machine noise hits all alike.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VARIANTS = (("off", 1), ("on", 1), ("off", 8), ("on", 8))


def build(backbone: str, size: int, jit: str, spe: int, n_labels: int = 228):
    from fashion_stack.core.config import HardwareConfig, MemberConfig
    from fashion_stack.models import trainer
    from fashion_stack.models.devices import resolve_placement
    from fashion_stack.models.heads import build_member_model
    member = MemberConfig(name="bench", backbone=backbone, input_size=size, weights=None, augment=True,
                          hardware=HardwareConfig(jit_compile=jit, steps_per_execution=spe))
    placement = resolve_placement(member)
    model = build_member_model(member, n_labels, precision=placement.precision_policy)
    trainer._compile(model, member, 1e-4, 10_000, placement)
    return model


def time_epoch(model, images, labels, batch: int) -> float:
    started = time.perf_counter()
    model.fit(images, labels, batch_size=batch, epochs=1, verbose=0, shuffle=False)
    return time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbones", default="tiny_cnn:64,mobilenet_v2:96")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=16, help="steps per timed epoch")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    import keras
    rng = np.random.default_rng(0)
    print(f"backend {keras.backend.backend()}; batch {args.batch}, {args.steps} steps per timing, "
          f"{args.rounds} interleaved rounds, medians")
    print("| backbone | size | XLA | steps/execution | img/s | ratio to XLA off, 1 step |")
    print("|---|---|---|---|---|---|")
    for entry in args.backbones.split(","):
        backbone, size = entry.split(":")
        size = int(size)
        n = args.batch * args.steps
        images = rng.uniform(0, 255, (n, size, size, 3)).astype(np.float32)
        labels = (rng.random((n, 228)) < 0.04).astype(np.float32)
        models = {v: build(backbone, size, *v) for v in VARIANTS}
        for model in models.values():
            time_epoch(model, images[: args.batch * 8], labels[: args.batch * 8], args.batch)  # compile
        times = {v: [] for v in VARIANTS}
        for _ in range(args.rounds):
            for variant, model in models.items():
                times[variant].append(time_epoch(model, images, labels, args.batch))
        base = statistics.median(times[VARIANTS[0]])
        for variant in VARIANTS:
            median = statistics.median(times[variant])
            print(f"| {backbone} | {size} | {variant[0]} | {variant[1]} | {n / median:.0f} | {base / median:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
