"""Download throughput: a bounded thread pool vs one request at a time, against a slow local host.

    python -m benchmarks.bench_download [--images 200] [--latency-ms 40] [--workers 16 4]

A local server adds a fixed latency to every request (a far-away image host); each mode
downloads the same images into a fresh folder, so every image is really fetched, decoded and
re-encoded. Prints seconds, images/s and the speed-up over one-at-a-time, measured in this run.
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from benchmarks.local_http import LocalServer, static
from fashion_stack.core.config import DownloadConfig
from fashion_stack.datasets.download import download_images


def photo_jpeg(width: int = 400, height: int = 300, seed: int = 0) -> bytes:
    """Noise over a gradient: compresses like a photo, unlike a flat colour."""
    rng = np.random.default_rng(seed)
    gradient = np.linspace(0, 200, width)[None, :, None]
    pixels = np.clip(gradient + rng.normal(0, 25, (height, width, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def time_mode(server: LocalServer, n_images: int, workers: int) -> dict:
    cfg = DownloadConfig(workers=workers, timeout_s=10.0, retries=0)
    items = [(str(i), server.url(f"/img/{i}.jpg")) for i in range(n_images)]
    with tempfile.TemporaryDirectory() as scratch:
        result = download_images(items, Path(scratch) / "images", cfg)
    if len(result.fetched) != n_images:
        raise RuntimeError(f"workers={workers}: fetched {len(result.fetched)} of {n_images}; "
                           f"failures:\n{result.failures.head()}")
    mode = "one at a time" if workers == 1 else f"thread pool, {workers} workers"
    return {"mode": mode, "workers": workers, "images": n_images, "seconds": result.seconds,
            "images/s": n_images / result.seconds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--latency-ms", type=float, default=40.0)
    parser.add_argument("--workers", type=int, nargs="+", default=[16, 4])
    args = parser.parse_args(argv)
    body = photo_jpeg()
    routes = {f"/img/{i}.jpg": static(body) for i in range(args.images)}
    with LocalServer(routes, latency_s=args.latency_ms / 1000) as server:
        rows = [time_mode(server, args.images, 1)]
        rows += [time_mode(server, args.images, w) for w in args.workers]
    table = pd.DataFrame(rows).set_index("mode")
    table["ratio vs one at a time"] = table["images/s"] / table.loc["one at a time", "images/s"]
    print(f"{args.images} images of {len(body) / 1024:.0f} KiB (400x300 JPEG), "
          f"{args.latency_ms:g} ms latency per request, local server")
    print(table.to_string(float_format=lambda v: f"{v:.2f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
