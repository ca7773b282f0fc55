"""Logging and progress: one logger for the pipeline, tqdm bars that stay quiet off a terminal."""
from __future__ import annotations

import logging
import sys

from tqdm.auto import tqdm

LOGGER_NAME = "fashion"


def get_logger(name: str = "") -> logging.Logger:
    return logging.getLogger(f"{LOGGER_NAME}.{name}" if name else LOGGER_NAME)


def setup_logging(level: int = logging.INFO) -> logging.Logger:
    logger = logging.getLogger(LOGGER_NAME)
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(level)
    return logger


class _StderrHandler(logging.StreamHandler):
    """Writes to sys.stderr as it is when a record is logged, not as it was when logging was set
    up (a caller, or pytest between tests, may have replaced it since)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def progress(iterable=None, **kwargs):
    """A progress bar on stderr; `mininterval` keeps log files from filling up with redraws."""
    kwargs.setdefault("mininterval", 1.0)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("file", sys.stderr)
    return tqdm(iterable, **kwargs)
