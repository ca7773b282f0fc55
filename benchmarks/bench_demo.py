"""Demo-data generation speed, stage by stage, against a JPEG-encode-only baseline.

    python -m benchmarks.bench_demo [--n 1000] [--sizes 96 64] [--repeats 3]

For each image size: JPEG encoding of already-drawn pictures alone (the baseline: the least any
generator that writes JPEGs must spend), writing already-encoded files atomically (temporary name +
rename: what the file system costs), label sampling + drawing, drawing + encoding, and the whole
generate_demo (sampling, drawing, encoding, atomic file writes, JSON) into a temporary folder.
Each row is the best of --repeats runs; the ratio is its images/s over the baseline's.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from fashion_stack.core import atomic
from fashion_stack.core.config import DemoConfig
from fashion_stack.datasets.demo import JPEG_QUALITY, DemoLabelModel, generate_demo, make_image, render_image
from fashion_stack.datasets.imageops import encode_jpeg


def _best_seconds(job, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        job()
        best = min(best, time.perf_counter() - start)
    return best


def _generate_into_temp(n: int, size: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        generate_demo(Path(tmp) / "demo", DemoConfig(n_train=n - 2, n_validation=1, n_test=1, image_size=size))


def _write_files_into_temp(jpegs: list) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for k, jpeg in enumerate(jpegs):
            atomic.write_bytes(Path(tmp) / "images" / f"{k}.jpg", jpeg)


def measure(n: int, size: int, repeats: int) -> list:
    model = DemoLabelModel.embedded()
    pictures = [render_image(model, 0, 0, i, size)[1] for i in range(n)]
    jpegs = [encode_jpeg(p, JPEG_QUALITY) for p in pictures]
    jobs = {
        "JPEG encode only (baseline)": lambda: [encode_jpeg(p, JPEG_QUALITY) for p in pictures],
        "atomic file writes only": lambda: _write_files_into_temp(jpegs),
        "sample labels + draw": lambda: [render_image(model, 0, 0, i, size) for i in range(n)],
        "sample + draw + encode": lambda: [make_image(model, 0, 0, i, size) for i in range(n)],
        "generate_demo (+ atomic writes, JSON)": lambda: _generate_into_temp(n, size),
    }
    rows = [{"size": size, "stage": name, "seconds": _best_seconds(job, repeats)} for name, job in jobs.items()]
    for row in rows:
        row["images/s"] = n / row["seconds"]
        row["ratio vs baseline"] = row["images/s"] / (n / rows[0]["seconds"])
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="images per measurement")
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 64])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rows = [row for size in args.sizes for row in measure(args.n, size, args.repeats)]
    print(f"{args.n} images per run, best of {args.repeats}, one process, JPEG quality {JPEG_QUALITY}")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
