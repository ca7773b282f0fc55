"""Worker processes that decode and resize batches of images: the reader for JAX and PyTorch.

A `concurrent.futures.ProcessPoolExecutor` in the "spawn" context: workers start clean (no
copy of a multithreaded JAX/TensorFlow parent, which fork would make), import only this module,
numpy and PIL, and a worker that dies (out of memory, killed) fails the batch with
BrokenProcessPool instead of hanging the epoch. One pool per worker count, kept for the
process's life, so epochs and folds do not pay the start-up again.

As with any "spawn" multiprocessing, a script that trains with this reader must keep its work
under `if __name__ == "__main__":` (run_pipeline.py does); notebooks need nothing.

Each task is one batch: the worker reads the rows it can from the image cache, decodes the rest
(PIL, JPEG draft mode, one resize), writes them to the cache, and returns a uint8 stack.
"""
from __future__ import annotations

import multiprocessing
import multiprocessing.util
import os
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Optional, Sequence

import numpy as np

from fashion_stack.core.registry import ProcessCache
from fashion_stack.models.image_cache import ImageCache
from fashion_stack.models.image_decode import as_hw, decode_or_explain

_POOLS = ProcessCache("decode pools", "spawned decode processes per worker count: started once, reused by every batch")


def default_workers() -> int:
    """Decode processes when the config says none: every CPU this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def decode_pool(workers: int) -> ProcessPoolExecutor:
    pool = _POOLS.get(workers)
    if pool is None:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
        _POOLS[workers] = pool
        # In a multiprocessing child (the local engine's member process) the exit joins its own
        # children before the interpreter's exit hooks would shut the pool down, so the child
        # would wait for idle workers forever: a finalizer that multiprocessing runs before that
        # join shuts the pools down first, and before the pool's queue closes its feeder thread
        # (its own finalizer, priority 10), or the workers' stop signal would never be sent.
        # Elsewhere it runs at exit, as the pools' own hook would.
        multiprocessing.util.Finalize(None, shutdown_pools, exitpriority=100)
    return pool


def shutdown_pools() -> None:
    """Stop every decode pool (tests and benchmarks; a process exit does this too)."""
    for pool in _POOLS.values():
        pool.shutdown(wait=True, cancel_futures=True)
    _POOLS.clear()


def submit_batch(workers: int, paths: Sequence[str], size, resize: str, cache: Optional[ImageCache],
                 rows: Optional[np.ndarray]) -> Future:
    task = (decode_batch, list(paths), size, resize, cache, None if rows is None else np.asarray(rows))
    try:
        return decode_pool(workers).submit(*task)
    except BrokenProcessPool:
        # a worker died earlier (its batch already failed with this error): start a fresh pool
        _POOLS.pop(workers).shutdown(wait=False, cancel_futures=True)
        return decode_pool(workers).submit(*task)


def decode_batch(paths: Sequence[str], size, resize: str, cache: Optional[ImageCache] = None,
                 rows: Optional[np.ndarray] = None) -> np.ndarray:
    """(len(paths), height, width, 3) uint8; cached rows are read, the others decoded (and cached)."""
    height, width = as_hw(size)
    out = np.empty((len(paths), height, width, 3), np.uint8)
    for n, path in enumerate(paths):
        pixels = cache.read(int(rows[n])) if cache is not None else None
        if pixels is None:
            pixels = decode_or_explain(path, size, resize)
            if cache is not None:
                cache.write(int(rows[n]), pixels)
        out[n] = pixels
    return out
