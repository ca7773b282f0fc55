"""The built-in demo dataset: synthetic garment pictures labelled in the real 228-label space.

    python -m fashion_stack.datasets.demo [--out DIR] [--n-train 600 ...]   # the CLI; the pipeline calls generate_demo

Label sets follow the real iMaterialist 2018 validation statistics embedded in
datasets/resources/label_stats.json (see datasets.derive_label_stats): one category and one gender
on about 98% of images, the real labels-per-group counts, and each group's labels drawn from their
frequencies given the category. Only a learnable subset is drawn: 12 categories with distinct
silhouettes, 11 colours, 4 patterns, 3 sleeve lengths and 4 necklines. Material, style and gender
are never drawn; they are predictable only through their co-occurrence with the category, which is
what a stacker that sees every label's probability can exploit.

The output is the competition layout (label_map.csv, train/validation/test.json, images/<id>.jpg)
plus test_solution.csv (the hidden test labels, `image_id,label_id` as in a submission) so the demo
can be scored end to end. Generation is deterministic from the config, and a stamp file written
last marks a complete dataset, which a second call reuses untouched.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from fashion_stack.core import atomic
from fashion_stack.core.config import DemoConfig, cache_root
from fashion_stack.core.labels import LabelSpace
from fashion_stack.core.lineage import digest
from fashion_stack.core.log import get_logger, progress, setup_logging
from fashion_stack.datasets.demo_draw import UPPER_BODY, GarmentLook, render_garment
from fashion_stack.datasets.derive_label_stats import LABEL_MAP, LABEL_STATS
from fashion_stack.datasets.imageops import encode_jpeg

# Bump when the drawing or the sampling changes, so cached datasets are regenerated.
GENERATOR_VERSION = 2
STAMP = "demo_stamp.json"
SPLITS = ("train", "validation", "test")
OUTPUT_FILES = ("label_map.csv", "train.json", "validation.json", "test.json", "test_solution.csv")
JPEG_QUALITY = 90

# The drawn vocabulary: real label ids -> what the picture shows.
CATEGORIES = {"62": "dress", "190": "tshirt", "193": "tank", "91": "jacket", "88": "hoodie",
              "95": "jumpsuit", "189": "swimsuit", "92": "pants", "165": "shorts", "170": "skirt",
              "22": "boots", "174": "sneakers"}
COLOURS = {"17": (25, 25, 25), "222": (245, 245, 245), "19": (30, 70, 200), "148": (210, 30, 30),
           "78": (128, 128, 128), "131": (250, 150, 190), "79": (30, 150, 50), "226": (245, 215, 30),
           "142": (120, 50, 160), "117": (245, 130, 20), "25": (120, 70, 30)}
PATTERNS = {"181": "stripes", "135": "dots", "42": "checks", "70": "floral"}
SLEEVES = {"105": "long", "164": "short", "171": "none"}
NECKLINES = {"153": "round", "214": "v", "205": "turtle", "49": "collar"}
HIDDEN_GROUPS = ("gender", "material", "style")
MAX_COLOURS = 3
# Pseudo-images of the overall distribution mixed into each category's counts, so that categories
# seen a dozen times in the source (boots, sneakers) get sensible label frequencies.
SMOOTHING = 20.0
# Share of category draws that are uniform rather than real-frequency: every demo category then
# has enough images to learn from.
UNIFORM_CATEGORY_SHARE = 0.5


class DemoError(RuntimeError):
    """The demo output folder cannot be used as asked."""


@dataclass(frozen=True)
class _GroupModel:
    """One label group given one category: how many labels, and which."""
    count_cdf: np.ndarray  # P(count <= k), k = 0..
    label_ids: tuple
    label_probs: np.ndarray

    def sample(self, rng: np.random.Generator, min_count: int = 0, max_count: Optional[int] = None) -> list:
        count = int(np.searchsorted(self.count_cdf, rng.random() * self.count_cdf[-1], side="right"))
        count = min(max(count, min_count), max_count or len(self.label_ids), len(self.label_ids))
        if count == 0:
            return []
        # weighted sampling without replacement (Efraimidis-Spirakis keys)
        keys = np.log(rng.random(len(self.label_ids))) / self.label_probs
        return [self.label_ids[i] for i in np.argsort(-keys)[:count]]


def _smoothed(counts: np.ndarray, prior: np.ndarray, n: float) -> np.ndarray:
    prior = prior / prior.sum()
    return (counts + SMOOTHING * prior) / (n + SMOOTHING)


def _pad(histogram: list, length: int) -> np.ndarray:
    return np.pad(np.asarray(histogram, dtype=float), (0, length - len(histogram)))


def _group_model(stats: dict, category: str, group: str, label_ids: tuple) -> _GroupModel:
    entry = stats["by_category"].get(category, {"n_images": 0, "label_counts": {}, "group_count_histograms": {}})
    overall = stats["group_count_histograms"][group]
    length = max(len(overall), len(entry["group_count_histograms"].get(group, [])))
    counts = _smoothed(_pad(entry["group_count_histograms"].get(group, [0]), length), _pad(overall, length),
                       entry["n_images"])
    given = np.array([entry["label_counts"].get(i, 0) for i in label_ids], dtype=float)
    prior = np.array([stats["label_counts"].get(i, 0) for i in label_ids], dtype=float) + 0.5
    return _GroupModel(np.cumsum(counts), tuple(label_ids), _smoothed(given, prior, given.sum()))


class DemoLabelModel:
    """Samples demo label sets (and what to draw) from the embedded statistics."""

    def __init__(self, stats: dict, label_space: LabelSpace):
        self.stats = stats
        self.category_ids = tuple(CATEGORIES)
        group_of = dict(zip(label_space.label_ids, label_space.groups))
        visible = {"color": tuple(COLOURS), "pattern": tuple(PATTERNS), "sleeve": tuple(SLEEVES),
                   "neckline": tuple(NECKLINES)}
        hidden = {g: tuple(i for i in label_space.label_ids if group_of[i] == g) for g in HIDDEN_GROUPS}
        self.groups = {cat: {g: _group_model(stats, cat, g, ids) for g, ids in {**visible, **hidden}.items()}
                       for cat in CATEGORIES}
        real = np.array([stats["by_category"].get(c, {}).get("n_images", 0) for c in CATEGORIES], dtype=float)
        uniform = np.full(len(CATEGORIES), 1.0 / len(CATEGORIES))
        probs = UNIFORM_CATEGORY_SHARE * uniform + (1 - UNIFORM_CATEGORY_SHARE) * real / real.sum()
        self.category_cdf = np.cumsum(probs)
        missing = stats["group_count_histograms"]["category"]
        self.p_category_unlabelled = missing[0] / stats["n_images"]

    @classmethod
    def embedded(cls) -> "DemoLabelModel":
        return cls(atomic.read_json(LABEL_STATS), LabelSpace.from_csv(LABEL_MAP))

    def sample(self, rng: np.random.Generator) -> tuple:
        """(label ids sorted by number, GarmentLook). About 2% of images keep their garment but
        lose the category label, as in the real annotations."""
        pick = int(np.searchsorted(self.category_cdf, rng.random() * self.category_cdf[-1], side="right"))
        category = self.category_ids[min(pick, len(self.category_ids) - 1)]
        groups = self.groups[category]
        colours = groups["color"].sample(rng, min_count=1, max_count=MAX_COLOURS)
        pattern = groups["pattern"].sample(rng, max_count=1)
        upper = CATEGORIES[category] in UPPER_BODY
        sleeve = groups["sleeve"].sample(rng, min_count=1, max_count=1) if upper else []
        neckline = groups["neckline"].sample(rng, max_count=1) if upper else []
        hidden = [label for g in HIDDEN_GROUPS for label in groups[g].sample(rng)]
        labels = colours + pattern + sleeve + neckline + hidden
        if rng.random() >= self.p_category_unlabelled:
            labels.append(category)
        look = GarmentLook(
            silhouette=CATEGORIES[category],
            colours=tuple(COLOURS[c] for c in colours),
            pattern=PATTERNS[pattern[0]] if pattern else None,
            sleeve=SLEEVES[sleeve[0]] if sleeve else None,
            neckline=NECKLINES[neckline[0]] if neckline else None,
        )
        return sorted(labels, key=int), look


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def demo_config_hash(cfg: DemoConfig) -> str:
    """Changes with the config, the generator version and the embedded statistics."""
    return digest({"config": dataclasses.asdict(cfg), "version": GENERATOR_VERSION,
                   "stats": _file_digest(LABEL_STATS), "label_map": _file_digest(LABEL_MAP)})


def demo_cache_dir(cfg: DemoConfig) -> Path:
    return cache_root() / "demo" / demo_config_hash(cfg)


def _image_size(cfg_size: int, rng: np.random.Generator) -> tuple:
    """(width, height): the long side is the configured size, the short side 80-100% of it."""
    short = int(round(cfg_size * rng.uniform(0.8, 1.0)))
    return (short, cfg_size) if rng.random() < 0.6 else (cfg_size, short)  # mostly portrait, as photos


def _split_sizes(cfg: DemoConfig) -> dict:
    return {"train": cfg.n_train, "validation": cfg.n_validation, "test": cfg.n_test}


def _validate(cfg: DemoConfig) -> None:
    sizes = _split_sizes(cfg)
    if any(n < 0 for n in sizes.values()) or sizes["test"] < 1 or sizes["train"] + sizes["validation"] < 1:
        raise DemoError(f"demo sizes {sizes}: need test >= 1 and train + validation >= 1, none negative")
    if not 16 <= cfg.image_size <= 512:
        raise DemoError(f"demo.image_size {cfg.image_size}: use 16..512 pixels")


def _is_complete(out_dir: Path, digest: str, cfg: DemoConfig) -> bool:
    stamp_path = out_dir / STAMP
    if not stamp_path.exists():
        return False
    stamp = atomic.read_json(stamp_path)
    if stamp.get("config_hash") != digest or stamp.get("status") != "complete":
        return False
    if not all((out_dir / name).exists() for name in OUTPUT_FILES):
        return False
    images = out_dir / "images"
    return images.is_dir() and sum(1 for _ in images.iterdir()) == sum(_split_sizes(cfg).values())


def _clear(out_dir: Path) -> None:
    """Remove a previous demo dataset; refuse to touch a folder that is not one."""
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return
    if not (out_dir / STAMP).exists():
        raise DemoError(f"{out_dir} is not empty and holds no {STAMP}, so it is not a demo dataset; "
                        "pass a new or empty folder (or the demo cache, the default)")
    shutil.rmtree(out_dir / "images", ignore_errors=True)
    for name in OUTPUT_FILES + (STAMP,):
        (out_dir / name).unlink(missing_ok=True)


def _write_split_files(out_dir: Path, split: str, records: list) -> None:
    images = [{"url": f"demo://{split}/{image_id}.jpg", "imageId": int(image_id) if split == "test" else image_id}
              for image_id, _ in records]
    doc = {"images": images}
    if split == "test":
        solution = pd.DataFrame({"image_id": [int(i) for i, _ in records],
                                 "label_id": [" ".join(labels) for _, labels in records]})
        atomic.write_csv(out_dir / "test_solution.csv", solution)
    else:
        doc["annotations"] = [{"labelId": labels, "imageId": image_id} for image_id, labels in records]
    atomic.write_text(out_dir / f"{split}.json", json.dumps(doc) + "\n")


def render_image(model: DemoLabelModel, seed: int, split_index: int, position: int, image_size: int) -> tuple:
    """(label ids, PIL image) of one demo image; depends only on its own arguments, so images
    can be made in any order or in parallel."""
    rng = np.random.default_rng([seed, split_index, position])
    labels, look = model.sample(rng)
    width, height = _image_size(image_size, rng)
    return labels, render_garment(look, width, height, rng)


def make_image(model: DemoLabelModel, seed: int, split_index: int, position: int, image_size: int) -> tuple:
    """(label ids, JPEG bytes) of one demo image, as written to images/<imageId>.jpg."""
    labels, picture = render_image(model, seed, split_index, position, image_size)
    return labels, encode_jpeg(picture, JPEG_QUALITY)


def generate_demo(out_dir: str | Path, cfg: DemoConfig) -> Path:
    """Write the demo dataset into `out_dir` (reusing it if it is already complete for `cfg`)."""
    out_dir = Path(out_dir)
    _validate(cfg)
    digest = demo_config_hash(cfg)
    log = get_logger("demo")
    if _is_complete(out_dir, digest, cfg):
        log.info("demo dataset %s is complete for this config; reusing it", out_dir)
        return out_dir
    _clear(out_dir)
    atomic.write_json(out_dir / STAMP, {"config_hash": digest, "status": "writing"})
    atomic.write_bytes(out_dir / "label_map.csv", LABEL_MAP.read_bytes())
    model = DemoLabelModel.embedded()
    next_id = 1
    for split_index, split in enumerate(SPLITS):
        count = _split_sizes(cfg)[split]
        records = []
        for position in progress(range(count), desc=f"demo {split}", unit="img"):
            labels, jpeg = make_image(model, cfg.seed, split_index, position, cfg.image_size)
            image_id = str(next_id + position)
            atomic.write_bytes(out_dir / "images" / f"{image_id}.jpg", jpeg)
            records.append((image_id, labels))
        _write_split_files(out_dir, split, records)
        next_id += count
    atomic.write_json(out_dir / STAMP, {"config_hash": digest, "status": "complete",
                                        "config": dataclasses.asdict(cfg), "generator_version": GENERATOR_VERSION})
    log.info("wrote demo dataset %s (%s)", out_dir, _split_sizes(cfg))
    return out_dir


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Generate the built-in demo dataset.")
    parser.add_argument("--out", type=Path, help="output folder (default: the demo cache)")
    for field in dataclasses.fields(DemoConfig):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=int, default=field.default)
    args = parser.parse_args(argv)
    setup_logging()
    cfg = DemoConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DemoConfig)})
    print(generate_demo(args.out or demo_cache_dir(cfg), cfg))


if __name__ == "__main__":
    main()
