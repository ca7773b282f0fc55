"""Tiny synthetic runs for the members tests: images whose labels are visible (label j paints a
bright patch in cell j), a manifest, folds.csv and a StageContext, all under tmp_path."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from fashion_stack.core.config import HARDWARE_KEYS, HardwareConfig, MemberConfig, PipelineConfig
from fashion_stack.core.context import StageContext
from fashion_stack.core.rundir import RunDir
from fashion_stack.datasets.folds import write_folds
from fashion_stack.datasets.manifest import make_manifest

N_LABELS = 6
PATCH_COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255)]


def synthetic_image(labels: np.ndarray, rng: np.random.Generator, width: int = 40, height: int = 32) -> Image.Image:
    pixels = rng.integers(60, 120, size=(height, width, 3)).astype(np.uint8)
    cell_w, cell_h = width // 3, height // 2
    for j in np.flatnonzero(labels):
        row, col = divmod(j, 3)
        pixels[row * cell_h + 2:(row + 1) * cell_h - 2, col * cell_w + 2:(col + 1) * cell_w - 2] = PATCH_COLOURS[j]
    return Image.fromarray(pixels)


def make_run(root: Path, n_train: int = 24, n_validation: int = 12, n_test: int = 8, k: int = 3,
             pool: str = "train+validation", seed: int = 0, reuse_ids: bool = False) -> StageContext:
    """A run directory with manifest.parquet and folds.csv over `pool`, and the data dir."""
    rng = np.random.default_rng(seed)
    data_dir, run_dir = root / "data", root / "run"
    (data_dir / "images").mkdir(parents=True)
    run_dir.mkdir(parents=True)
    pd.DataFrame({"labelId": [str(j + 1) for j in range(N_LABELS)],
                  "labelName": [f"label{j + 1}" for j in range(N_LABELS)]}).to_csv(data_dir / "label_map.csv", index=False)
    rows = []
    for split, count in (("train", n_train), ("validation", n_validation), ("test", n_test)):
        for n in range(count):
            # reuse_ids: every split numbers its images 0..n-1, as the real competition's do
            image_id = str(n) if reuse_ids else f"{split[0]}{n}"
            labels = rng.random(N_LABELS) < 0.4
            labels[rng.integers(N_LABELS)] = True
            (data_dir / "images" / split).mkdir(exist_ok=True)
            path = data_dir / "images" / split / f"{image_id}.jpg"
            synthetic_image(labels, rng).save(path, quality=95)
            label_text = "" if split == "test" else " ".join(str(j + 1) for j in np.flatnonzero(labels))
            rows.append({"imageId": image_id, "split": split, "labels": label_text, "path": str(path),
                         "width": 40, "height": 32, "mode": "RGB", "bytes": path.stat().st_size,
                         "status": "ok", "reason": ""})
    manifest = make_manifest(rows)
    manifest.to_parquet(run_dir / "manifest.parquet")
    splits = {"train+validation": ("train", "validation"), "train": ("train",), "validation": ("validation",)}[pool]
    pool_ids = list(manifest.loc[manifest["split"].isin(splits), "imageId"])
    write_folds(run_dir / "folds.csv", pool_ids, np.arange(len(pool_ids)) % k)
    config = PipelineConfig()
    config.data.pool = pool
    config.folds.k = k
    return StageContext(config=config, run=RunDir(run_dir), data_dir=data_dir)


def tiny_member(name: str = "tiny", **overrides) -> MemberConfig:
    """A member that trains in seconds. In the test's own process (isolation "none"), so spies and
    callbacks see its training and no test pays a TensorFlow start per member; tests/test_isolation.py
    and the pipeline's end-to-end tests run members in their child processes (the default)."""
    settings = dict(name=name, backbone="tiny_cnn", input_size=16, weights=None, batch_size=8,
                    head_epochs=1, finetune_epochs=1, learning_rate=3e-3, augment=False, isolation="none")
    settings.update(overrides)
    return MemberConfig(**grouped(settings))


def grouped(settings: dict) -> dict:
    """Member settings with the run settings (mixed_precision, reader, unit_cpus...) written flat,
    as tests find them handy, gathered into the member's HardwareConfig."""
    settings = dict(settings)
    hardware = {k: settings.pop(k) for k in HARDWARE_KEYS if k in settings}
    if hardware:
        settings["hardware"] = HardwareConfig(**hardware)
    return settings
