"""What the lineage checks cost on a rerun with nothing to do, by the number of image files.

    .venv/bin/python -m benchmarks.bench_lineage [--sizes 10000 30000 100000] [--keep DIR]

For each size, a generated competition folder (one small JPEG per image, train.json + test.json)
is prepared once; then the no-op rerun of the prepare stage is timed (best of --repeats), and the
parts of it that grow with the image count:
  stat every file   core.lineage.file_stamps over every listed image (the per-file check that
                    tells an image overwritten in place; the rule before this one looked at the
                    image folders' mtimes only)
  folder mtimes     that earlier check, measured here as the baseline (same run, same files)
  read manifest     datasets.manifest.read_manifest
  unit lineage      ManifestDigests: labels + images digests for one unit that reads every image
                    (what each member unit records and compares)
The last column is the per-file stat against the folder-mtime baseline of the same size (what the
finer check costs more); the no-op prepare column is the whole stage, every check included. `--keep DIR` leaves the generated
folders there (e.g. to time `run_pipeline.py --stages prepare,folds` on them).

A second table (issue 24) times the reruns after the data directory changes without a byte of it
changing, and says whether what the member units record (the unit lineage digests) still holds,
i.e. whether any member would retrain:
  touched           every image's mtime changed (a copy without -p, a sync tool)
  moved             the data directory renamed (mtimes kept) and given by its new path
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from fashion_stack.core.config import PipelineConfig
from fashion_stack.core.context import StageContext
from fashion_stack.core.lineage import file_stamps
from fashion_stack.core.log import setup_logging
from fashion_stack.core.rundir import RunDir
from fashion_stack.datasets.manifest import ManifestDigests, read_manifest
from fashion_stack.datasets.prepare import run_prepare

N_TEST = 100
LABELS = ("1", "2", "3")


def generate(folder: Path, n_images: int) -> Path:
    """n_images tiny JPEGs (distinct bytes, ~350 B each) and the competition files naming them."""
    images = folder / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(n_images)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buffer, format="JPEG", quality=90)
    template = buffer.getvalue()
    ids = [str(k) for k in range(1, n_images + 1)]
    for image_id in ids:  # the JPEG comment differs per file: no two files are the same bytes
        (images / f"{image_id}.jpg").write_bytes(template[:2] + b"\xff\xfe\x00\x08" + image_id.zfill(6)[:6].encode()
                                                 + template[2:])
    train, test = ids[:-N_TEST], ids[-N_TEST:]
    labels = rng.integers(0, len(LABELS), size=len(train))
    (folder / "train.json").write_text(json.dumps({
        "images": [{"imageId": i, "url": ""} for i in train],
        "annotations": [{"imageId": i, "labelId": [LABELS[k]]} for i, k in zip(train, labels)]}))
    (folder / "test.json").write_text(json.dumps({"images": [{"imageId": i, "url": ""} for i in test]}))
    (folder / "label_map.csv").write_text("labelId,labelName\n" + "".join(f"{lab},l{lab}\n" for lab in LABELS))
    return folder


def context(data_dir: Path, run_dir: Path) -> StageContext:
    config = PipelineConfig()
    config.data.dir, config.data.pool = str(data_dir), "train"
    return StageContext(config=config, run=RunDir(run_dir), data_dir=data_dir)


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def measure(n_images: int, scratch: Path, repeats: int) -> dict:
    data_dir = generate(scratch / f"data-{n_images}", n_images)
    ctx = context(data_dir, scratch / f"run-{n_images}")
    started = time.perf_counter()
    run_prepare(ctx)
    first = time.perf_counter() - started
    manifest = read_manifest(ctx.run.manifest)
    paths = [str(data_dir / "images" / f"{i}.jpg") for i in manifest["imageId"]]
    train = list(manifest.loc[manifest["split"] == "train", "imageId"])

    def unit_lineage():
        ManifestDigests(manifest).labels_and_images(train, ("train",))

    return {"files": n_images, "first prepare": first,
            "no-op prepare": best(lambda: run_prepare(ctx), repeats),
            "stat every file": best(lambda: file_stamps(paths), repeats),
            "folder mtimes": best(lambda: (data_dir / "images").stat().st_mtime_ns, repeats),
            "read manifest": best(lambda: read_manifest(ctx.run.manifest), repeats),
            "unit lineage": best(unit_lineage, repeats)}


def _lineage(ctx: StageContext) -> tuple:
    manifest = read_manifest(ctx.run.manifest)
    train = list(manifest.loc[manifest["split"] == "train", "imageId"])
    return ManifestDigests(manifest).labels_and_images(train, ("train",))


def _timed_prepare(ctx: StageContext) -> str:
    started = time.perf_counter()
    try:
        run_prepare(ctx)
    except Exception as err:  # noqa: BLE001 (the earlier rule refused a moved directory)
        return f"error: {type(err).__name__}"
    return f"{time.perf_counter() - started:.3f}s"


def measure_changes(n_images: int, scratch: Path) -> dict:
    """Rerun costs after a touch and after a move of the data directory prepared by measure()."""
    import os
    data_dir = scratch / f"data-{n_images}"
    ctx = context(data_dir, scratch / f"run-{n_images}")
    recorded = _lineage(ctx)
    later = time.time() + 60
    for image in (data_dir / "images").iterdir():
        os.utime(image, (later, later))
    touched = _timed_prepare(ctx)
    touched_same = _lineage(ctx) == recorded
    moved_dir = scratch / f"moved-{n_images}"
    os.rename(data_dir, moved_dir)
    ctx = context(moved_dir, scratch / f"run-{n_images}")
    moved = _timed_prepare(ctx)
    moved_same = _lineage(ctx) == recorded if not moved.startswith("error") else False
    return {"files": n_images, "touched": touched, "touched: members kept": touched_same,
            "moved": moved, "moved: members kept": moved_same}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="generate into this folder and leave it there")
    args = parser.parse_args()
    setup_logging(level=30)  # warnings only: the table is the output
    columns = ["files", "first prepare", "no-op prepare", "stat every file", "folder mtimes", "read manifest",
               "unit lineage"]
    print(" | ".join(f"{c:>15}" for c in columns) + " | µs/file (stat) | stat / folder mtimes")
    with tempfile.TemporaryDirectory() as temporary:
        scratch = args.keep or Path(temporary)
        scratch.mkdir(parents=True, exist_ok=True)
        for n_images in args.sizes:
            row = measure(n_images, scratch, args.repeats)
            cells = [f"{row['files']:>15,}"] + [f"{row[c]:>14.3f}s" for c in columns[1:]]
            print(" | ".join(cells) + f" | {row['stat every file'] / n_images * 1e6:>14.2f} | "
                  f"{row['stat every file'] / max(row['folder mtimes'], 1e-9):>10,.0f}x", flush=True)
        print()
        names = ["files", "touched", "touched: members kept", "moved", "moved: members kept"]
        print(" | ".join(f"{c:>22}" for c in names))
        for n_images in args.sizes:
            row = measure_changes(n_images, scratch)
            print(" | ".join(f"{str(row[c]):>22}" for c in names), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
