"""Logging and progress: one logger for the pipeline, tqdm bars that stay quiet off a terminal."""
from __future__ import annotations

import logging
import sys
import time

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


LINE_INTERVAL_S = 30.0  # off a terminal: one progress line at most this often (and one at the end)


def progress(iterable=None, **kwargs):
    """A tqdm bar on a terminal; anywhere else (a log file, a pipe, a Ray worker's log) plain log
    lines "desc: k/N (r unit/s, ETA t)" at most every LINE_INTERVAL_S, since a redrawn bar there
    leaves carriage returns and cursor-up escapes (`[A`) in the file."""
    stream = kwargs.get("file", sys.stderr)
    if kwargs.get("disable") or not _is_terminal(stream):
        return LineProgress(iterable, desc=kwargs.get("desc", ""), total=kwargs.get("total"),
                            unit=kwargs.get("unit", "it"), disable=bool(kwargs.get("disable")))
    kwargs.setdefault("mininterval", 1.0)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("file", sys.stderr)
    return tqdm(iterable, **kwargs)


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def format_seconds(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class LineProgress:
    """The part of tqdm's interface the pipeline uses (iterate, update, context manager, close),
    reporting as log lines."""

    def __init__(self, iterable=None, desc: str = "", total=None, unit: str = "it", disable: bool = False,
                 interval_s: float = None):
        self.iterable, self.desc, self.unit, self.disable = iterable, desc, unit, disable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n = total, 0
        self.interval_s = LINE_INTERVAL_S if interval_s is None else interval_s
        self._started = self._last = time.monotonic()
        self._closed = False

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __len__(self):
        return self.total or 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if not self.disable and now - self._last >= self.interval_s:
            self._last = now
            get_logger("progress").info("%s", self.line())

    def line(self) -> str:
        elapsed = time.monotonic() - self._started
        rate = self.n / elapsed if elapsed > 0 else float("nan")
        done = f"{self.n}/{self.total}" if self.total else str(self.n)
        eta = f", ETA {format_seconds((self.total - self.n) / rate)}" if self.total and rate > 0 else ""
        return f"{self.desc}: {done} {self.unit} ({rate:.1f} {self.unit}/s{eta})"

    def close(self) -> None:
        # a final line only for work long enough to have been reported on the way
        if not self._closed and not self.disable and time.monotonic() - self._started >= self.interval_s:
            get_logger("progress").info("%s, done", self.line())
        self._closed = True

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def set_description(self, desc: str = "", *args, **kwargs) -> None:
        self.desc = desc
