"""Frozen-feature fast path: each image goes through the member's trunk once, the pooled
features (or, for a head that reads the feature map, the map itself in float16) are cached under
members/<m>/embeddings/, and every fold trains only a head on them.

On a 2-core CPU this turns a member's k folds of fine-tuning into one forward pass plus seconds
of head training, which is what makes ablations over members affordable here.
"""
from __future__ import annotations

import dataclasses
import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from fashion_stack.core import atomic
from fashion_stack.core.config import MemberConfig, as_plugin_spec
from fashion_stack.core.lineage import HASH_CHARS, digest
from fashion_stack.core.log import get_logger, progress
from fashion_stack.core.rundir import DONE, mark_done, read_done
from fashion_stack.models.backbones import InputSpec, input_spec_of
from fashion_stack.models.poolings import pooling_layer_name, pooling_of

log = get_logger("members")
# The member fields that change the embeddings; head fields (dropout, loss...) do not.
EMBEDDING_FIELDS = ("backbone", "input_size", "weights", "resize", "pooling", "tta_flip")
# fields added after runs existed: hashed only when set, so those runs keep their caches
HASHED_WHEN_SET = ("region",)
EMBEDDING_HARDWARE_FIELDS = ("mixed_precision",)  # of member.hardware, hashed beside the fields above
# (the image cache is not used here: each image passes through the trunk once)


@dataclass
class EmbeddingTable:
    image_ids: list
    features: np.ndarray  # (n_images, dim) float32, or (n_images, height, width, channels) float16 maps
    mirrored: Optional[np.ndarray]  # features of the horizontally flipped images (flip TTA), or None

    def __post_init__(self):
        self._row = {image_id: i for i, image_id in enumerate(self.image_ids)}

    def rows(self, image_ids: Sequence[str], mirrored: bool = False) -> np.ndarray:
        source = self.mirrored if mirrored else self.features
        if source is None:
            raise ValueError("no mirrored embeddings were computed (member tta_flip is off)")
        missing = [i for i in image_ids if i not in self._row]
        if missing:
            raise KeyError(f"no cached embedding for imageId(s) {missing[:10]}")
        return source[[self._row[i] for i in image_ids]]


def embedding_hash(member: MemberConfig) -> str:
    chosen = {name: getattr(member, name) for name in EMBEDDING_FIELDS}
    chosen.update({name: getattr(member, name) for name in HASHED_WHEN_SET if getattr(member, name) is not None})
    chosen.update({name: getattr(member.hardware, name) for name in EMBEDDING_HARDWARE_FIELDS})
    chosen["pooling"] = dataclasses.asdict(pooling_of(member)) | {"name": as_plugin_spec(member.pooling).name}
    return digest(chosen)


def member_embeddings(member: MemberConfig, image_ids: Sequence[str], paths: Sequence[str],
                      cache_dir: Path, redo: bool = False, content: Optional[str] = None,
                      spec: Optional[InputSpec] = None) -> EmbeddingTable:
    """Embeddings of these images, from the cache when it was made for the same trunk settings
    and the same ids; otherwise computed (all at once) and cached. `content`: a digest of the
    images' contents (the manifest's content hashes), so a moved or touched data directory keeps
    the cache; without it, every file's path, size and mtime stand in for it."""
    cache_dir = Path(cache_dir)
    image_ids = [str(i) for i in image_ids]
    # the trunk settings and the images' content: an image replaced in place makes the cache
    # stale (the heads would otherwise train on the old picture's features)
    wanted = f"{embedding_hash(member)}:{content or _files_stamp(paths)}"
    if not redo and _cache_matches(cache_dir, wanted, image_ids):
        return _read(cache_dir, image_ids, member.tta_flip)
    shutil.rmtree(cache_dir, ignore_errors=True)
    features, mirrored = compute_embeddings(member, paths, spec)
    atomic.write_csv(cache_dir / "image_ids.csv", pd.DataFrame({"imageId": image_ids}))
    _write_array(cache_dir / "features.npy", features)
    if mirrored is not None:
        _write_array(cache_dir / "mirrored.npy", mirrored)
    mark_done(cache_dir, wanted, None, n_images=len(image_ids), shape=list(features.shape[1:]))
    return EmbeddingTable(image_ids, features, mirrored)


def compute_embeddings(member: MemberConfig, paths: Sequence[str], spec: Optional[InputSpec] = None) -> tuple:
    """(features, mirrored features or None), one row per path, in order: float32 vectors, or
    float16 feature maps for a head that reads the map. `spec`: the member's InputSpec as its plan
    resolved it (models.plan); None resolves it when the model is built."""
    # Keras and the readers are imported here, in the process that runs the trunk (a member's
    # child), not where the cache is only checked or read (the pipeline's process)
    from fashion_stack.models.devices import resolve_placement
    from fashion_stack.models.heads import build_embedding_model
    from fashion_stack.models.inputs import prediction_batches
    model = build_embedding_model(member, precision=resolve_placement(member).precision_policy, spec=spec)
    spec = input_spec_of(model)
    dtype = np.float16 if pooling_of(member).reads_map else np.float32
    batches = prediction_batches(paths, spec.size, spec.resize, member.batch_size, reader=member.hardware.reader,
                                 workers=member.hardware.reader_workers)
    plain, mirrored = [], []
    for images in progress(batches, desc=f"embed {member.name}", total=len(batches)):
        images = np.asarray(images, dtype=np.float32)
        plain.append(np.asarray(model.predict_on_batch(images), dtype=dtype))
        if member.tta_flip:
            flipped = np.ascontiguousarray(images[:, :, ::-1])
            mirrored.append(np.asarray(model.predict_on_batch(flipped), dtype=dtype))
    return np.concatenate(plain), (np.concatenate(mirrored) if member.tta_flip else None)


def _cache_matches(cache_dir: Path, wanted: str, image_ids: list) -> bool:
    if not (cache_dir / DONE).exists():
        return False
    if read_done(cache_dir).get("config_hash") != wanted:
        log.info("embedding cache %s was made with other trunk settings; recomputing", cache_dir)
        return False
    cached = list(pd.read_csv(cache_dir / "image_ids.csv", dtype=str)["imageId"])
    if cached != image_ids:
        log.info("embedding cache %s holds other images; recomputing", cache_dir)
        return False
    return True


def _read(cache_dir: Path, image_ids: list, with_mirrored: bool) -> EmbeddingTable:
    features = np.load(cache_dir / "features.npy")
    mirrored = np.load(cache_dir / "mirrored.npy") if with_mirrored else None
    return EmbeddingTable(image_ids, features, mirrored)


def _write_array(path: Path, array: np.ndarray) -> None:
    with atomic.atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, array if array.dtype == np.float16 else np.asarray(array, dtype=np.float32))


def pool_cached_maps(maps: np.ndarray, member: MemberConfig, chunk: int = 256) -> np.ndarray:
    """Cached float16 feature maps (n, height, width, channels) -> the vectors `member`'s pooling
    makes of them, with the same Keras layer the member model uses: one embedding pass of the
    trunk serves every pooling (the heads ablation trains avg, max, bands and CSRA on one pass)."""
    pooling = pooling_of(member)
    if pooling.reads_map:
        return maps
    layer = pooling.pool_layer(pooling_layer_name(member))
    return np.concatenate([np.asarray(layer(np.asarray(maps[i:i + chunk], np.float32)), np.float32)
                           for i in range(0, len(maps), chunk)])


def _files_stamp(paths: Sequence[str]) -> str:
    hasher = hashlib.sha256()
    for path in paths:
        try:
            stat = Path(path).stat()
            hasher.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}|".encode())
        except OSError:
            hasher.update(f"{path}:missing|".encode())
    return hasher.hexdigest()[:HASH_CHARS]
