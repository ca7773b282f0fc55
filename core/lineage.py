"""The lineage rule, in one place: what a finished unit records and when it is still up to date.

Every unit (the manifest, the folds, a member's fold, a member, a stacker, the decision, ...)
writes its DONE.json last (core.rundir.mark_done). The record holds

  config_hash  the unit's own settings               changed: StaleArtifactError until --redo STAGE
  folds_hash   the fold assignment it was made under  changed: the same
  inputs_hash  one digest per input it actually read: the labels of the ids it trained on, the
               content hash of every image file it decoded, the upstream units' own recorded
               hashes. Changed: recomputed without asking; the log names the inputs that changed.
               Data enters by its place inside the data directory and its content, never by an
               absolute path or an mtime: a moved, copied or touched dataset is the same input
               (stamps only decide when a file must be re-read to learn its content hash).
  artifacts    every file it wrote, with size, mtime, sha256 and, for tables, rows and columns,
               taken right after writing.

A unit is up to date only when all four still hold. Its artifacts are checked before it is
skipped; the check is cheap (one stat per file, the parquet footer; the content is re-hashed
only when the stat differs from the record, to tell a copied or touched file from a changed one),
so it runs on every rerun. A consumer takes an upstream unit only through its DONE record
(core.rundir.upstream_digest): no record, no input. Nothing here deletes anything: a unit is
rebuilt by writing its files over the old ones and its DONE.json last, so a failed rebuild leaves
the previous output in place, and a half-replaced one fails its artifact check.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import pandas as pd

HASH_CHARS = 16  # short hashes: enough to tell versions of one artifact apart, short in logs
_CHUNK = 1 << 20


def short_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:HASH_CHARS]


def digest(value) -> str:
    """Short hash of a JSON-able value (dict keys sorted), e.g. a config section or a record."""
    return short_hash(json.dumps(value, sort_keys=True, default=str).encode())


def file_sha256(path: str | os.PathLike) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            sha.update(block)
    return sha.hexdigest()


def file_stamp(path: str | os.PathLike) -> tuple:
    """(size, mtime_ns) of a file; (0, 0) when it is absent (absence is a state of its own)."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return 0, 0
    return stat.st_size, stat.st_mtime_ns


def file_stamps(paths: Sequence) -> tuple:
    """(sizes, mtimes) int64 arrays for many files: one stat each, nothing read."""
    sizes = np.zeros(len(paths), dtype=np.int64)
    mtimes = np.zeros(len(paths), dtype=np.int64)
    for i, path in enumerate(paths):
        sizes[i], mtimes[i] = file_stamp(path)
    return sizes, mtimes


def stamps_digest(paths: Iterable) -> str:
    """Short hash of files by name, size and mtime (writers replace files atomically, so a
    rewrite always changes the mtime)."""
    parts = [f"{path}:{size}:{mtime}" for path in sorted(map(str, paths)) for size, mtime in [file_stamp(path)]]
    return short_hash("|".join(parts).encode())


def file_digest(path: str | os.PathLike) -> str:
    """Short content hash of a file (read in blocks)."""
    return file_sha256(path)[:HASH_CHARS]


def content_digests(root: str | os.PathLike, paths: Sequence, known: Optional[dict] = None) -> dict:
    """{name relative to root: [size, mtime_ns, content hash]} for files under `root`. A file whose
    name, size and mtime match `known` (the table recorded last time) keeps its recorded hash;
    any other is read and hashed. So a rerun costs a stat per file, and a touched or copied file
    (same bytes, new mtime) a re-read: the hashes, keyed by the place inside root, are the input
    a unit records, not absolute paths or mtimes."""
    known = known or {}
    table = {}
    for path in paths:
        name = os.path.relpath(path, root)
        size, mtime = file_stamp(path)
        recorded = known.get(name)
        if recorded and list(recorded[:2]) == [size, mtime]:
            table[name] = [size, mtime, recorded[2]]
        else:
            table[name] = [size, mtime, file_digest(path)]
    return table


def content_digest(table: dict) -> str:
    """The input digest of a content_digests table: names and contents, not stamps."""
    return digest(sorted((name, entry[2]) for name, entry in table.items()))


class RowDigests:
    """Digests of chosen rows and columns of a table, by key, in the order asked: every cell is
    hashed once (vectorised), then a set of ids costs one lookup and a sha256 of 8 bytes per row
    and column. At a million images a unit's lineage costs a fraction of a second."""

    def __init__(self, keys: Sequence, frame: pd.DataFrame):
        self._position = pd.Index(np.asarray(keys, dtype=object)).astype(str)  # vectorised: no per-id Python
        if self._position.has_duplicates:
            dupes = self._position[self._position.duplicated()].unique()
            raise ValueError(f"row digests need unique keys; duplicated: {list(dupes[:10])}")
        self._cell_hash = {column: pd.util.hash_array(frame[column].to_numpy()) for column in frame.columns}

    def of(self, keys: Sequence, columns: Optional[Sequence[str]] = None) -> str:
        return self.each(keys, {"digest": columns if columns is not None else list(self._cell_hash)})["digest"]

    def each(self, keys: Sequence, column_sets: dict) -> dict:
        """{name: digest of `keys`' rows over those columns}: the ids are looked up once."""
        positions = self._position.get_indexer(pd.Index(np.asarray(keys, dtype=object)).astype(str))
        if (positions < 0).any():
            absent = [k for k, p in zip(keys, positions) if p < 0]
            raise KeyError(f"no row for id(s) {absent[:10]}")
        return {name: short_hash(b"".join(self._cell_hash[c][positions].tobytes() for c in columns))
                for name, columns in column_sets.items()}


# ---- artifacts --------------------------------------------------------------------------------


def artifact_files(unit_dir: Path, paths: Iterable) -> list:
    """The files named by `paths` (relative to unit_dir, or absolute), folders expanded to the
    files under them, as paths relative to unit_dir (a run directory can move)."""
    unit_dir = Path(unit_dir)
    files = []
    for path in paths:
        path = unit_dir / path
        found = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        files += [os.path.relpath(p, unit_dir) for p in found]
    return files


def record_artifact(unit_dir: Path, relative: str) -> dict:
    """What a consumer will check the file against: size, mtime, sha256, rows and columns of a
    table. Raises FileNotFoundError if the writer did not write it."""
    path = _resolve(unit_dir, relative)
    size, mtime = file_stamp(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the unit's artifact was not written")
    record = {"path": relative, "bytes": size, "mtime_ns": mtime, "sha256": file_sha256(path)}
    if path.suffix == ".parquet":
        rows, columns = _parquet_shape(path)
        record.update(rows=rows, columns=columns)
    return record


def check_artifact(unit_dir: Path, record: dict) -> Optional[str]:
    """None if the file is what was written; otherwise what is wrong with it, for the log."""
    path = _resolve(unit_dir, record["path"])
    if not path.is_file():
        return "missing"
    size, mtime = file_stamp(path)
    if (size, mtime) != (record["bytes"], record["mtime_ns"]) and file_sha256(path) != record["sha256"]:
        return f"changed since it was written ({size} bytes, {record['bytes']} when written)"
    if path.suffix == ".parquet":
        try:
            shape = _parquet_shape(path)
        except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
            return f"unreadable ({err})"
        if shape != (record.get("rows"), record.get("columns")):
            return f"has {shape[0]} rows x {len(shape[1])} columns, not the {record.get('rows')} recorded"
    elif path.suffix == ".json":
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            return f"unreadable ({err})"
    return None


def artifacts_digest(records: Sequence[dict]) -> str:
    """A unit's own recorded hash: its artifacts' contents, so a rebuild that writes the same
    bytes leaves its consumers up to date."""
    return digest(sorted((r["path"], r["sha256"]) for r in records))


def _resolve(unit_dir: Path, relative: str) -> Path:
    # lexically: "<run>/prepare/../manifest.parquet" names the manifest even before prepare/ exists
    return Path(os.path.normpath(Path(unit_dir) / relative))


def _parquet_shape(path: Path) -> tuple:
    import pyarrow.parquet as pq
    metadata = pq.read_metadata(path)
    return metadata.num_rows, list(metadata.schema.names)


def changed_inputs(recorded, current) -> list:
    """Names of the inputs whose digest differs ([] when none). Plain strings compare whole."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        return sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))
    return [] if recorded == current else ["inputs"]
