"""Download stage: fetch every competition image not yet under <data_dir>/images/<imageId>.jpg.

Each body is decoded and re-encoded through the one image policy (datasets.imageops), so what
lands on disk is an upright 8-bit RGB JPEG that fits max_side, and an HTML error page, an empty
body or a cut-off transfer becomes a listed failure instead of a file that breaks training later.
Only transient failures (timeouts, broken connections, HTTP 429 and 5xx) are retried.
"""
from __future__ import annotations

import os
import re
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import pandas as pd
import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ReadTimeoutError

from fashion_stack.core import atomic
from fashion_stack.core.config import DownloadConfig
from fashion_stack.core.context import StageContext
from fashion_stack.core.log import progress
from fashion_stack.datasets import imageops
from fashion_stack.datasets.competition import CompetitionDataError, image_id_problem, images_dir, read_competition

FAILURE_COLUMNS = ["imageId", "url", "reason"]
FAILURES_FILE = "download_failures.csv"
IN_FLIGHT_PER_WORKER = 4  # keeps memory flat over a million URLs while no worker waits for work
RETRY_STATUSES = frozenset({429}) | frozenset(range(500, 600))


@dataclass
class DownloadResult:
    fetched: list = field(default_factory=list)  # imageIds stored by this call
    already_present: int = 0
    failures: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=FAILURE_COLUMNS))
    seconds: float = 0.0


class FetchFailed(Exception):
    """One image could not be stored; str(err) is the reason written to the failures file."""


class _Transient(Exception):
    """A failure worth another attempt; carries the reason to report if attempts run out."""


def image_path(images_dir: Path, image_id: str) -> Path:
    return Path(images_dir) / f"{image_id}.jpg"


def download_images(items: Iterable[tuple], images_dir: str | Path, cfg: DownloadConfig,
                    session: Optional[requests.Session] = None) -> DownloadResult:
    """Fetch each (imageId, url) whose file is missing; return what was fetched and what failed."""
    _check_config(cfg)
    started = time.perf_counter()
    images_dir = Path(images_dir)
    images_dir.mkdir(parents=True, exist_ok=True)
    present = {entry.name for entry in _scan(images_dir)}
    todo, failures, already_present = [], [], 0
    for image_id, url in _unique_items(items):
        if f"{image_id}.jpg" in present:
            already_present += 1
        elif reason := _unfetchable(image_id, url):
            failures.append((image_id, url, reason))
        else:
            todo.append((image_id, url))
    own_session = session is None
    session = session or make_session(cfg.workers)
    try:
        fetched, fetch_failures = _fetch_all(todo, images_dir, cfg, session)
    finally:
        if own_session:
            session.close()
    failures.extend(fetch_failures)
    return DownloadResult(fetched=fetched, already_present=already_present,
                          failures=pd.DataFrame(failures, columns=FAILURE_COLUMNS),
                          seconds=time.perf_counter() - started)


def make_session(workers: int) -> requests.Session:
    """One Session whose connection pool holds a connection per worker; retries are ours."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=workers, pool_maxsize=workers, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _check_config(cfg: DownloadConfig) -> None:
    problems = []
    if cfg.workers < 1:
        problems.append(f"download.workers={cfg.workers} (need >= 1)")
    if cfg.timeout_s <= 0:
        problems.append(f"download.timeout_s={cfg.timeout_s} (need > 0)")
    if cfg.retries < 0 or cfg.backoff_s < 0:
        problems.append(f"download.retries={cfg.retries}, backoff_s={cfg.backoff_s} (need >= 0)")
    if cfg.max_side < 1 or not 1 <= cfg.jpeg_quality <= 95:
        problems.append(f"download.max_side={cfg.max_side}, jpeg_quality={cfg.jpeg_quality} "
                        "(need max_side >= 1 and quality in 1..95)")
    if problems:
        raise ValueError("invalid download config: " + "; ".join(problems))


def _scan(images_dir: Path):
    with os.scandir(images_dir) as entries:
        return [entry for entry in entries if entry.is_file()]


def _unique_items(items: Iterable[tuple]):
    """(imageId, url) pairs, each id once; one id with two urls cannot share one file."""
    seen: dict = {}
    for image_id, url in items:
        image_id, url = str(image_id), str(url)
        if image_id not in seen:
            seen[image_id] = url
            yield image_id, url
        elif seen[image_id] != url:
            raise CompetitionDataError(
                f"imageId {image_id!r} has two urls ({seen[image_id]!r} and {url!r}) but "
                f"images/{image_id}.jpg can hold only one; set data.image_layout: per_split (as the real "
                f"competition needs: its splits reuse imageIds)")


def _unfetchable(image_id: str, url: str) -> str:
    if image_id_problem(image_id):  # read_split refuses these; a caller may pass its own pairs
        return "imageId is not a plain file name"
    if not url.lower().startswith(("http://", "https://")):
        return "not an http(s) url"
    return ""


def _fetch_all(todo: list, images_dir: Path, cfg: DownloadConfig, session: requests.Session):
    fetched, failures = [], []
    pending_items = iter(todo)
    in_flight: dict[Future, tuple] = {}
    with ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="download") as pool, \
            progress(total=len(todo), desc="download", unit="img") as bar:
        def top_up():
            for item in pending_items:
                in_flight[pool.submit(fetch_one, *item, images_dir, cfg, session)] = item
                if len(in_flight) >= cfg.workers * IN_FLIGHT_PER_WORKER:
                    break
        top_up()
        while in_flight:
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                image_id, url = in_flight.pop(future)
                try:
                    future.result()
                    fetched.append(image_id)
                except FetchFailed as err:
                    failures.append((image_id, url, str(err)))
                bar.update(1)
            top_up()
    return fetched, failures


def fetch_one(image_id: str, url: str, images_dir: Path, cfg: DownloadConfig,
              session: requests.Session) -> Path:
    """Fetch, normalise and atomically store one image; raise FetchFailed with the reason."""
    body, content_type = _get_with_retries(url, cfg, session)
    try:
        image, _ = imageops.to_upright_rgb(imageops.open_image(body))
    except imageops.UnreadableImage as err:
        raise FetchFailed(f"{err} (content-type {content_type or 'not given'})") from None
    target = image_path(images_dir, image_id)
    jpeg = imageops.encode_jpeg(imageops.fit_within(image, cfg.max_side), cfg.jpeg_quality)
    atomic.write_bytes(target, jpeg)
    return target


def _get_with_retries(url: str, cfg: DownloadConfig, session: requests.Session) -> tuple:
    attempts = cfg.retries + 1
    for attempt in range(attempts):
        try:
            return _get_once(url, cfg, session)
        except _Transient as err:
            if attempt + 1 == attempts:
                raise FetchFailed(f"{err} (after {attempts} attempts)") from None
            time.sleep(cfg.backoff_s * 2 ** attempt)
    raise AssertionError("unreachable")


def _get_once(url: str, cfg: DownloadConfig, session: requests.Session) -> tuple:
    """(body, content type) of one GET; _Transient for what a retry may fix, FetchFailed else."""
    try:
        with session.get(url, timeout=(cfg.timeout_s, cfg.timeout_s), stream=True) as response:
            if response.status_code in RETRY_STATUSES:
                raise _Transient(f"HTTP {response.status_code}")
            if response.status_code != 200:
                raise FetchFailed(f"HTTP {response.status_code}")
            body = _bounded_body(response)
            content_type = response.headers.get("Content-Type", "")
    except requests.exceptions.ChunkedEncodingError as err:
        # urllib3 2 enforces Content-Length, so a body that ends early lands here
        raise _Transient(f"truncated body: {_incomplete_read(err)}") from None
    except requests.exceptions.Timeout:
        raise _Transient(f"timeout ({cfg.timeout_s:g} s)") from None
    except requests.exceptions.ConnectionError as err:
        if err.args and isinstance(err.args[0], ReadTimeoutError):  # how requests reports a stalled body
            raise _Transient(f"timeout ({cfg.timeout_s:g} s)") from None
        raise _Transient(f"connection error: {_short(err)}") from None
    except requests.exceptions.RequestException as err:
        raise FetchFailed(f"request failed: {_short(err)}") from None
    if not body:
        raise FetchFailed("empty body")
    return body, content_type


def _bounded_body(response, limit: int = None) -> bytes:
    """The body, streamed, refused (FetchFailed) as soon as it passes `limit` bytes (default
    imageops.MAX_IMAGE_BYTES), or at once when Content-Length announces more: a server sending
    a huge body never has it held in memory whole."""
    limit = imageops.MAX_IMAGE_BYTES if limit is None else limit
    announced = response.headers.get("Content-Length", "")
    too_large = f"body larger than {limit:,} bytes, the most an image may have (imageops.MAX_IMAGE_BYTES); not stored"
    if announced.isdigit() and int(announced) > limit:
        raise FetchFailed(f"{too_large} (Content-Length {int(announced):,})")
    chunks, received = [], 0
    for chunk in response.iter_content(chunk_size=1 << 16):
        received += len(chunk)
        if received > limit:
            raise FetchFailed(too_large)
        chunks.append(chunk)
    return b"".join(chunks)


def _incomplete_read(err: Exception) -> str:
    counts = re.search(r"IncompleteRead\((\d+) bytes read, (\d+) more expected", str(err))
    if counts is None:
        return _short(err)
    received, missing = map(int, counts.groups())
    return f"received {received} of {received + missing} bytes"


def _short(err: Exception, limit: int = 160) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_download(ctx: StageContext) -> dict:
    """Fetch every image of train/validation/test missing under the data dir's images; list failures."""
    data = ctx.config.data
    splits = read_competition(ctx.data_dir, {"train": data.train, "validation": data.validation,
                                             "test": data.test}, ctx.label_space())
    # Flat layout: one folder, so an id shared by splits is fetched once (and two urls for one id
    # are refused). Per-split layout: each split is its own batch.
    if data.image_layout == "per_split":
        batches = [(images_dir(ctx.data_dir, name, "per_split"), split.images.assign(split=name))
                   for name, split in splits.items()]
    else:
        batches = [(images_dir(ctx.data_dir, "", "flat"),
                    pd.concat([split.images.assign(split=name) for name, split in splits.items()],
                              ignore_index=True))]
    fetched, present, seconds, failure_tables = 0, 0, 0.0, []
    for folder, wanted in batches:
        result = download_images(zip(wanted["imageId"], wanted["url"]), folder, ctx.config.download)
        fetched += len(result.fetched)
        present += result.already_present
        seconds += result.seconds
        failure_tables.append(wanted.merge(result.failures[["imageId", "reason"]], on="imageId", how="inner"))
    failures = pd.concat(failure_tables, ignore_index=True)[["imageId", "split", "url", "reason"]]
    failures_file = ctx.run.root / FAILURES_FILE
    atomic.write_csv(failures_file, failures)
    summary = {"fetched": fetched, "already_present": present,
               "failed": len(failures.drop_duplicates(["imageId", "split"])), "failures_file": str(failures_file),
               "up_to_date": fetched == 0 and failures.empty}
    ctx.logger("download").info("download: %s in %.1f s", summary, seconds)
    return summary
