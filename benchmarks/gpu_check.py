"""The prepared GPU check: a member's training and inference images/s on 1 device and on all of
them, and the reader's images/s alone, on synthetic JPEGs on local disk. Meant for a GPU machine
(run by benchmarks/gpu_check.sh, under 10 minutes); `--quick` runs the same code on a CPU with a
tiny model, which is how it is tested.

    KERAS_BACKEND=jax python -m benchmarks.gpu_check [--backbone inception_v3 --size 299
        --precision bfloat16 --images 4096 --steps 30 --batch 64] [--quick]

Training is timed twice: from in-memory batches (the accelerator's own rate) and from the reader
(end to end: is the input pipeline keeping up?). The first steps compile and are not timed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_jpegs(folder: Path, count: int, seed: int = 0) -> list:
    """Photo-like JPEGs (smooth colour fields, a few shapes, noise) in the competition's sizes:
    stored at up to 299 px on the long side, portrait and landscape."""
    from PIL import Image, ImageDraw
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(count):
        path = folder / f"{n}.jpg"
        paths.append(str(path))
        if path.exists():
            continue
        width, height = (int(v) for v in rng.choice([(299, 224), (224, 299), (299, 299), (200, 299)]))
        base = np.linspace(rng.integers(0, 255, 3), rng.integers(0, 255, 3), height)[:, None, :]
        pixels = np.clip(np.broadcast_to(base, (height, width, 3)) + rng.normal(0, 12, (height, width, 3)), 0, 255)
        image = Image.fromarray(pixels.astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x, y = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
            draw.ellipse([x, y, x + int(rng.integers(20, 120)), y + int(rng.integers(20, 120))],
                         fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        image.save(path, quality=90)
    return paths


def reader_rate(paths: list, size: int, batch: int, workers: int) -> dict:
    from fashion_stack.models.inputs import prediction_batches
    rates = []
    for _ in range(2):  # the second pass reads from the page cache, as a long epoch mostly does
        started, cpu = time.perf_counter(), _cpu_seconds()
        count = sum(len(b) for b in prediction_batches(paths, size, "pad", batch, reader="auto", workers=workers))
        seconds = time.perf_counter() - started
        rates.append({"img_per_s": count / seconds, "img_per_cpu_s": count / max(1e-9, _cpu_seconds() - cpu)})
    return {"workers": workers, **rates[-1], "first_pass_img_per_s": rates[0]["img_per_s"]}


def _cpu_seconds() -> float:
    """CPU seconds of this process and its live children (the decode workers stay alive between
    batches, so getrusage's RUSAGE_CHILDREN, which counts only finished ones, would miss them)."""
    tick = os.sysconf("SC_CLK_TCK")
    me, total = os.getpid(), 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == me or int(fields[1]) == me:  # fields[1]: the parent's pid
            total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return total


def train_and_infer(args, paths: list, labels: np.ndarray, devices: str) -> dict:
    import keras
    from fashion_stack.core.config import HardwareConfig, MemberConfig
    from fashion_stack.models import trainer
    from fashion_stack.models.devices import placement_scope, resolve_placement
    from fashion_stack.models.heads import build_member_model
    from fashion_stack.models.inputs import training_batches

    member = MemberConfig(name="check", backbone=args.backbone, input_size=args.size, weights=None,
                          batch_size=args.batch, augment=True,
                          hardware=HardwareConfig(mixed_precision=args.precision, jit_compile="auto",
                                                  data_parallel="on" if devices == "all" else "off"))
    placement = resolve_placement(member)
    global_batch = args.batch * placement.replicas
    with placement_scope(placement):
        model = build_member_model(member, labels.shape[1], precision=placement.precision_policy)
        trainer._compile(model, member, 1e-4, 10_000, placement)
        rng = np.random.default_rng(0)
        images = rng.uniform(0, 255, (global_batch, args.size, args.size, 3)).astype(np.float32)
        targets = labels[:global_batch]
        started = time.perf_counter()
        model.train_on_batch(images, targets)  # compiles
        compile_s = time.perf_counter() - started
        for _ in range(2):
            model.train_on_batch(images, targets)
        started = time.perf_counter()
        for _ in range(args.steps):
            loss = model.train_on_batch(images, targets)
        float(np.asarray(loss if np.ndim(loss) == 0 else loss[0]))  # wait for the device
        memory_rate = args.steps * global_batch / (time.perf_counter() - started)

        def epoch(number):
            return training_batches(paths, labels, args.size, "pad", global_batch, seed=0, epoch=number,
                                    drop_remainder=True, reader="auto", workers=args.workers)
        model.fit(epoch(0), steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)  # fit's own compile
        data = epoch(1)
        steps = min(args.steps, len(data))
        started = time.perf_counter()
        model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
        reader_train_rate = steps * global_batch / (time.perf_counter() - started)

        model.predict_on_batch(images)
        started = time.perf_counter()
        for _ in range(args.steps):
            out = model.predict_on_batch(images)
        np.asarray(out)
        infer_rate = args.steps * global_batch / (time.perf_counter() - started)
    return {"devices": placement.replicas, "kind": placement.kind, "precision": placement.precision_policy,
            "jit": placement.jit_compile, "global_batch": global_batch, "compile_s": compile_s,
            "train_img_per_s": memory_rate, "train_from_reader_img_per_s": reader_train_rate,
            "infer_img_per_s": infer_rate}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="inception_v3")
    parser.add_argument("--size", type=int, default=299)
    parser.add_argument("--precision", default="bfloat16", choices=["auto", "bfloat16", "float16", "off"])
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64, help="per device")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "gpu_check_images")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--quick", action="store_true", help="tiny_cnn at 64 px, few images: a CPU smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.backbone, args.size, args.images, args.steps, args.batch, args.precision = "tiny_cnn", 64, 128, 3, 16, "off"
    import keras
    from fashion_stack.models.devices import visible_accelerators
    found = visible_accelerators()
    print(f"backend {keras.backend.backend()}, {len(found.devices)} x {found.kind} "
          f"(compute capability {found.compute_capability}), {os.cpu_count()} CPU cores", flush=True)
    started = time.perf_counter()
    paths = make_jpegs(args.folder, args.images)
    print(f"{len(paths)} JPEGs ready in {time.perf_counter() - started:.0f} s", flush=True)
    labels = (np.random.default_rng(1).random((len(paths), 228)) < 0.04).astype(np.float32)
    results = {"reader": reader_rate(paths, args.size, args.batch, args.workers)}
    print(f"reader alone at {args.size} px, {args.workers} workers: {results['reader']['img_per_s']:.0f} img/s, "
          f"{results['reader']['img_per_cpu_s']:.0f} img per CPU-second", flush=True)
    device_sets = ["one"] + (["all"] if len(found.devices) > 1 else [])
    for devices in device_sets:
        row = train_and_infer(args, paths, labels, devices)
        results[devices] = row
        print(f"{args.backbone} {args.size} px on {row['devices']} x {row['kind']} ({row['precision']}, "
              f"XLA {row['jit']}), global batch {row['global_batch']}: compile {row['compile_s']:.0f} s, "
              f"train {row['train_img_per_s']:.0f} img/s (from the reader: {row['train_from_reader_img_per_s']:.0f}), "
              f"inference {row['infer_img_per_s']:.0f} img/s", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
