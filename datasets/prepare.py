"""The prepare stage: validate every image of every split once and write the manifest.

Each image is decoded by datasets.images.inspect_image (the image policy); images that need it
get an upright RGB JPEG copy under <run>/repaired/<split>/. Unusable train/validation images are
skipped and listed; an unusable test image stops the run unless the config allows it, since the
submission needs a row for every test image.
"""
from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Optional

import numpy as np

import pandas as pd

from fashion_stack.core import atomic
from fashion_stack.core.context import StageContext
from fashion_stack.core.lineage import content_digest, content_digests, digest, file_digest, file_stamp, file_stamps, short_hash
from fashion_stack.core.log import get_logger, progress
from fashion_stack.core.rundir import is_done, mark_done, read_done, read_summary
from fashion_stack.datasets.competition import CompetitionDataError, Split, example_ids, read_competition
from fashion_stack.datasets.competition import images_dir as split_images_dir
from fashion_stack.datasets.images import REPAIRED, STATUSES, USABLE_STATUSES, inspect_image
from fashion_stack.datasets.manifest import LABELLED_SPLITS, SPLITS, ManifestError, make_manifest, read_manifest

SKIPPED_COLUMNS = ["imageId", "split", "status", "reason"]
# Futures in flight per worker: enough to keep the pool busy, few enough that a 1M-image
# split never holds a million pending futures.
_IN_FLIGHT_PER_WORKER = 8


class UnusableTestImagesError(ValueError):
    """Test images that are missing or do not decode, while the config requires all of them."""


def build_manifest(splits: dict, images_dir: str | Path | Mapping[str, str | Path], repaired_dir: str | Path,
                   workers: int = 2, previous: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """One manifest row per image of every split, in split order (train, validation, test) and
    file order. The image of id X is <folder>/X.jpg, where folder is `images_dir` itself, or
    `images_dir[split]` when it maps each split to its folder (data.image_layout per_split).
    Repaired copies go to <repaired_dir>/<split>/X.jpg: the real splits reuse imageIds.

    `previous`: an earlier manifest of the same data (the folders may have moved since). A row
    whose original file still has the size and mtime recorded there (and whose repaired copy still
    exists) is taken over with the new labels and the current paths instead of decoding the image
    again; a file with another mtime but the recorded content hash (touched, copied without -p)
    costs a re-read, not a decode. So a label edit, a move or a copy costs a stat or a read per
    image; only images whose bytes changed are decoded again."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers} (config data.validate_workers)")
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown split name(s) {unknown}; expected some of {list(SPLITS)}")
    ordered = [splits[name] for name in SPLITS if name in splits]
    folders = _split_folders(images_dir, ordered)
    _refuse_shared_labelled_ids(ordered, folders)
    _refuse_ids_with_two_photos(ordered, folders)
    repaired_dir = Path(repaired_dir).resolve()
    entries = [(split, image_id, labels) for split in ordered for image_id, labels in _split_entries(split)]
    reusable = _reusable_rows(previous)

    def look(entry, rehash: bool) -> Optional[dict]:
        split, image_id, _ = entry
        return _still_valid(reusable.get((split.name, image_id)), folders[split.name] / f"{image_id}.jpg",
                            repaired_dir / split.name / f"{image_id}.jpg", rehash=rehash)

    def inspect(entry) -> dict:
        split, image_id, _ = entry
        fields = look(entry, rehash=True)  # touched or copied: a re-read, then a decode only if the bytes differ
        return fields or inspect_image(folders[split.name] / f"{image_id}.jpg", repaired_dir / split.name / f"{image_id}.jpg")

    # unchanged files (same stamp) in this thread, a stat each; only the rest go to the pool
    known = [look(entry, rehash=False) for entry in entries] if reusable else [None] * len(entries)
    todo = [entry for entry, fields in zip(entries, known) if fields is None]
    fresh = iter(progress(_ordered_map(inspect, todo, workers), total=len(todo), desc="validate images", unit="img"))
    return make_manifest([{"imageId": image_id, "split": split.name, "labels": labels,
                           **(fields if fields is not None else next(fresh))}
                          for (split, image_id, labels), fields in zip(entries, known)])


_FIELDS = ("path", "width", "height", "mode", "bytes", "mtime_ns", "sha256", "status", "reason")


def _reusable_rows(previous: Optional[pd.DataFrame]) -> dict:
    if previous is None or previous.empty:
        return {}
    keys = zip(previous["split"], previous["imageId"])
    return dict(zip(keys, previous[list(_FIELDS)].itertuples(index=False, name=None)))


def _still_valid(row: Optional[tuple], original: Path, repaired: Path, rehash: bool = True) -> Optional[dict]:
    """The previous manifest fields of this image, at its current paths, if its file holds the same
    bytes; else None (decode it again). Same size and mtime: taken as unchanged (one stat). Another
    mtime, or no content hash recorded yet: the file is read and hashed, and kept when the hash
    matches (or fills the missing one)."""
    if row is None:
        return None
    fields = dict(zip(_FIELDS, row))
    if fields["status"] == REPAIRED:
        if not repaired.is_file():
            return None
        fields["path"] = str(repaired)
    else:
        fields["path"] = str(original)
    stamp = file_stamp(original)
    unchanged = stamp == (fields["bytes"], fields["mtime_ns"]) and not (fields["mtime_ns"] == 0 and fields["bytes"])
    if unchanged and (fields["sha256"] or fields["status"] not in USABLE_STATUSES):
        return fields
    if not rehash or fields["status"] not in USABLE_STATUSES or stamp[0] != fields["bytes"] or stamp == (0, 0):
        return None
    try:
        content = file_digest(original)
    except OSError:
        return None
    if fields["sha256"] and content != fields["sha256"]:
        return None
    return {**fields, "mtime_ns": stamp[1], "sha256": content}


def image_files_digest(manifest: pd.DataFrame, folders: Mapping[str, Path], on_disk: bool = True) -> str:
    """Digest of every image file the manifest lists, as it is on disk now (size and mtime of the
    original, whether its repaired copy exists): one stat per image. With on_disk=False, the same
    digest from the stamps the manifest recorded when it inspected them; the two are equal iff no
    listed image was added, removed or replaced since."""
    repaired = (manifest["status"] == REPAIRED).to_numpy()
    if on_disk:
        # plain strings: pathlib objects would cost more than the stat itself at a million files
        prefix = {split: os.path.join(str(folder), "") for split, folder in folders.items()}
        originals = (manifest["split"].map(prefix) + manifest["imageId"] + ".jpg").tolist()
        sizes, mtimes = file_stamps(originals)
        copies = np.array([os.path.isfile(p) for p in manifest.loc[repaired, "path"]], dtype=bool)
    else:
        sizes, mtimes = manifest["bytes"].to_numpy(np.int64), manifest["mtime_ns"].to_numpy(np.int64)
        copies = np.ones(int(repaired.sum()), dtype=bool)
    return short_hash(sizes.tobytes() + mtimes.tobytes() + copies.tobytes())


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


def _refuse_ids_with_two_photos(splits: list, folders: dict) -> None:
    # One folder for several splits and an imageId in two of them with different urls: the two
    # photos would need one file, images/<imageId>.jpg, and one split would be predicted from the
    # other's photo. The download stage refuses the same data (datasets.download); same url, same photo.
    for position, first in enumerate(splits):
        for second in splits[position + 1:]:
            if folders[first.name] != folders[second.name]:
                continue
            both = first.images.merge(second.images, on="imageId", suffixes=("_a", "_b"))
            differ = both.loc[both["url_a"].astype(str) != both["url_b"].astype(str), "imageId"]
            if len(differ):
                raise CompetitionDataError(
                    f"{first.path} and {second.path}: imageId(s) {example_ids(sorted(differ, key=_numeric_first))} "
                    f"have different urls in the two files but one images folder ({folders[first.name]}) holds "
                    "one <imageId>.jpg for both: set data.image_layout: per_split (images/<split>/)")


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
    """Stage entry point: manifest to ctx.run.manifest, skipped images to <run>/skipped_images.csv.
    Up to date when the data settings, the competition files (size, mtime) and every listed image
    file (size, mtime) are as recorded and the manifest passes its artifact check."""
    log = ctx.logger("prepare")
    unit_dir = ctx.run.root / "prepare"
    config_hash = ctx.data_hash()
    data = ctx.config.data
    folders = {name: split_images_dir(ctx.data_dir, name, data.image_layout) for name in SPLITS}
    previous = _previous_manifest(ctx.run.manifest)
    recorded = _previous_record(unit_dir)
    # the competition files by their place in the data directory and their content; the images by
    # the stamps the manifest recorded (any difference: prepare looks again, hashing, not decoding,
    # what only moved or was touched). "location": where the manifest's paths point (the data and
    # run directories): a move rewrites the manifest's paths, and nothing after prepare reads them
    # as an input, so no later unit recomputes.
    competition_files = content_digests(ctx.data_dir, ctx.competition_files(), recorded.get("competition_files"))
    location = digest({"images": {name: str(Path(folder).absolute()) for name, folder in folders.items()},
                       "run": str(ctx.run.root.absolute())})
    inputs = {"competition files": content_digest(competition_files), "location": location,
              "images": image_files_digest(previous, folders) if previous is not None else "unknown"}
    redo = ctx.redo_stage("prepare")
    if is_done(unit_dir, config_hash, None, redo=redo, inputs_hash=inputs):
        log.info("prepare: manifest is up to date (%s), skipped", ctx.run.manifest)
        return {**read_summary(unit_dir), "up_to_date": True}
    started = time.perf_counter()
    splits = read_competition(ctx.data_dir, {"train": data.train, "validation": data.validation,
                                             "test": data.test}, ctx.label_space())
    manifest = build_manifest(splits, {name: folders[name] for name in splits}, ctx.run.root / "repaired",
                              workers=data.validate_workers, previous=None if redo else previous)
    skipped = manifest.loc[~manifest["status"].isin(USABLE_STATUSES), SKIPPED_COLUMNS]
    skipped_path = ctx.run.root / "skipped_images.csv"
    atomic.write_csv(skipped_path, skipped)
    _check_test_images(skipped, data.allow_missing_test_images, folders["test"], skipped_path)
    if len(skipped):
        log.warning("prepare: %d image(s) skipped, listed in %s: %s", len(skipped), skipped_path,
                    example_ids([f"{r.split}/{r.imageId} ({r.reason})" for r in skipped.itertuples()], 5))
    atomic.write_parquet(ctx.run.manifest, manifest)
    summary = summarise(manifest, skipped_path)
    inputs = {**inputs, "images": image_files_digest(manifest, folders, on_disk=False)}
    mark_done(unit_dir, config_hash, None, inputs_hash=inputs, artifacts=[ctx.run.manifest, skipped_path],
              summary=summary, data_dir=str(ctx.data_dir), competition_files=competition_files,
              seconds=round(time.perf_counter() - started, 3))
    return summary


def _previous_record(unit_dir: Path) -> dict:
    try:
        record = read_done(unit_dir)
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _previous_manifest(path: Path) -> Optional[pd.DataFrame]:
    """The manifest of an earlier prepare, if one is there and readable (else None: everything is
    inspected afresh)."""
    if not path.exists():
        return None
    try:
        return read_manifest(path)
    except ManifestError as err:
        get_logger("prepare").warning("%s; every image is inspected again", err)
        return None


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
