"""The prepare stage on a tiny competition data dir made here, and on the real CCP photos."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fashion_stack.core.config import PipelineConfig
from fashion_stack.core.context import StageContext
from fashion_stack.core.labels import LabelSpace
from fashion_stack.core.rundir import RunDir, StaleArtifactError
from fashion_stack.datasets import prepare
from fashion_stack.datasets.competition import CompetitionDataError, read_competition
from fashion_stack.datasets.manifest import manifest_labels, pool_ids, read_manifest
from fashion_stack.datasets.manifest import test_ids as usable_test_ids  # aliased: pytest would collect test_ids
from fashion_stack.datasets.prepare import UnusableTestImagesError, build_manifest, run_prepare

TRAIN = {"1": ["1", "2"], "2": ["3"], "3": ["2"], "4": ["1", "3"]}
VALIDATION = {"5": ["2"], "6": ["1", "2", "3"]}
TEST = [9, 7, 8]  # integer ids, not sorted, as in the real test.json
FILES = {"train": "train.json", "validation": "validation.json", "test": "test.json"}


def write_split(path: Path, ids, labels: dict | None) -> None:
    doc = {"images": [{"url": f"http://example/{i}", "imageId": i} for i in ids]}
    if labels is not None:
        doc["annotations"] = [{"imageId": i, "labelId": labels[i]} for i in ids]
    path.write_text(json.dumps(doc))


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """Every image a valid 8x8 JPEG except train 2 (truncated), train 3 (PNG named .jpg) and
    validation 6 (missing)."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "label_map.csv").write_text("labelId,labelName\n1,shirt\n2,dress\n3,hat\n")
    write_split(root / "train.json", list(TRAIN), TRAIN)
    write_split(root / "validation.json", list(VALIDATION), VALIDATION)
    write_split(root / "test.json", TEST, None)
    for image_id in [*TRAIN, *VALIDATION, *map(str, TEST)]:
        Image.new("RGB", (8, 8), (200, 30, 30)).save(root / "images" / f"{image_id}.jpg")
    whole = (root / "images" / "2.jpg").read_bytes()
    (root / "images" / "2.jpg").write_bytes(whole[: len(whole) // 2])
    Image.new("RGB", (8, 6), (200, 30, 30)).save(root / "images" / "3.jpg", format="PNG")
    (root / "images" / "6.jpg").unlink()
    return root


def make_context(data_dir: Path, run_root: Path, redo=(), **data_options) -> StageContext:
    config = PipelineConfig()
    config.data.dir = str(data_dir)
    config.data.validate_workers = 2
    for key, value in data_options.items():
        setattr(config.data, key, value)
    return StageContext(config=config, run=RunDir(run_root), data_dir=data_dir, redo=set(redo))


def read_splits(data_dir: Path) -> dict:
    return read_competition(data_dir, FILES, LabelSpace.from_csv(data_dir / "label_map.csv"))


@pytest.mark.parametrize("workers", [1, 2])
def test_build_manifest_rows_in_split_and_file_order(data_dir, tmp_path, workers):
    manifest = build_manifest(read_splits(data_dir), data_dir / "images", tmp_path / "repaired", workers=workers)
    assert list(manifest["imageId"]) == ["1", "2", "3", "4", "5", "6", "9", "7", "8"]
    assert list(manifest["split"]) == ["train"] * 4 + ["validation"] * 2 + ["test"] * 3
    assert list(manifest["labels"]) == ["1 2", "3", "2", "1 3", "2", "1 2 3", "", "", ""]
    assert list(manifest["status"]) == ["ok", "unreadable", "repaired", "ok", "ok", "missing", "ok", "ok", "ok"]
    assert manifest.loc[0, "path"] == str((data_dir / "images" / "1.jpg").resolve())
    assert manifest.loc[2, "path"] == str((tmp_path / "repaired" / "train" / "3.jpg").resolve())
    assert (manifest.loc[2, "width"], manifest.loc[2, "height"]) == (8, 6)


def test_build_manifest_refuses_ids_shared_by_train_and_validation(data_dir, tmp_path):
    write_split(data_dir / "validation.json", ["4", "5"], {"4": ["1"], "5": ["2"]})
    with pytest.raises(CompetitionDataError, match="share imageId.*4"):
        build_manifest(read_splits(data_dir), data_dir / "images", tmp_path / "repaired")


def test_per_split_layout_allows_ids_reused_across_splits(data_dir, tmp_path):
    """The real competition's layout: images/<split>/<id>.jpg, validation reusing train's ids."""
    write_split(data_dir / "validation.json", ["1", "5"], {"1": ["3"], "5": ["2"]})
    for split, ids, colour in (("train", TRAIN, (200, 0, 0)), ("validation", ["1", "5"], (0, 0, 200)),
                               ("test", map(str, TEST), (0, 200, 0))):
        (data_dir / "images" / split).mkdir()
        for image_id in ids:
            Image.new("RGB", (8, 8), colour).save(data_dir / "images" / split / f"{image_id}.jpg")
    with pytest.raises(CompetitionDataError, match="share imageId.*1.*per_split"):
        run_prepare(make_context(data_dir, tmp_path / "flat_run"))
    ctx = make_context(data_dir, tmp_path / "run", image_layout="per_split", pool="validation")
    assert run_prepare(ctx)["by_status"] == {"ok": 9, "repaired": 0, "unreadable": 0, "missing": 0}
    manifest = read_manifest(ctx.run.manifest)
    reused = manifest[manifest["imageId"] == "1"].set_index("split")
    assert reused.loc["train", "path"].endswith("/images/train/1.jpg")
    assert reused.loc["validation", "path"].endswith("/images/validation/1.jpg")
    assert Image.open(reused.loc["validation", "path"]).getpixel((4, 4))[2] > 150  # the blue one
    assert pool_ids(manifest, "validation") == ["1", "5"]
    np.testing.assert_array_equal(
        manifest_labels(manifest, ["1", "5"], ctx.label_space(), splits=("validation",)), [[0, 0, 1], [0, 1, 0]])


def test_run_prepare_skips_and_lists_unusable_training_images(data_dir, tmp_path):
    ctx = make_context(data_dir, tmp_path / "run")
    summary = run_prepare(ctx)
    skipped = pd.read_csv(tmp_path / "run" / "skipped_images.csv", dtype=str)
    assert list(skipped.columns) == ["imageId", "split", "status", "reason"]
    assert list(zip(skipped["imageId"], skipped["split"], skipped["status"])) == [
        ("2", "train", "unreadable"), ("6", "validation", "missing")]
    assert summary == {"images": 9, "by_split": {"train": 4, "validation": 2, "test": 3},
                       "by_status": {"ok": 6, "repaired": 1, "unreadable": 1, "missing": 1},
                       "skipped": 2, "skipped_images": str(tmp_path / "run" / "skipped_images.csv")}
    manifest = read_manifest(ctx.run.manifest)
    assert len(manifest) == 9
    assert pool_ids(manifest, "train+validation") == ["1", "3", "4", "5"]
    assert usable_test_ids(manifest) == ["9", "7", "8"]


def test_run_prepare_is_skipped_when_done_and_stale_on_config_change(data_dir, tmp_path, monkeypatch):
    first = run_prepare(make_context(data_dir, tmp_path / "run"))

    def must_not_decode(*args):
        raise AssertionError("a finished prepare stage decoded images again")
    monkeypatch.setattr(prepare, "inspect_image", must_not_decode)
    assert run_prepare(make_context(data_dir, tmp_path / "run")) == {**first, "up_to_date": True}
    with pytest.raises(StaleArtifactError, match="prepare"):
        run_prepare(make_context(data_dir, tmp_path / "run", allow_missing_test_images=True))
    monkeypatch.undo()
    redone = run_prepare(make_context(data_dir, tmp_path / "run", redo={"prepare"}, allow_missing_test_images=True))
    assert redone == first


def test_editing_a_competition_file_rebuilds_the_manifest_without_decoding_again(data_dir, tmp_path, monkeypatch):
    run_prepare(make_context(data_dir, tmp_path / "run"))
    train = data_dir / "train.json"
    doc = json.loads(train.read_text())
    doc["annotations"][0]["labelId"] = ["3"]  # an edited label: an input of the manifest, not a setting
    train.write_text(json.dumps(doc))

    def must_not_decode(*args):
        raise AssertionError("an unchanged image was decoded again")
    monkeypatch.setattr(prepare, "inspect_image", must_not_decode)
    summary = run_prepare(make_context(data_dir, tmp_path / "run"))
    assert "up_to_date" not in summary
    manifest = read_manifest(tmp_path / "run" / "manifest.parquet")
    first_id = str(doc["annotations"][0]["imageId"])
    assert manifest.loc[(manifest["split"] == "train") & (manifest["imageId"] == first_id), "labels"].item() == "3"


def test_unreadable_test_image_is_an_error_naming_it(data_dir, tmp_path):
    (data_dir / "images" / "7.jpg").write_text("not a picture")
    ctx = make_context(data_dir, tmp_path / "run")
    with pytest.raises(UnusableTestImagesError, match=r"1 test image.*\b7 \(unreadable: not an image.*allow_missing_test_images"):
        run_prepare(ctx)
    assert not ctx.run.manifest.exists()


def test_allow_missing_test_images_lists_and_skips_them(data_dir, tmp_path):
    (data_dir / "images" / "7.jpg").unlink()
    ctx = make_context(data_dir, tmp_path / "run", allow_missing_test_images=True)
    summary = run_prepare(ctx)
    assert summary["skipped"] == 3 and summary["by_status"]["missing"] == 2
    skipped = pd.read_csv(tmp_path / "run" / "skipped_images.csv", dtype=str)
    assert ("7", "test", "missing") in set(zip(skipped["imageId"], skipped["split"], skipped["status"]))
    assert usable_test_ids(read_manifest(ctx.run.manifest)) == ["9", "8"]


def test_prepare_on_real_ccp_photos(ccp_dir, tmp_path):
    """The CLI-independent prepare stage on the 2,098 CCP photos (all plain RGB JPEGs)."""
    started = time.perf_counter()
    summary = run_prepare(make_context(ccp_dir, tmp_path / "run"))
    seconds = time.perf_counter() - started
    print(f"CCP prepare: {summary['images']} rows, {summary['by_status']}, {seconds:.2f} s")
    assert summary["images"] == 2098
    assert summary["by_split"] == {"train": 1398, "validation": 300, "test": 400}
    assert summary["by_status"] == {"ok": 2098, "repaired": 0, "unreadable": 0, "missing": 0}
    manifest = read_manifest(tmp_path / "run" / "manifest.parquet")
    assert manifest["imageId"].is_unique
    assert (manifest[["width", "height"]].max(axis=1) == 299).all()  # fitted within 299x299
    assert not (tmp_path / "run" / "repaired").exists()
