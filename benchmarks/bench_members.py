"""Members: training and inference images/s per backbone, the input pipeline's images/s against
the training rate, and peak memory. Each (backbone, size) runs in its own process so its peak
RSS is its own.

    .venv/bin/python -m benchmarks.bench_members                      # all backbones, 96 px and native
    .venv/bin/python -m benchmarks.bench_members --sizes 96 --steps 3 --backbones tiny_cnn mobilenet_v2

Training is measured with every layer trainable (the slowest phase), weights none, random
pixels (speed does not depend on them); the pipeline decodes and resizes real JPEGs (the CCP
photos when ../shared is present, else generated ones) without its cache, i.e. a first epoch.
Baseline for the ratio column: the first backbone listed (the lead, InceptionV3) at that size.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
SHARED_IMAGES = ROOT.parent / "shared" / "data" / "ccp" / "images"


def measure_model(backbone: str, size: int, batch: int, steps: int, warmup: int) -> dict:
    import keras
    import numpy as np

    from fashion_stack.models.backbones import is_pretrained
    from fashion_stack.models.heads import build_member_model, set_trainable
    from fashion_stack.core.config import MemberConfig
    from fashion_stack.models.losses import get_loss

    member = MemberConfig(name=backbone, backbone=backbone, input_size=size, weights=None, augment=True,
                          batch_size=batch)
    model = build_member_model(member, n_labels=228)
    set_trainable(model, backbone, "all", pretrained=is_pretrained(member.weights))
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=get_loss("bce"), jit_compile=False)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    labels = (rng.random((batch, 228)) < 0.04).astype(np.float32)
    train = _rate(lambda: model.train_on_batch(images, labels), batch, steps, warmup)
    infer = _rate(lambda: model.predict_on_batch(images), batch, steps, warmup)
    return {"train_ips": train, "infer_ips": infer, "params_m": model.count_params() / 1e6}


def measure_pipeline(size: int, n_images: int) -> dict:
    from fashion_stack.models.inputs import prediction_batches

    paths = _pipeline_images(n_images)
    next(iter(prediction_batches(paths[:64], size, "pad", batch_size=32)))  # start the readers outside the timing
    started = time.perf_counter()
    count = sum(len(batch) for batch in prediction_batches(paths, size, "pad", batch_size=32))
    return {"pipeline_ips": count / (time.perf_counter() - started), "source": str(Path(paths[0]).parent.name)}


def _rate(step, batch: int, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - started)


def _pipeline_images(n_images: int) -> list:
    if SHARED_IMAGES.is_dir():
        return sorted(map(str, SHARED_IMAGES.glob("*.jpg")))[:n_images]
    import numpy as np
    from PIL import Image

    folder = Path(tempfile.mkdtemp(prefix="bench_members_"))
    rng = np.random.default_rng(0)
    for n in range(n_images):
        Image.fromarray(rng.integers(0, 255, (299, 200, 3), dtype=np.uint8)).save(folder / f"{n}.jpg", quality=90)
    return sorted(map(str, folder.glob("*.jpg")))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _child(args) -> None:
    if args.one == "pipeline":
        result = measure_pipeline(args.size, args.pipeline_images)
    else:
        result = measure_model(args.one, args.size, args.batch, args.steps, args.warmup)
    print(json.dumps({**result, "peak_rss_mb": _peak_rss_mb()}))


def _run_child(what: str, size: int, args) -> dict:
    command = [sys.executable, "-m", "benchmarks.bench_members", "--one", what, "--size", str(size),
               "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--pipeline-images", str(args.pipeline_images)]
    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    sys.path.insert(0, str(ROOT))
    from fashion_stack.models.backbones import backbone_names, backbone_spec

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    lead_first = ["inception_v3"] + [n for n in backbone_names() if n != "inception_v3"]
    parser.add_argument("--backbones", nargs="+", default=lead_first)
    parser.add_argument("--sizes", default="96,native", help="comma list of pixel sizes and/or 'native'")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--pipeline-images", type=int, default=512)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        return _child(args)

    rows = []
    pipeline = {}
    for backbone in args.backbones:
        spec = backbone_spec(backbone)
        for token in args.sizes.split(","):
            size = spec.native_size if token == "native" else max(int(token), spec.min_size)
            if size not in pipeline:
                pipeline[size] = _run_child("pipeline", size, args)
            rows.append({"backbone": backbone, "size": size, "token": token, **_run_child(backbone, size, args)})
            print(f"measured {backbone} @ {size}", file=sys.stderr, flush=True)
    _print_table(rows, pipeline, args)


def _print_table(rows: list, pipeline: dict, args) -> None:
    baseline = {}
    for row in rows:
        baseline.setdefault(row["token"], row.get("train_ips"))  # "native" compares native with native
    print(f"\nbatch {args.batch}, {args.steps} timed steps after {args.warmup} warm-up; "
          f"pipeline: {args.pipeline_images} JPEGs ({next(iter(pipeline.values())).get('source', '?')}), "
          "decode + pad-resize, no cache")
    print("| backbone | size | params M | train img/s | infer img/s | train vs first | pipeline img/s | pipeline/train | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        if "error" in row:
            print(f"| {row['backbone']} | {row['size']} | error: {row['error']} |||||||")
            continue
        pipe = pipeline[row["size"]].get("pipeline_ips", float("nan"))
        base = baseline[row["token"]] or float("nan")
        print(f"| {row['backbone']} | {row['size']} | {row['params_m']:.2f} | {row['train_ips']:.1f} | "
              f"{row['infer_ips']:.1f} | {row['train_ips'] / base:.2f}x | {pipe:.0f} | "
              f"{pipe / row['train_ips']:.1f}x | {row['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
