"""Training step time with augmentation on, on the JAX backend: the jit-safe ImageAugment compiled
(the default now) against the old Keras augmentation layers, whose RandomZoom refuses jit, so the
step ran eagerly, op by op. Same model (InceptionV3, weights none, 228 sigmoid outputs), size and
batch; each variant in its own process.

    .venv/bin/python -m benchmarks.bench_augment_step                 # InceptionV3 at 75 px, batch 16
    .venv/bin/python -m benchmarks.bench_augment_step --size 96 --batch 32 --steps 5
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {  # key: (row name, augmentation, jit)
    "before": ("old layers, eager (before)", "keras_layers", False),
    "eager": ("ImageAugment, eager", "image_augment", False),
    "now": ("ImageAugment, jitted (now)", "image_augment", True),
}


def old_augmentation_layers(seed: int) -> list:
    """The augmentation the members used before ImageAugment (kept here only to measure it)."""
    from keras import layers

    return [
        layers.RandomFlip("horizontal", seed=seed),
        layers.RandomZoom(height_factor=(-0.2, 0.0), fill_mode="reflect", seed=seed + 1),
        layers.RandomBrightness(0.08, value_range=(0, 255), seed=seed + 2),
        layers.RandomContrast(0.1, value_range=(0, 255), seed=seed + 3),
    ]


def measure(augmentation: str, jit: bool, size: int, batch: int, steps: int, warmup: int) -> dict:
    import keras
    import numpy as np

    from fashion_stack.models.inputs import augmentation_layers

    inputs = keras.Input((size, size, 3))
    x = inputs
    for layer in (augmentation_layers(0) if augmentation == "image_augment" else old_augmentation_layers(0)):
        x = layer(x)
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(x)
    trunk = keras.applications.InceptionV3(include_top=False, weights=None, input_shape=(size, size, 3))
    x = keras.layers.GlobalAveragePooling2D()(trunk(x))
    model = keras.Model(inputs, keras.layers.Dense(228, activation="sigmoid")(x))
    model.compile(keras.optimizers.Adam(1e-4), "binary_crossentropy", jit_compile=jit)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    labels = (rng.random((batch, 228)) < 0.04).astype(np.float32)
    started = time.perf_counter()
    for _ in range(warmup):
        model.train_on_batch(images, labels)
    first = time.perf_counter() - started
    started, cpu_started = time.perf_counter(), time.process_time()
    for _ in range(steps):
        model.train_on_batch(images, labels)
    # CPU seconds (all threads) as well as wall: on a shared machine the wall time is mostly the others' load
    return {"backend": keras.backend.backend(), "jit": bool(model.jit_compile), "warmup_s": first,
            "s_per_step": (time.perf_counter() - started) / steps,
            "cpu_s_per_step": (time.process_time() - cpu_started) / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=75)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1] == "jit", args.size, args.batch, args.steps, args.warmup)))
        return
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    print(f"InceptionV3 at {args.size} px, weights none, batch {args.batch}, JAX on CPU; "
          f"{args.steps} timed steps after {args.warmup} warm-up (compile)")
    print("| augmentation, step | jit | warm-up s | s/step | x first row | CPU s/step | x first row (CPU) |")
    print("|---|---|---|---|---|---|---|")
    before = None
    for name, augmentation, jit in (VARIANTS[key] for key in args.variants):
        command = [sys.executable, "-m", "benchmarks.bench_augment_step", "--one", augmentation, "jit" if jit else "eager",
                   "--size", str(args.size), "--batch", str(args.batch), "--steps", str(args.steps),
                   "--warmup", str(args.warmup)]
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
        if done.returncode != 0:
            print(f"| {name} | failed: {done.stderr.strip().splitlines()[-1][:200]} | | | | | |")
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        before = before or row
        print(f"| {name} | {row['jit']} | {row['warmup_s']:.1f} | {row['s_per_step']:.2f} | "
              f"{before['s_per_step'] / row['s_per_step']:.1f} | {row['cpu_s_per_step']:.2f} | "
              f"{before['cpu_s_per_step'] / row['cpu_s_per_step']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
