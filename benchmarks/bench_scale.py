"""Input pipeline at scale: host memory and images/s of a member's training epoch against the
number of images, per reader and cache mode; and what each reader costs in CPU at 299 px.

    .venv/bin/python -m benchmarks.bench_scale                       # both parts, about 10-15 min on 2 cores
    .venv/bin/python -m benchmarks.bench_scale --part scale --sizes 2000 8000 20000   # quicker look
    .venv/bin/python -m benchmarks.bench_scale --part cost --workers 8

Part "scale": generated small JPEGs (64x48 px files, read at 48 px, stretch), a tiny model (global
pooling + 228 sigmoid outputs, so the input dominates), multi-hot uint8 labels for 228 labels (the
per-image bookkeeping a real member holds). Each (reader, cache, n) runs in its own process, so its
peak RSS is its own. Cached modes run two epochs: the first fills the cache, the second reads it
(the disk cache's file is then in the OS page cache: reclaimable memory, not counted in RSS).
Host memory = peak RSS of the training process + the peak RSS of each decode worker (VmHWM)
+ the memory cache's RAM (a memfd: shared memory, outside every RSS). The slope is a
least-squares line through the three sizes: bytes of host memory per image. A 48x48x3 image is
6,912 bytes, so "flat" means a slope of per-image bookkeeping (paths, labels, order), well under that.
The process reader runs on the JAX backend when JAX is installed (its real use: no TensorFlow),
the tf.data reader on TensorFlow; the model is too small for the backend to matter.

Part "cost": a prediction pass (decode + resize, no cache, no model) over real CCP photos (about
200x299) and over generated 800x800 JPEGs (product photos as the competition serves them), at
299 px, per reader: images/s, CPU seconds of the process and its workers, images per CPU-second
and CPU cores per 1,000 images/s.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
CCP_IMAGES = ROOT.parent / "shared" / "data" / "ccp" / "images"
N_LABELS = 228
FILE_SHAPE = (48, 64)  # (height, width) of the generated scale-test files
SIZE = 48
BATCH = 512


# ---- generated images ------------------------------------------------------------------------


def make_images(folder: Path, n: int, shape, quality: int = 90) -> list:
    """n JPEGs of `shape` (smooth random colour fields), made once and reused (first n of a larger set)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i // 1000:04d}" / f"{i:07d}.jpg" for i in range(n)]
    rng = np.random.default_rng(0)
    height, width = shape
    for i, path in enumerate(paths):
        if path.exists():
            continue
        path.parent.mkdir(exist_ok=True)
        coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((width, height), Image.BILINEAR).save(path, quality=quality)
    return [str(p) for p in paths]


# ---- one configuration, in its own process ---------------------------------------------------


def _peak_rss_bytes(pid="self") -> int:
    """VmHWM: the peak RSS of the process's own memory. (getrusage's ru_maxrss is no use here: a
    spawned worker inherits the peak of the parent it was forked from before its exec.)"""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc: this benchmark reads Linux's memory accounting")


def run_epoch_config(reader: str, cache_mode: str, n: int, folder: Path, workers: int, cache_dir: Path) -> dict:
    import keras
    import numpy as np

    from fashion_stack.models import decode_pool
    from fashion_stack.models.inputs import image_cache, training_batches

    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    outputs = keras.layers.Dense(N_LABELS, activation="sigmoid")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy")
    rss_before_data = _peak_rss_bytes()

    paths = make_images(folder, n, FILE_SHAPE)  # exist already: this only lists them
    labels = (np.random.default_rng(1).integers(0, 50, (n, N_LABELS), dtype=np.uint8) == 0).view(np.uint8)
    cache = image_cache(cache_mode, cache_dir, paths, SIZE, "stretch",
                        budget_bytes=2**40 if cache_mode == "memory" else 0)
    epochs = 1 if cache is None else 2
    rates, per_cpu_s = [], []
    for epoch in range(epochs):
        batches = training_batches(paths, labels, SIZE, "stretch", BATCH, seed=0, epoch=epoch, cache=cache,
                                   reader=reader, workers=workers)
        cpu_start, started = cpu_seconds(), time.perf_counter()
        model.fit(batches, epochs=1, verbose=0)
        rates.append(n / (time.perf_counter() - started))
        per_cpu_s.append(n / (cpu_seconds() - cpu_start))
    cache_ram = 0
    if cache is not None and cache.mode == "memory":
        cache_ram = os.stat(cache.file).st_blocks * 512  # the memfd's pages actually held
    worker_peaks = [_peak_rss_bytes(pid) for pool in decode_pool._POOLS.values() for pid in pool._processes]
    decode_pool.shutdown_pools()
    main_rss = _peak_rss_bytes()
    return {"reader": reader, "cache": cache_mode, "n": n, "backend": keras.backend.backend(),
            "first_epoch_ips": rates[0], "last_epoch_ips": rates[-1], "first_epoch_per_cpu_s": per_cpu_s[0],
            "last_epoch_per_cpu_s": per_cpu_s[-1], "main_rss": main_rss,
            "rss_before_data": rss_before_data, "worker_rss": max(worker_peaks, default=0),
            "workers": len(worker_peaks), "cache_ram": cache_ram,
            "host_bytes": main_rss + sum(worker_peaks) + cache_ram}


def cpu_seconds() -> float:
    """CPU time of this process (tf.data's threads included) and of the live decode workers (from
    /proc: getrusage counts children only after they exit). On a shared machine this is the
    figure to read: wall-clock images/s there depend on everyone else's load."""
    from fashion_stack.models import decode_pool

    mine = resource.getrusage(resource.RUSAGE_SELF)
    total = mine.ru_utime + mine.ru_stime
    for pool in decode_pool._POOLS.values():
        for pid in pool._processes:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def run_cost_config(reader: str, paths: list, workers: int) -> dict:
    import keras
    import numpy as np

    from fashion_stack.models import decode_pool
    from fashion_stack.models.inputs import prediction_batches
    for batch in prediction_batches(paths[:128], 299, "pad", 32, reader=reader, workers=workers):
        np.asarray(batch)  # starts the pool / tf.data threads outside the timing
    cpu_start, started = cpu_seconds(), time.perf_counter()
    count = 0
    for batch in prediction_batches(paths, 299, "pad", 32, reader=reader, workers=workers):
        count += len(np.asarray(batch))
    wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu_start
    decode_pool.shutdown_pools()
    return {"reader": reader, "backend": keras.backend.backend(), "images": count, "ips": count / wall,
            "cpu_s": cpu, "ips_per_cpu_s": count / cpu}


# ---- the driver ----------------------------------------------------------------------------------


def _in_subprocess(args: list, backend: str) -> dict:
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "benchmarks.bench_scale", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"bench_scale {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _backend_for(reader: str) -> str:
    if reader == "tfdata":
        return "tensorflow"
    import importlib.util

    return "jax" if importlib.util.find_spec("jax") else "tensorflow"


def scale_part(args, scratch: Path) -> None:
    folder = scratch / "scale_images"
    started = time.perf_counter()
    make_images(folder, max(args.sizes), FILE_SHAPE)
    print(f"# {max(args.sizes)} JPEG files of {FILE_SHAPE[1]}x{FILE_SHAPE[0]} px made in "
          f"{time.perf_counter() - started:.0f} s; read at {SIZE} px, batch {BATCH}, {args.workers} decode workers")
    rows = []
    # every configuration at a size before the next size, so a cut-short run still has a slope
    for n in sorted(args.sizes):
        for reader in args.readers:
            for cache_mode in args.caches:
                cache_dir = scratch / f"cache_{reader}_{cache_mode}_{n}"
                rows.append(_in_subprocess(["--one", reader, cache_mode, str(n), str(folder), str(args.workers),
                                            str(cache_dir)], _backend_for(reader)))
                shutil.rmtree(cache_dir, ignore_errors=True)
                _print_scale_row(rows[-1], rows)
                if args.rows_file:
                    with open(args.rows_file, "a") as handle:
                        handle.write(json.dumps(rows[-1]) + "\n")
    print_slopes(rows, args.readers, args.caches)


def print_slopes(rows: list, readers, caches) -> None:
    import numpy as np

    print()
    print("| reader | cache | images | host MiB | slope bytes/image |")
    print("|---|---|---|---|---|")
    for reader in readers:
        for cache_mode in caches:
            mine = [r for r in rows if r["reader"] == reader and r["cache"] == cache_mode]
            n = np.array([r["n"] for r in mine], float)
            host = np.array([r["host_bytes"] for r in mine], float)
            slope = np.polyfit(n, host, 1)[0] if len(n) > 1 else float("nan")
            print(f"| {reader} | {cache_mode} | {' / '.join(f'{k:,.0f}' for k in n)} | "
                  f"{' / '.join(f'{h / 2**20:.0f}' for h in host)} | {slope:,.0f} |")
    print(f"(one decoded image: {SIZE * SIZE * 3:,} bytes)")


def _print_scale_row(row: dict, rows: list) -> None:
    if len(rows) == 1:
        print("| reader (backend) | cache | images | epoch 1 img/s | epoch 2 img/s | epoch 1 / 2 img per CPU-s | "
              "x tfdata/none (per CPU-s) | main RSS MiB | "
              "worker peak RSS MiB x workers | cache RAM MiB | host MiB |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
    baseline = next((r for r in rows if r["reader"] == "tfdata" and r["cache"] == "none" and r["n"] == row["n"]), None)
    ratio = f"{row['last_epoch_per_cpu_s'] / baseline['first_epoch_per_cpu_s']:.2f}" if baseline else "-"
    cached = row["cache"] != "none"
    second = f"{row['last_epoch_ips']:,.0f}" if cached else "-"
    per_cpu = f"{row['first_epoch_per_cpu_s']:,.0f}" + (f" / {row['last_epoch_per_cpu_s']:,.0f}" if cached else "")
    mib = 2**20
    print(f"| {row['reader']} ({row['backend']}) | {row['cache']} | {row['n']:,} | {row['first_epoch_ips']:,.0f} | {second} | "
          f"{per_cpu} | {ratio} | {row['main_rss'] / mib:.0f} | {row['worker_rss'] / mib:.0f} x {row['workers']} | "
          f"{row['cache_ram'] / mib:.0f} | {row['host_bytes'] / mib:.0f} |", flush=True)


def cost_part(args, scratch: Path) -> None:
    sources = {}
    if CCP_IMAGES.is_dir():
        sources["CCP photos (~200x299)"] = sorted(map(str, CCP_IMAGES.glob("*.jpg")))[:args.cost_images]
    sources["generated 800x800"] = make_images(scratch / "photos_800", args.cost_images, (800, 800))
    print(f"\n# reader cost at 299 px (pad), {args.cost_images} images, {args.workers} decode workers")
    print("| source | reader (backend) | img/s | CPU s | img per CPU-s | cores per 1,000 img/s |")
    print("|---|---|---|---|---|---|")
    for name, paths in sources.items():
        listing = scratch / "cost_paths.txt"
        listing.write_text("\n".join(paths))
        for reader in args.readers:
            row = _in_subprocess(["--cost", reader, str(listing), str(args.workers)], _backend_for(reader))
            print(f"| {name} | {reader} ({row['backend']}) | {row['ips']:,.0f} | {row['cpu_s']:.1f} | "
                  f"{row['ips_per_cpu_s']:,.0f} | {1000 / row['ips_per_cpu_s']:.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["scale", "cost", "all"], default="all")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    parser.add_argument("--readers", nargs="+", default=["tfdata", "process"])
    parser.add_argument("--caches", nargs="+", default=["none", "memory", "disk"])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--cost-images", type=int, default=600)
    parser.add_argument("--scratch", help="folder for the generated files (reused between runs); default: a temp dir")
    parser.add_argument("--rows-file", help="also append each scale row as JSON to this file")
    parser.add_argument("--slopes-from", help="print the slope table of a --rows-file and stop")
    parser.add_argument("--one", nargs=6, help=argparse.SUPPRESS)
    parser.add_argument("--cost", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        reader, cache_mode, n, folder, workers, cache_dir = args.one
        print(json.dumps(run_epoch_config(reader, cache_mode, int(n), Path(folder), int(workers), Path(cache_dir))))
        return
    if args.slopes_from:
        rows = [json.loads(line) for line in Path(args.slopes_from).read_text().splitlines() if line]
        print_slopes(rows, args.readers, args.caches)
        return
    if args.cost:
        reader, listing, workers = args.cost
        print(json.dumps(run_cost_config(reader, Path(listing).read_text().splitlines(), int(workers))))
        return
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as temporary:
        scratch = Path(args.scratch or temporary)
        if args.part in ("scale", "all"):
            scale_part(args, scratch)
        if args.part in ("cost", "all"):
            cost_part(args, scratch)
    print(f"\n# total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
