"""Atomic file writes: every artifact goes to a temporary name in its own folder, then is renamed.

A reader therefore sees either the old complete file or the new complete file, never a
half-written one, even if the process is killed mid-write.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from fashion_stack.core.process import status_field


_UMASK = os.umask(0)  # at import; _umask() reads the current one where the system tells it
os.umask(_UMASK)


def _umask() -> int:
    """The process's umask now. Linux reports it in /proc/self/status (reading it there does not
    set it, which other threads could observe); elsewhere the one read at import."""
    value = status_field("Umask")
    try:
        return int(value, 8) if value is not None else _UMASK
    except ValueError:
        return _UMASK


# In every temporary's name: what a write killed before its rename leaves behind is recognisable
# (remove_leftovers), and no artifact's own name contains it.
PARTIAL = ".partial."


def leftover_files(root: str | os.PathLike) -> list:
    """Temporaries of atomic writes under `root` that were never renamed (the writer was killed)."""
    found = []
    for folder, _, names in os.walk(root):
        found += [Path(folder) / name for name in names if name.startswith(".") and PARTIAL in name]
    return sorted(found)


def remove_leftovers(root: str | os.PathLike) -> list:
    """Remove leftover temporaries under `root` and return their paths. Only safe while no writer
    works under root: the pipeline calls it at the start of a run, holding the run lock."""
    removed = []
    for path in leftover_files(root):
        try:
            path.unlink()
            removed.append(path)
        except OSError:  # gone meanwhile, or not ours to remove: left in place
            continue
    return removed


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    `suffix` ends the temporary name, for writers that insist on an extension (Keras saves only
    to names ending in .keras or .weights.h5)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{PARTIAL}", suffix=suffix, dir=path.parent)
    os.close(fd)
    # mkstemp creates 0600; artifacts should get the same mode as any new file (0666 & ~umask)
    os.chmod(tmp, 0o666 & ~_umask())
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_parquet(path: str | os.PathLike, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, engine="pyarrow")


def write_csv(path: str | os.PathLike, frame: pd.DataFrame, index: bool = False) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=index)


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _json_default(value: Any) -> Any:
    # numpy scalars and paths show up in scores and DONE records
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
