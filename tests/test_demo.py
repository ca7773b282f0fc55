"""The built-in demo dataset: determinism, label realism, the competition layout, reuse."""
from __future__ import annotations

import json
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from fashion_stack.core import atomic
from fashion_stack.core.config import PROJECT_ROOT, DemoConfig
from fashion_stack.core.labels import LabelSpace
from fashion_stack.datasets import demo
from fashion_stack.datasets.competition import read_split
from fashion_stack.datasets.demo_draw import SILHOUETTES, GarmentLook, render_garment
from fashion_stack.datasets.derive_label_stats import LABEL_MAP, LABEL_STATS, label_statistics
from fashion_stack.datasets.imageops import open_image

SMALL = DemoConfig(n_train=60, n_validation=20, n_test=20, image_size=48, seed=3)


def _files(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory) -> Path:
    return demo.generate_demo(tmp_path_factory.mktemp("demo") / "data", SMALL)


@pytest.fixture(scope="module")
def label_space() -> LabelSpace:
    return LabelSpace.from_csv(LABEL_MAP)


def _all_label_sets(data_dir: Path) -> list:
    sets = []
    space = LabelSpace.from_csv(data_dir / "label_map.csv")
    for split in ("train", "validation"):
        sets += list(read_split(data_dir / f"{split}.json", split, space).images["labelIds"])
    with open(data_dir / "test_solution.csv") as solution:
        next(solution)
        sets += [line.strip().split(",")[1].split() for line in solution]
    return sets


def test_same_seed_gives_identical_files_and_another_seed_differs(small_demo, tmp_path):
    again = demo.generate_demo(tmp_path / "again", SMALL)
    assert _files(again) == _files(small_demo)
    other = _files(demo.generate_demo(tmp_path / "other", DemoConfig(**{**SMALL.__dict__, "seed": 4})))
    first = _files(small_demo)
    assert other["train.json"] != first["train.json"]
    assert other["images/1.jpg"] != first["images/1.jpg"]
    differing = [name for name in first if name.startswith("images/") and first[name] != other[name]]
    assert len(differing) == 100


def test_files_read_with_the_competition_reader(small_demo):
    space = LabelSpace.from_csv(small_demo / "label_map.csv")
    assert len(space) == 228 and space.has_groups()
    splits = {name: read_split(small_demo / f"{name}.json", name, space) for name in ("train", "validation", "test")}
    assert [len(s.images) for s in splits.values()] == [60, 20, 20]
    assert not splits["test"].labelled and splits["train"].labelled
    ids = [i for s in splits.values() for i in s.image_ids]
    assert ids == [str(i) for i in range(1, 101)]  # unique across splits, as in the real layout
    raw_test = json.loads((small_demo / "test.json").read_text())
    assert all(type(image["imageId"]) is int for image in raw_test["images"])
    raw_train = json.loads((small_demo / "train.json").read_text())
    assert all(type(image["imageId"]) is str for image in raw_train["images"])
    for image_id in ids:
        image = open_image(small_demo / "images" / f"{image_id}.jpg")
        assert image.format == "JPEG" and image.mode == "RGB"
        assert max(image.size) == 48 and min(image.size) >= 38  # square-ish, aspect varies a little


def test_group_constraints_on_the_written_files(small_demo, label_space):
    sets = _all_label_sets(small_demo)
    assert len(sets) == 100
    matrix = label_space.encode(sets)
    assert 1 <= matrix.sum(axis=1).min() and matrix.sum(axis=1).max() <= 23
    for group in ("category", "gender"):
        per_image = matrix[:, label_space.group_mask(group)].sum(axis=1)
        assert (per_image == 1).mean() >= 0.95, group


def test_sampled_label_sets_follow_the_real_statistics(label_space):
    model = demo.DemoLabelModel.embedded()
    rng = np.random.default_rng(0)
    sets = [model.sample(rng)[0] for _ in range(3000)]
    matrix = label_space.encode(sets)
    cardinality = matrix.sum(axis=1)
    assert 6.0 <= cardinality.mean() <= 8.5
    assert cardinality.min() >= 1 and cardinality.max() <= 23
    for group in ("category", "gender"):
        exactly_one = (matrix[:, label_space.group_mask(group)].sum(axis=1) == 1).mean()
        assert 0.95 <= exactly_one <= 1.0, group
    categories = Counter(label for labels in sets for label in labels if label in demo.CATEGORIES)
    assert set(categories) == set(demo.CATEGORIES)
    assert min(categories.values()) >= 0.03 * len(sets)  # every category has enough to learn from
    # co-occurrence from the real data: T-shirts are cotton far more often than dresses are
    stats = atomic.read_json(LABEL_STATS)["by_category"]
    real = {c: stats[c]["label_counts"]["53"] / stats[c]["n_images"] for c in ("190", "62")}
    sampled = {c: np.mean([("53" in s) for s in sets if c in s]) for c in ("190", "62")}
    assert real["190"] > 3 * real["62"]
    assert sampled["190"] > 2.5 * sampled["62"]
    assert abs(sampled["190"] - real["190"]) < 0.12


def test_only_the_drawn_vocabulary_is_visible(label_space):
    model = demo.DemoLabelModel.embedded()
    rng = np.random.default_rng(1)
    group_of = dict(zip(label_space.label_ids, label_space.groups))
    visible = {"color": demo.COLOURS, "pattern": demo.PATTERNS, "sleeve": demo.SLEEVES,
               "neckline": demo.NECKLINES, "category": demo.CATEGORIES}
    for _ in range(500):
        labels, look = model.sample(rng)
        for label in labels:
            if group_of[label] in visible:
                assert label in visible[group_of[label]]
        colours = [demo.COLOURS[i] for i in labels if group_of[i] == "color"]
        assert sorted(colours) == sorted(look.colours)
        sleeves = [demo.SLEEVES[i] for i in labels if group_of[i] == "sleeve"]
        assert sleeves == ([look.sleeve] if look.sleeve else [])


@pytest.mark.parametrize("label_id,rgb", sorted(demo.COLOURS.items()))
def test_a_plain_garment_shows_its_colour(label_id, rgb):
    rng = np.random.default_rng(int(label_id))
    picture = render_garment(GarmentLook("dress", (rgb,), sleeve="none"), 96, 96, rng, noise=0)
    pixels = np.asarray(picture, dtype=float).reshape(-1, 3)
    close = np.linalg.norm(pixels - np.asarray(rgb, float), axis=1) < 60
    assert close.mean() > 0.12  # the dress covers about a fifth of the frame


def test_pattern_and_silhouette_change_the_picture():
    def picture(look):
        return np.asarray(render_garment(look, 64, 64, np.random.default_rng(7), noise=0), dtype=float)
    red, white = (210, 30, 30), (245, 245, 245)
    plain = picture(GarmentLook("tshirt", (red, white), sleeve="short", neckline="round"))
    striped = picture(GarmentLook("tshirt", (red, white), pattern="stripes", sleeve="short", neckline="round"))
    assert np.abs(plain - striped).mean() > 3
    shapes = [picture(GarmentLook(s, (red,), sleeve="long" if s in ("tshirt",) else None)) for s in SILHOUETTES]
    assert len({p.tobytes() for p in shapes}) == len(SILHOUETTES)


def test_second_call_reuses_a_complete_dataset(small_demo, tmp_path):
    out = demo.generate_demo(tmp_path / "data", SMALL)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert demo.generate_demo(out, SMALL) == out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_another_config_regenerates_in_place(tmp_path):
    out = demo.generate_demo(tmp_path / "data", SMALL)
    smaller = DemoConfig(n_train=10, n_validation=5, n_test=5, image_size=32, seed=3)
    demo.generate_demo(out, smaller)
    assert len(list((out / "images").iterdir())) == 20
    assert atomic.read_json(out / demo.STAMP)["config_hash"] == demo.demo_config_hash(smaller)


def test_an_interrupted_generation_is_redone(tmp_path):
    out = demo.generate_demo(tmp_path / "data", SMALL)
    before = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    (out / "images" / "7.jpg").unlink()
    demo.generate_demo(out, SMALL)
    after = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    # the missing image is drawn again, the same bytes (the generator is seeded), and nothing
    # else changes
    assert after == before


def test_refuses_a_folder_that_is_not_a_demo_dataset(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(demo.DemoError, match="not a demo dataset"):
        demo.generate_demo(tmp_path, SMALL)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_bad_sizes_are_refused(tmp_path):
    with pytest.raises(demo.DemoError, match="image_size"):
        demo.generate_demo(tmp_path / "x", DemoConfig(image_size=4))
    with pytest.raises(demo.DemoError, match="test >= 1"):
        demo.generate_demo(tmp_path / "x", DemoConfig(n_test=0))


def test_cache_dir_is_per_config():
    first, second = demo.demo_cache_dir(SMALL), demo.demo_cache_dir(DemoConfig())
    assert first.parent == PROJECT_ROOT / ".cache" / "demo"
    assert first != second and first == demo.demo_cache_dir(DemoConfig(**SMALL.__dict__))


def test_embedded_stats_match_a_direct_count_of_the_real_labels(imat_dir, label_space):
    # brute force over the raw JSON, independent of the reader and of label_statistics
    with zipfile.ZipFile(imat_dir / "validation.json.zip") as archive:
        doc = json.loads(archive.read(archive.namelist()[0]))
    label_sets = [set(map(str, a["labelId"])) for a in doc["annotations"]]
    stats = atomic.read_json(LABEL_STATS)
    assert stats["n_images"] == len(label_sets) == 9897
    assert stats["label_counts"] == {k: v for k, v in Counter(l for s in label_sets for l in s).items()}
    sizes = Counter(len(s) for s in label_sets)
    assert stats["cardinality_histogram"] == [sizes.get(k, 0) for k in range(max(sizes) + 1)]
    dresses = [s for s in label_sets if "62" in s]
    assert stats["by_category"]["62"]["n_images"] == len(dresses)
    assert stats["by_category"]["62"]["label_counts"]["53"] == sum("53" in s for s in dresses)


def test_label_statistics_on_a_tiny_matrix(label_space):
    # dress, female, black, white; t-shirt, male
    sets = [["62", "66", "17"], ["62", "66", "17", "222"], ["190", "106"]]
    stats = label_statistics(label_space.encode(sets), label_space, "tiny")
    assert stats["label_counts"] == {"17": 2, "62": 2, "66": 2, "222": 1, "190": 1, "106": 1}
    assert stats["cardinality_histogram"] == [0, 0, 1, 1, 1]
    assert stats["group_count_histograms"]["color"] == [1, 1, 1]
    assert stats["by_category"]["62"]["n_images"] == 2
    assert stats["by_category"]["62"]["label_counts"] == {"66": 2, "17": 2, "222": 1}  # no category labels
    assert stats["by_category"]["62"]["group_count_histograms"]["color"] == [0, 1, 1]
    assert stats["by_category"]["190"]["group_count_histograms"]["gender"] == [0, 1]
    assert set(stats["by_category"]) == {"62", "190"}
