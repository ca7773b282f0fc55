"""Decoded, resized images kept between epochs and folds: one fixed-size uint8 row per image.

A cache covers a member's whole training universe (every fold's training paths) at one size and
resize policy, so all folds and epochs share it; its rows are filled by whichever reader decodes
an image first (the tf.data map or a decode worker process) and reused after that. tf.data's own
`cache()` cannot do this: it replays one fixed sequence, while each epoch here reads a new
permutation and each fold a different subset.

Storage is one flat file of rows plus one 8-byte check per row (CRC-32 of the row with a "filled"
bit): a row is used only when its check matches its bytes, so a row half-written by a killed
process, or a stale file, is decoded again rather than trusted. Rows are read and written with
pread/pwrite, never mmap'd: pages of a disk cache stay in the OS page cache (reclaimable), not in
the process's resident memory.

- "disk": <cache_dir>/v<version>-<h>x<w>-<policy>-<hash of the rows' contents (or paths)>.pixels, kept after the
  run, so a resumed run or another member at the same size and policy reuses it.
- "memory": the same layout in an anonymous in-RAM file (Linux memfd: freed with the last process
  holding it, even after kill -9), else a temporary file; decode workers open it by name.

Worker processes import this module: numpy and the standard library only.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import weakref
import zlib
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from fashion_stack.core.lineage import short_hash
from fashion_stack.models.image_decode import as_hw, check_policy

CACHE_MODES = ("auto", "memory", "disk", "none")
FILLED = 1 << 32  # set in a row's check once its bytes are written
CRC_MASK = 0xFFFFFFFF
CHECK_BYTES = 8
FORMAT_VERSION = 1  # in the disk file's name: bump when the decoder's pixels change


class ImageCache:
    """Rows of (height, width, 3) uint8 pixels for `paths`, addressed by row number.

    Picklable: a copy carries the file name and row shape (not the path index), so a decode
    worker process opens the same file.
    """

    def __init__(self, file: str, paths: Sequence[str], size, resize: str, mode: str,
                 owner_fd: Optional[int] = None):
        self.file, self.mode, self.resize = str(file), mode, resize
        self.height, self.width = as_hw(size)
        self.n_rows = len(paths)
        self.row_bytes = self.height * self.width * 3
        self._index: Optional[dict] = {str(path): row for row, path in enumerate(paths)}
        self._fd: Optional[int] = None
        if owner_fd is not None:  # the fd that keeps a memory cache alive in the process that made it
            weakref.finalize(self, os.close, owner_fd)

    def __repr__(self) -> str:
        return (f"{self.mode} cache of {self.n_rows} {self.height}x{self.width} {self.resize} images "
                f"({self.nbytes / 2**20:.0f} MiB at most)")

    @property
    def nbytes(self) -> int:
        return self.n_rows * (self.row_bytes + CHECK_BYTES)

    def rows(self, paths: Sequence[str]) -> np.ndarray:
        """Row numbers of these paths; every path must be in the cache."""
        if self._index is None:
            raise RuntimeError("a worker's copy of the image cache has no path index; pass row numbers")
        rows = np.fromiter((self._index.get(str(p), -1) for p in paths), dtype=np.int64, count=len(paths))
        missing = np.flatnonzero(rows < 0)
        if len(missing):
            raise ValueError(f"{len(missing)} of {len(paths)} image paths are not in the image cache (first: "
                             f"{paths[missing[0]]}); build the cache over every fold's training paths")
        return rows

    def read(self, row: int) -> Optional[np.ndarray]:
        """The row's pixels, or None when it was never written or fails its check."""
        fd = self._open()
        check = int.from_bytes(os.pread(fd, CHECK_BYTES, self._check_offset(row)), "little")
        if not check & FILLED:
            return None
        data = os.pread(fd, self.row_bytes, row * self.row_bytes)
        if len(data) != self.row_bytes or zlib.crc32(data) != check & CRC_MASK:
            return None
        return np.frombuffer(data, dtype=np.uint8).reshape(self.height, self.width, 3)

    def write(self, row: int, pixels: np.ndarray) -> None:
        """Pixels first, check last: a reader sees no check or a complete row."""
        data = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
        if len(data) != self.row_bytes:
            raise ValueError(f"image cache rows are {self.height}x{self.width}x3, got shape {np.shape(pixels)}")
        fd = self._open()
        os.pwrite(fd, data, row * self.row_bytes)
        os.pwrite(fd, (FILLED | zlib.crc32(data)).to_bytes(CHECK_BYTES, "little"), self._check_offset(row))

    def filled(self) -> int:
        """How many rows hold pixels (their checks say filled; the bytes are checked on read)."""
        checks = np.frombuffer(os.pread(self._open(), self.n_rows * CHECK_BYTES, self._check_offset(0)),
                               dtype="<u8")
        return int(np.count_nonzero(checks & np.uint64(FILLED)))

    def _check_offset(self, row: int) -> int:
        return self.n_rows * self.row_bytes + row * CHECK_BYTES

    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.file, os.O_RDWR)
            weakref.finalize(self, os.close, self._fd)
        return self._fd

    def __getstate__(self):
        state = dict(self.__dict__)
        state.update(_fd=None, _index=None)
        return state


def image_cache(mode: str, cache_dir, paths: Sequence[str], size, resize: str,
                budget_bytes: int, contents: Optional[Sequence[str]] = None) -> Optional[ImageCache]:
    """The cache for a member's training universe, or None (mode "none", or "auto" when the set
    neither fits `budget_bytes` of RAM nor the free space under `cache_dir`).

    auto: memory when the whole set fits the budget, else disk when cache_dir is given and has
    room, else none. `contents`: each path's content hash (the manifest's sha256), in order: a
    disk cache is then named by what its rows hold, so it survives a moved data directory and is
    never reused for an image replaced in place; without it, by the paths.
    """
    if mode not in CACHE_MODES:
        raise ValueError(f"unknown cache mode {mode!r}; use one of {CACHE_MODES} (member config `cache`)")
    check_policy(resize)
    if mode == "none" or not len(paths):
        return None
    paths = [str(p) for p in paths]
    height, width = as_hw(size)
    needed = len(paths) * (height * width * 3 + CHECK_BYTES)
    if mode == "auto":
        if needed <= budget_bytes:
            mode = "memory"
        elif cache_dir is not None and _free_bytes(cache_dir) > needed * 1.1:
            mode = "disk"
        else:
            return None
    if mode == "memory":
        return _memory_cache(paths, size, resize, needed)
    if cache_dir is None:
        raise ValueError("cache mode 'disk' needs a cache directory (the member's folder in the run directory)")
    return _disk_cache(Path(cache_dir), paths, size, resize, needed, contents)


def _free_bytes(folder) -> int:
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def _memory_cache(paths, size, resize, needed: int) -> ImageCache:
    if hasattr(os, "memfd_create") and Path(f"/proc/{os.getpid()}/fd").is_dir():
        fd = os.memfd_create("image-cache")
        os.ftruncate(fd, needed)  # sparse: RAM is taken as rows are written
        return ImageCache(f"/proc/{os.getpid()}/fd/{fd}", paths, size, resize, "memory", owner_fd=fd)
    handle, name = tempfile.mkstemp(prefix="image-cache-", suffix=".pixels")
    os.ftruncate(handle, needed)
    cache = ImageCache(name, paths, size, resize, "memory", owner_fd=handle)
    weakref.finalize(cache, _remove, name)
    return cache


def _disk_cache(cache_dir: Path, paths, size, resize, needed: int, contents=None) -> ImageCache:
    height, width = as_hw(size)
    rows = [str(c) for c in contents] if contents is not None else paths  # what row i holds
    key = short_hash("\n".join(rows).encode())
    file = cache_dir / f"v{FORMAT_VERSION}-{height}x{width}-{resize}-{key}.pixels"
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(file, "ab") as handle:  # creates it, or keeps the rows already there
        if handle.tell() != needed:
            handle.truncate(needed)  # a wrong-sized file is foreign: its rows fail their checks
    return ImageCache(str(file), paths, size, resize, "disk")


def _remove(name: str) -> None:
    try:
        os.remove(name)
    except OSError:
        pass
