"""Reader for the competition's JSON files (train / validation / test), plain or zipped.

The real files look like
    {"images": [{"url": "...", "imageId": "1"}], "annotations": [{"labelId": ["62", "17"], "imageId": "1"}]}
with string ids in train/validation and integer ids in test. Every id is normalised to str here.
"""
from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pandas as pd

from fashion_stack.core.labels import LabelSpace
from fashion_stack.core.log import get_logger


class CompetitionDataError(ValueError):
    """A competition file whose content breaks the format; the message names file and ids."""


@dataclass
class Split:
    name: str
    path: Path
    images: pd.DataFrame  # columns imageId (str), url, labelIds (list[str]; absent for test)
    duplicate_labels_merged: int = 0  # labelIds repeated within one image's annotation
    notes: list = field(default_factory=list)

    @property
    def labelled(self) -> bool:
        return "labelIds" in self.images.columns

    @property
    def image_ids(self) -> list:
        return list(self.images["imageId"])

    def label_matrix(self, label_space: LabelSpace):
        return label_space.encode(self.images["labelIds"])


def resolve_path(path: str | Path) -> Path:
    """`x.json` if present, else `x.json.zip` (the competition ships both)."""
    path = Path(path)
    if path.exists():
        return path
    zipped = path.with_name(path.name + ".zip")
    if zipped.exists():
        return zipped
    raise FileNotFoundError(f"{path} not found (nor {zipped.name}); check data.dir and the file names in the config")


# Bounds on what a competition file may hold once read: the real train.json is about 200 MB. A
# zipped one may expand at most MAX_ZIP_RATIO times its compressed size (JSON compresses 5 to 20
# times; a zip bomb a thousand times and more). Checked while reading, not from the zip's header.
MAX_JSON_BYTES = 2 * 2**30
MAX_ZIP_RATIO = 100


class _DuplicateKey(ValueError):
    pass


def _refuse_duplicate_keys(pairs: list) -> dict:
    """json object_pairs_hook: a key given twice in one object is refused (json would keep the last
    one silently, e.g. a second "annotations" list replacing the first)."""
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def load_json(path: Path) -> dict:
    try:
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as archive:
                members = [n for n in archive.namelist() if n.endswith(".json")]
                if len(members) != 1:
                    raise CompetitionDataError(f"{path}: expected one .json inside, found {members}")
                info = archive.getinfo(members[0])
                limit = min(MAX_JSON_BYTES, max(info.compress_size, 1) * MAX_ZIP_RATIO)
                with archive.open(info) as member:
                    data = member.read(limit + 1)
                if len(data) > limit:
                    raise CompetitionDataError(
                        f"{path}: {members[0]} expands beyond {limit:,} bytes ({MAX_ZIP_RATIO} times its "
                        f"compressed {info.compress_size:,}, at most {MAX_JSON_BYTES:,}); not a competition file "
                        "(a zip bomb?): unzip it yourself if it is genuine")
        else:
            size = path.stat().st_size
            if size > MAX_JSON_BYTES:
                raise CompetitionDataError(f"{path}: {size:,} bytes, more than the {MAX_JSON_BYTES:,} a competition "
                                           "file may have (competition.MAX_JSON_BYTES); not read")
            data = path.read_bytes()
        return json.loads(data.decode("utf-8"), object_pairs_hook=_refuse_duplicate_keys)
    except _DuplicateKey as err:
        raise CompetitionDataError(f"{path}: the key {str(err)!r} appears twice in one object; JSON readers keep "
                                   "only one of them, so the file is ambiguous: remove or merge the duplicate") from None
    except (json.JSONDecodeError, UnicodeDecodeError, zipfile.BadZipFile) as err:
        raise CompetitionDataError(f"{path}: not valid JSON ({err})") from err
    except RecursionError:
        raise CompetitionDataError(f"{path}: nested too deeply to be a competition file") from None


def example_ids(ids, limit: int = 10) -> str:
    """The first `limit` ids for an error message, and how many more there are."""
    ids = list(ids)
    more = f" (and {len(ids) - limit} more)" if len(ids) > limit else ""
    return ", ".join(map(str, ids[:limit])) + more


def read_split(path: str | Path, name: str, label_space: Optional[LabelSpace] = None,
               labelled: Optional[bool] = None) -> Split:
    """Read one split. `labelled=None` takes annotations if the file has them.

    Duplicate labelIds within an image are merged and counted. An unknown labelId, a duplicate
    imageId, an annotation without an image, or (in a labelled split) an image without an
    annotation raises CompetitionDataError naming the ids: each means the file is not the one
    the user thinks it is, and silently dropping rows would shift every score.
    """
    path = resolve_path(path)
    doc = load_json(path)
    if not isinstance(doc, dict) or "images" not in doc:
        raise CompetitionDataError(f"{path}: expected an object with an 'images' list")
    images = _read_images(doc["images"], path)
    has_annotations = "annotations" in doc
    if labelled is None:
        labelled = has_annotations
    split = Split(name=name, path=path, images=images)
    if labelled:
        if not has_annotations:
            raise CompetitionDataError(f"{path}: split {name!r} needs 'annotations' but the file has none")
        labels, merged = _read_annotations(doc["annotations"], images, path, label_space)
        split.images = images.assign(labelIds=labels)
        split.duplicate_labels_merged = merged
    return split


def image_id_problem(image_id: str) -> str:
    """'' when `image_id` can name a file inside its images folder (images/<imageId>.jpg) and
    nothing else; otherwise what is wrong with it. The reader checks every id with this, once, so
    no stage that builds a path from an id can be led outside the data or run directory."""
    if not image_id:
        return "is empty"
    if "/" in image_id or "\\" in image_id:
        return "contains a path separator"
    if ".." in image_id:
        return "contains '..'"
    if _CONTROL_CHARACTERS.search(image_id):
        return "contains a control character"
    if len(image_id.encode("utf-8")) > MAX_ID_BYTES:
        return f"is longer than {MAX_ID_BYTES} bytes (the file name <imageId>.jpg must fit a file system's 255)"
    return ""


MAX_ID_BYTES = 200


_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


def _checked_id(raw, path: Path, where: str) -> str:
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        raise CompetitionDataError(f"{path}: {where}: imageId must be a string or an integer, got {raw!r}")
    image_id = str(raw).strip()
    problem = image_id_problem(image_id)
    if problem:
        raise CompetitionDataError(f"{path}: {where}: imageId {image_id!r} {problem}; an imageId names the file "
                                   "images/<imageId>.jpg, so it must be a plain file name")
    return image_id


def _checked_label_ids(raw, path: Path, where: str) -> list:
    if not isinstance(raw, list):
        shown = f"the string {raw!r}" if isinstance(raw, str) else repr(raw)
        raise CompetitionDataError(f"{path}: {where}: labelId must be a list of label ids, e.g. [\"62\", \"17\"]; "
                                   f"got {shown}")
    bad = [label for label in raw if isinstance(label, bool) or not isinstance(label, (str, int))
           or not str(label).strip()]
    if bad:
        raise CompetitionDataError(f"{path}: {where}: labelId entries must be non-empty strings or integers; "
                                   f"got {bad[:5]!r}")
    labels = [str(label).strip() for label in raw]
    spaced = [label for label in labels if label_id_problem(label)]
    if spaced:
        raise CompetitionDataError(f"{path}: {where}: labelId {spaced[0]!r} {label_id_problem(spaced[0])}; "
                                   "list several labels as separate entries, e.g. [\"1\", \"2\"]")
    return labels


def label_id_problem(label_id: str) -> str:
    """'' for a usable labelId; else what is wrong. Label ids are written space-separated (the
    manifest, the submission), so one with whitespace inside would be read back as two."""
    if re.search(r"\s", label_id):
        return "contains whitespace (label ids are written space-separated, so it would become two labels)"
    if _CONTROL_CHARACTERS.search(label_id):
        return "contains a control character"
    return ""


def _read_images(records, path: Path) -> pd.DataFrame:
    if not isinstance(records, list):
        raise CompetitionDataError(f"{path}: 'images' must be a list of {{imageId, url}} records")
    rows = []
    for position, record in enumerate(records):
        if not isinstance(record, dict) or "imageId" not in record:
            raise CompetitionDataError(f"{path}: images[{position}] has no imageId")
        rows.append((_checked_id(record["imageId"], path, f"images[{position}]"), record.get("url", "")))
    images = pd.DataFrame(rows, columns=["imageId", "url"])
    dupes = images["imageId"][images["imageId"].duplicated()].unique()
    if len(dupes):
        raise CompetitionDataError(f"{path}: duplicate imageId(s) in images: {example_ids(dupes)}")
    return images


def _read_annotations(records, images: pd.DataFrame, path: Path, label_space: Optional[LabelSpace]):
    by_id: dict = {}
    merged = 0
    duplicated_annotations = []
    if not isinstance(records, list):
        raise CompetitionDataError(f"{path}: 'annotations' must be a list of {{imageId, labelId}} records")
    for position, record in enumerate(records):
        if not isinstance(record, dict) or "imageId" not in record or "labelId" not in record:
            raise CompetitionDataError(f"{path}: annotations[{position}] needs imageId and labelId")
        image_id = _checked_id(record["imageId"], path, f"annotations[{position}]")
        if image_id in by_id:
            duplicated_annotations.append(image_id)
        raw = _checked_label_ids(record["labelId"], path, f"annotations[{position}] (imageId {image_id!r})")
        unique = list(dict.fromkeys(raw))
        merged += len(raw) - len(unique)
        by_id[image_id] = unique
    if duplicated_annotations:
        raise CompetitionDataError(f"{path}: several annotations for imageId(s) {example_ids(duplicated_annotations)}")
    known = set(images["imageId"])
    orphans = [i for i in by_id if i not in known]
    if orphans:
        raise CompetitionDataError(f"{path}: annotations for imageId(s) not in images: {example_ids(orphans)}")
    unlabelled = [i for i in images["imageId"] if i not in by_id]
    if unlabelled:
        raise CompetitionDataError(
            f"{path}: image(s) without an annotation in a labelled split: {example_ids(unlabelled)}")
    empty = [i for i, labels in by_id.items() if not labels]
    if empty:
        raise CompetitionDataError(f"{path}: annotation(s) with no labelId for imageId(s) {example_ids(empty)}")
    if label_space is not None:
        unknown = {}
        valid = set(label_space.label_ids)
        for image_id, labels in by_id.items():
            for label in labels:
                if label not in valid:
                    unknown.setdefault(label, []).append(image_id)
        if unknown:
            detail = "; ".join(f"labelId {lab!r} on imageId(s) {example_ids(ids, 5)}" for lab, ids in unknown.items())
            raise CompetitionDataError(f"{path}: unknown labelId(s) for this label map: {detail}")
    return [by_id[i] for i in images["imageId"]], merged


def images_dir(data_dir: Path, split: str, layout: str = "flat") -> Path:
    """Where a split's images live: images/ (flat) or images/<split>/ (per_split)."""
    root = Path(data_dir) / "images"
    return root / split if layout == "per_split" else root


def read_competition(data_dir: Path, files: dict, label_space: LabelSpace) -> dict:
    """{'train': Split, 'validation': Split, 'test': Split} for the files that exist.

    `files` maps split name to file name; a missing train or validation file is allowed when the
    other is present (CCP ships both; a user may have only one), a missing test file is not.
    """
    splits = {}
    for name, file_name in files.items():
        try:
            resolved = resolve_path(Path(data_dir) / file_name)
        except FileNotFoundError:
            if name == "test":
                raise
            get_logger("data").warning("%s: no %s file (%s); that split is left out", data_dir, name, file_name)
            continue
        splits[name] = read_split(resolved, name, label_space, labelled=(name != "test"))
    if not ({"train", "validation"} & set(splits)):
        raise FileNotFoundError(f"{data_dir}: neither a train nor a validation file found ({files})")
    return splits
