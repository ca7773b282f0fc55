"""Units for the local engine's child-process tests. Their own module, importing nothing heavy:
a child process imports it to unpickle its tasks, and should not pay for TensorFlow to do so."""
from __future__ import annotations

import os
from pathlib import Path

from fashion_stack.core.log import get_logger


def unit_reporting_its_process(value, folder: str):
    """Writes <value>.done holding the pid it ran in, logs a line, and returns its value."""
    get_logger("test").info("unit %s ran in process %d", value, os.getpid())
    Path(folder, f"{value}.done").write_text(str(os.getpid()))
    return value


def unit_that_fails(message: str):
    get_logger("test").info("about to fail in process %d", os.getpid())
    raise ValueError(message)


def unit_whose_process_dies(code: int):
    os._exit(code)


def unit_that_allocates(megabytes: int, folder: str):
    """Holds `megabytes` of touched memory for a moment (a child's peak to report)."""
    block = bytearray(megabytes * 2**20)
    block[::4096] = b"x" * len(block[::4096])
    Path(folder, "allocated.done").write_text(str(os.getpid()))
    return len(block) // 2**20


def unit_that_sleeps(folder: str):
    """Says its pid in sleeping.pid, then sleeps (a unit still running when its parent is stopped)."""
    import time
    Path(folder, "sleeping.pid").write_text(str(os.getpid()))
    time.sleep(600)


def unit_with_a_decode_pool(folder: str):
    """Starts the JAX reader's decode pool (worker processes of the child) and says its worker's pid."""
    from fashion_stack.models.decode_pool import decode_pool
    worker = decode_pool(1).submit(os.getpid).result()
    Path(folder, "worker.pid").write_text(str(worker))
    return worker
