"""The prepare stage: validate every image of every split once and write the manifest.

Each image is decoded by datasets.images.inspect_image (the image policy); images that need it
get an upright RGB JPEG copy under <run>/repaired/<split>/. Unusable train/validation images are
skipped and listed; an unusable test image stops the run unless the config allows it, since the
submission needs a row for every test image.
"""
from __future__ import annotations

import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import pandas as pd

from core import atomic
from core.context import StageContext
from core.log import progress
from core.rundir import is_done, mark_done, read_done
from datasets.competition import CompetitionDataError, Split, example_ids, read_competition
from datasets.competition import images_dir as split_images_dir
from datasets.images import STATUSES, USABLE_STATUSES, inspect_image
from datasets.manifest import LABELLED_SPLITS, SPLITS, make_manifest

SKIPPED_COLUMNS = ["imageId", "split", "status", "reason"]
# Futures in flight per worker: enough to keep the pool busy, few enough that a 1M-image
# split never holds a million pending futures.
_IN_FLIGHT_PER_WORKER = 8


class UnusableTestImagesError(ValueError):
    """Test images that are missing or do not decode, while the config requires all of them."""


def build_manifest(splits: dict, images_dir: str | Path | Mapping[str, str | Path], repaired_dir: str | Path,
                   workers: int = 2) -> pd.DataFrame:
    """One manifest row per image of every split, in split order (train, validation, test) and
    file order. The image of id X is <folder>/X.jpg, where folder is `images_dir` itself, or
    `images_dir[split]` when it maps each split to its folder (data.image_layout per_split).
    Repaired copies go to <repaired_dir>/<split>/X.jpg: the real splits reuse imageIds."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers} (config data.validate_workers)")
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown split name(s) {unknown}; expected some of {list(SPLITS)}")
    ordered = [splits[name] for name in SPLITS if name in splits]
    folders = _split_folders(images_dir, ordered)
    _refuse_shared_labelled_ids(ordered, folders)
    repaired_dir = Path(repaired_dir).resolve()
    entries = [(split, image_id, labels) for split in ordered for image_id, labels in _split_entries(split)]

    def inspect(entry) -> dict:
        split, image_id, labels = entry
        fields = inspect_image(folders[split.name] / f"{image_id}.jpg", repaired_dir / split.name / f"{image_id}.jpg")
        return {"imageId": image_id, "split": split.name, "labels": labels, **fields}

    rows = _ordered_map(inspect, entries, workers)
    return make_manifest(list(progress(rows, total=len(entries), desc="validate images", unit="img")))


def _split_entries(split: Split) -> Iterator[tuple]:
    if not split.labelled:
        return ((image_id, "") for image_id in split.images["imageId"])
    return zip(split.images["imageId"], (" ".join(ids) for ids in split.images["labelIds"]))


def _split_folders(images_dir, splits: list) -> dict:
    if isinstance(images_dir, Mapping):
        missing = [s.name for s in splits if s.name not in images_dir]
        if missing:
            raise ValueError(f"images_dir has no folder for split(s) {missing}")
        return {s.name: Path(images_dir[s.name]).resolve() for s in splits}
    return {s.name: Path(images_dir).resolve() for s in splits}


def _refuse_shared_labelled_ids(splits: list, folders: dict) -> None:
    # One folder for both labelled splits (flat layout) and an id in both: one file would stand for
    # two labelled images. Separate folders (per_split) may reuse ids, as the real competition does;
    # the manifest then tells them apart by split. Test ids may always repeat labelled ones.
    labelled = [s for s in splits if s.name in LABELLED_SPLITS]
    if len(labelled) < 2 or folders[labelled[0].name] != folders[labelled[1].name]:
        return
    shared = sorted(set(labelled[0].image_ids) & set(labelled[1].image_ids), key=_numeric_first)
    if shared:
        raise CompetitionDataError(
            f"{labelled[0].path} and {labelled[1].path} share imageId(s) {example_ids(shared)} but one images "
            f"folder ({folders[labelled[0].name]}), so each such file would stand for two labelled images: "
            "set data.image_layout: per_split (images/train/, images/validation/) or renumber one split")


def _numeric_first(image_id: str) -> tuple:
    return (0, int(image_id), "") if image_id.isdigit() else (1, 0, image_id)


def _ordered_map(fn: Callable, items: list, workers: int) -> Iterable:
    """fn over items on a thread pool, results in input order, a bounded number in flight.
    Threads suffice: Pillow releases the GIL while it decodes and encodes."""
    in_flight = workers * _IN_FLIGHT_PER_WORKER
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="validate") as pool:
        pending: deque = deque()
        for item in items:
            if len(pending) >= in_flight:
                yield pending.popleft().result()
            pending.append(pool.submit(fn, item))
        while pending:
            yield pending.popleft().result()


def run_prepare(ctx: StageContext) -> dict:
    """Stage entry point: manifest to ctx.run.manifest, skipped images to <run>/skipped_images.csv."""
    log = ctx.logger("prepare")
    unit_dir = ctx.run.root / "prepare"
    config_hash = ctx.data_hash()
    if is_done(unit_dir, config_hash, None, redo=ctx.redo_stage("prepare")) and ctx.run.manifest.exists():
        log.info("prepare: manifest is up to date (%s), skipped", ctx.run.manifest)
        return {**read_done(unit_dir)["summary"], "up_to_date": True}
    started = time.perf_counter()
    data = ctx.config.data
    splits = read_competition(ctx.data_dir, {"train": data.train, "validation": data.validation,
                                             "test": data.test}, ctx.label_space())
    folders = {name: split_images_dir(ctx.data_dir, name, data.image_layout) for name in splits}
    manifest = build_manifest(splits, folders, ctx.run.root / "repaired", workers=data.validate_workers)
    skipped = manifest.loc[~manifest["status"].isin(USABLE_STATUSES), SKIPPED_COLUMNS]
    skipped_path = ctx.run.root / "skipped_images.csv"
    atomic.write_csv(skipped_path, skipped)
    _check_test_images(skipped, data.allow_missing_test_images, folders["test"], skipped_path)
    if len(skipped):
        log.warning("prepare: %d image(s) skipped, listed in %s: %s", len(skipped), skipped_path,
                    example_ids([f"{r.split}/{r.imageId} ({r.reason})" for r in skipped.itertuples()], 5))
    atomic.write_parquet(ctx.run.manifest, manifest)
    summary = summarise(manifest, skipped_path)
    mark_done(unit_dir, config_hash, None, summary=summary, data_dir=str(ctx.data_dir),
              seconds=round(time.perf_counter() - started, 3))
    return summary


def _check_test_images(skipped: pd.DataFrame, allowed: bool, images_dir: Path, skipped_path: Path) -> None:
    unusable_test = skipped[skipped["split"] == "test"]
    if unusable_test.empty or allowed:
        return
    listed = [f"{r.imageId} ({r.status}: {r.reason})" for r in unusable_test.itertuples()]
    raise UnusableTestImagesError(
        f"{len(unusable_test)} test image(s) cannot be used: {example_ids(listed)}. A submission needs a row "
        f"for every test image: repair or re-download them in {images_dir}, or set "
        "data.allow_missing_test_images: true to skip them (the submission stage then fills their rows "
        f"with a fallback). Full list: {skipped_path}")


def summarise(manifest: pd.DataFrame, skipped_path: Path) -> dict:
    by_split = manifest["split"].value_counts()
    by_status = manifest["status"].value_counts()
    skipped = int((~manifest["status"].isin(USABLE_STATUSES)).sum())
    return {
        "images": len(manifest),
        "by_split": {name: int(by_split[name]) for name in SPLITS if name in by_split.index},
        "by_status": {status: int(by_status.get(status, 0)) for status in STATUSES},
        "skipped": skipped,
        "skipped_images": str(skipped_path),
    }
