"""Image validation throughput of the prepare stage, by worker count.

    .venv/bin/python -m benchmarks.bench_prepare [--repeats 3]

Two workloads from the CCP photos in ../shared/data/ccp (skipped if absent):
  ccp-as-is   2,098 plain RGB JPEGs: decode only, every row "ok"
  png-as-jpg  the first 300 photos re-saved as PNG under a .jpg name (in a temp dir): decode,
              repair and re-encode, every row "repaired"
The baseline is workers=1 on the same workload, measured in the same run; best of --repeats.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from fashion_stack.core.labels import LabelSpace
from fashion_stack.datasets.competition import Split, read_competition
from fashion_stack.datasets.prepare import build_manifest

CCP = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "ccp"
FILES = {"train": "train.json", "validation": "validation.json", "test": "test.json"}


def png_workload(splits: dict, scratch: Path, n_images: int) -> tuple:
    train = splits["train"]
    subset = Split(name="train", path=train.path, images=train.images.head(n_images).reset_index(drop=True))
    images_dir = scratch / "png_images"
    images_dir.mkdir()
    for image_id in subset.image_ids:
        with Image.open(CCP / "images" / f"{image_id}.jpg") as photo:
            photo.save(images_dir / f"{image_id}.jpg", format="PNG")
    return {"train": subset}, images_dir


def best_seconds(splits: dict, images_dir: Path, repaired_dir: Path, workers: int, repeats: int) -> tuple:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        manifest = build_manifest(splits, images_dir, repaired_dir, workers=workers)
        times.append(time.perf_counter() - started)
    return min(times), manifest["status"].value_counts().to_dict()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    if not CCP.exists():
        print(f"skipped: {CCP} is absent on this machine")
        return 0
    splits = read_competition(CCP, FILES, LabelSpace.from_csv(CCP / "label_map.csv"))
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        workloads = {"ccp-as-is": (splits, CCP / "images"), "png-as-jpg": png_workload(splits, scratch, 300)}
        print(f"{'workload':<12} {'workers':>7} {'images':>6} {'seconds':>8} {'img/s':>7} {'vs 1 worker':>11}  statuses")
        for name, (workload, images_dir) in workloads.items():
            baseline = None
            for workers in args.workers:
                seconds, statuses = best_seconds(workload, images_dir, scratch / f"repaired-{name}", workers,
                                                 args.repeats)
                n_images = sum(statuses.values())
                baseline = baseline or seconds
                print(f"{name:<12} {workers:>7} {n_images:>6} {seconds:>8.2f} {n_images / seconds:>7.0f} "
                      f"{baseline / seconds:>10.2f}x  {statuses}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
