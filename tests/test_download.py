"""Download stage against a local HTTP server: normalised files, failure reasons, retries, reruns."""
from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

from benchmarks.local_http import LocalServer, send_body, static
from fashion_stack.core.config import DownloadConfig, PipelineConfig
from fashion_stack.core.context import StageContext
from fashion_stack.core.rundir import RunDir
from fashion_stack.datasets.competition import CompetitionDataError
from fashion_stack.datasets.download import download_images, run_download

# Short timeouts and backoff keep the whole file to a few seconds.
FAST = DownloadConfig(workers=4, timeout_s=0.3, retries=2, backoff_s=0.01, max_side=299, jpeg_quality=90)
ATTEMPTS = FAST.retries + 1


def jpeg_bytes(size=(40, 30), colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def gradient_jpeg(size=(1200, 800)) -> bytes:
    x = np.linspace(0, 255, size[0], dtype=np.uint8)
    pixels = np.stack([np.tile(x, (size[1], 1))] * 3, axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def half_transparent_png() -> bytes:
    pixels = np.zeros((20, 20, 4), dtype=np.uint8)
    pixels[:, 10:] = (255, 0, 0, 255)  # left half fully transparent, right half opaque red
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def slow(handler):
    if not handler.server.stopping.wait(2.0):  # well past FAST.timeout_s
        send_body(handler, jpeg_bytes(), "image/jpeg")


def truncated(handler):
    body = jpeg_bytes()
    send_body(handler, body[: len(body) // 2], "image/jpeg", declared_length=len(body))


def stalled(handler):
    body = jpeg_bytes()
    handler.send_response(200)
    handler.send_header("Content-Type", "image/jpeg")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body[:100])
    handler.wfile.flush()
    if not handler.server.stopping.wait(2.0):
        handler.wfile.write(body[100:])


def flaky(handler):
    if handler.server.requests[handler.path] == 1:
        send_body(handler, b"busy", "text/plain", status=503)
    else:
        send_body(handler, jpeg_bytes(colour=(0, 90, 200)), "image/jpeg")


ROUTES = {
    "/good/a.jpg": static(jpeg_bytes(colour=(10, 200, 10))),
    "/good/b.jpg": static(jpeg_bytes(colour=(10, 10, 200))),
    "/alpha.png": static(half_transparent_png(), "image/png"),
    "/large.jpg": static(gradient_jpeg()),
    "/flaky.jpg": flaky,
    "/forbidden.jpg": static(b"no", "text/plain", status=403),
    "/rate-limited.jpg": static(b"slow down", "text/plain", status=429),
    "/page.html": static(b"<html><body>Sorry, this photo was removed</body></html>", "text/html"),
    "/empty.jpg": static(b"", "image/jpeg"),
    "/slow.jpg": slow,
    "/truncated.jpg": truncated,
    "/stalled.jpg": stalled,
}

GOOD = {"a": "/good/a.jpg", "b": "/good/b.jpg", "alpha": "/alpha.png", "large": "/large.jpg",
        "flaky": "/flaky.jpg"}
BAD = {  # imageId: (path, start of the reason, requests expected)
    "gone": ("/missing.jpg", "HTTP 404", 1),
    "forbidden": ("/forbidden.jpg", "HTTP 403", 1),
    "limited": ("/rate-limited.jpg", "HTTP 429 (after 3 attempts)", ATTEMPTS),
    "html": ("/page.html", "not an image", 1),
    "empty": ("/empty.jpg", "empty body", 1),
    "slow": ("/slow.jpg", "timeout (0.3 s) (after 3 attempts)", ATTEMPTS),
    "cut": ("/truncated.jpg", "truncated body: received", ATTEMPTS),
    "stalled": ("/stalled.jpg", "timeout (0.3 s) (after 3 attempts)", ATTEMPTS),
}


@pytest.fixture(scope="module")
def server():
    with LocalServer(ROUTES) as local:
        yield local


@pytest.fixture(scope="module")
def first_run(server, tmp_path_factory):
    images_dir = tmp_path_factory.mktemp("data") / "images"
    paths = {**GOOD, **{image_id: path for image_id, (path, _, _) in BAD.items()}}
    items = [(image_id, server.url(path)) for image_id, path in paths.items()]
    result = download_images(items, images_dir, FAST)
    return {"items": items, "images_dir": images_dir, "result": result,
            "requests": dict(server.requests)}


def stored(images_dir, image_id) -> Image.Image:
    image = Image.open(images_dir / f"{image_id}.jpg")
    image.load()
    return image


def test_good_images_are_stored_as_decodable_rgb_jpegs(first_run):
    result, images_dir = first_run["result"], first_run["images_dir"]
    assert sorted(result.fetched) == sorted(GOOD)
    assert result.already_present == 0
    for image_id in GOOD:
        image = stored(images_dir, image_id)
        assert (image.format, image.mode) == ("JPEG", "RGB")
    assert sorted(p.name for p in images_dir.iterdir()) == sorted(f"{i}.jpg" for i in GOOD)


def test_large_image_fits_max_side_with_aspect_kept(first_run):
    image = stored(first_run["images_dir"], "large")
    reference = ImageOps.contain(Image.open(io.BytesIO(gradient_jpeg())), (299, 299))
    assert image.size == reference.size == (299, 199)
    difference = np.abs(np.asarray(image, float) - np.asarray(reference.convert("RGB"), float))
    assert difference.mean() < 3.0


def test_alpha_is_composited_on_white(first_run):
    pixels = np.asarray(stored(first_run["images_dir"], "alpha"), dtype=int)
    assert np.abs(pixels[10, 2] - (255, 255, 255)).max() < 8
    assert np.abs(pixels[10, 17] - (255, 0, 0)).max() < 12


def test_each_failure_has_its_reason(first_run):
    failures = first_run["result"].failures
    assert list(failures.columns) == ["imageId", "url", "reason"]
    reasons = dict(zip(failures["imageId"], failures["reason"]))
    assert sorted(reasons) == sorted(BAD)
    for image_id, (path, reason_start, _) in BAD.items():
        assert reasons[image_id].startswith(reason_start), (image_id, reasons[image_id])
    assert reasons["html"].endswith("(content-type text/html)")
    urls = dict(zip(failures["imageId"], failures["url"]))
    assert urls["gone"].endswith("/missing.jpg")


def test_only_transient_failures_are_retried(first_run):
    requests = first_run["requests"]
    assert requests["/flaky.jpg"] == 2  # 503 once, then the image
    for image_id, (path, _, expected) in BAD.items():
        assert requests[path] == expected, image_id
    for path in ("/good/a.jpg", "/good/b.jpg", "/alpha.png", "/large.jpg"):
        assert requests[path] == 1


def test_rerun_fetches_nothing_that_is_present(first_run, server):
    before = dict(server.requests)
    again = download_images(first_run["items"], first_run["images_dir"], FAST)
    assert again.fetched == []
    assert again.already_present == len(GOOD)
    assert sorted(again.failures["imageId"]) == sorted(BAD)  # missing ones are tried again
    for path in GOOD.values():
        assert server.requests[path] == before[path]


def test_non_http_urls_fail_only_when_missing(tmp_path):
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    (images_dir / "here.jpg").write_bytes(jpeg_bytes())
    result = download_images([("here", "ccp/photos/0001.jpg"), ("lost", "ccp/photos/0002.jpg"),
                              ("refused", "http://127.0.0.1:9/x.jpg"),
                              ("../escape", "http://127.0.0.1:9/y.jpg")], images_dir, FAST)
    reasons = dict(zip(result.failures["imageId"], result.failures["reason"]))
    assert result.already_present == 1
    assert reasons["lost"] == "not an http(s) url"
    assert reasons["../escape"] == "imageId is not a plain file name"
    # nothing listens on port 9: a refused connection is transient, so it is retried, then listed
    assert reasons["refused"].startswith("connection error") and reasons["refused"].endswith("(after 3 attempts)")
    assert sorted(p.name for p in images_dir.iterdir()) == ["here.jpg"]


def test_one_id_with_two_urls_is_refused():
    with pytest.raises(CompetitionDataError, match="imageId '7' has two urls"):
        download_images([("7", "http://a/1.jpg"), ("7", "http://a/2.jpg")], "unused", FAST)


@pytest.mark.parametrize("field, value", [("workers", 0), ("timeout_s", 0.0), ("retries", -1)])
def test_bad_config_is_refused_naming_the_field(tmp_path, field, value):
    cfg = DownloadConfig(**{**FAST.__dict__, field: value})
    with pytest.raises(ValueError, match=f"download.{field}"):
        download_images([], tmp_path, cfg)


def write_competition(data_dir, train, validation, test):
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "label_map.csv").write_text("labelId,labelName\n1,shirt\n2,skirt\n3,red\n")

    def document(images, labelled):
        doc = {"images": [{"url": url, "imageId": image_id} for image_id, url in images]}
        if labelled:
            doc["annotations"] = [{"labelId": ["1", "3"], "imageId": image_id} for image_id, _ in images]
        return json.dumps(doc)

    (data_dir / "train.json").write_text(document(train, True))
    (data_dir / "validation.json").write_text(document(validation, True))
    (data_dir / "test.json").write_text(document(test, False))


def stage_context(tmp_path, data_dir) -> StageContext:
    config = PipelineConfig()
    config.data.dir = str(data_dir)
    config.download = FAST
    return StageContext(config=config, run=RunDir(tmp_path / "run"), data_dir=data_dir)


def test_run_download_end_to_end_and_rerun(server, tmp_path):
    data_dir = tmp_path / "data"
    write_competition(data_dir,
                      train=[("1", server.url("/good/a.jpg")), ("2", server.url("/good/b.jpg"))],
                      validation=[("3", server.url("/missing.jpg"))],
                      test=[(4, server.url("/large.jpg")), (5, "ccp/photos/0005.jpg")])
    ctx = stage_context(tmp_path, data_dir)
    summary = run_download(ctx)
    failures_file = tmp_path / "run" / "download_failures.csv"
    assert summary == {"fetched": 3, "already_present": 0, "failed": 2, "failures_file": str(failures_file),
                       "up_to_date": False}
    assert sorted(p.name for p in (data_dir / "images").iterdir()) == ["1.jpg", "2.jpg", "4.jpg"]
    failures = pd.read_csv(failures_file, dtype=str).sort_values("imageId")
    assert list(failures.columns) == ["imageId", "split", "url", "reason"]
    assert failures[["imageId", "split", "reason"]].values.tolist() == [
        ["3", "validation", "HTTP 404"], ["5", "test", "not an http(s) url"]]

    requests_before = sum(server.requests.values())
    again = run_download(ctx)
    assert (again["fetched"], again["already_present"], again["failed"]) == (0, 3, 2)
    assert sum(server.requests.values()) - requests_before == 1  # only the 404 is asked again


def test_run_download_without_failures_writes_a_header_only_file(server, tmp_path):
    data_dir = tmp_path / "data"
    write_competition(data_dir, train=[("1", server.url("/good/a.jpg"))], validation=[],
                      test=[(2, server.url("/good/b.jpg"))])
    summary = run_download(stage_context(tmp_path, data_dir))
    assert (summary["fetched"], summary["failed"]) == (2, 0)
    assert (tmp_path / "run" / "download_failures.csv").read_text().strip() == "imageId,split,url,reason"


@pytest.mark.shared
def test_run_download_on_ccp_finds_every_image_present(ccp_dir, tmp_path):
    # CCP urls are photo names, not http(s): nothing may be fetched and nothing may fail
    config = PipelineConfig()
    config.data.dir = str(ccp_dir)
    summary = run_download(StageContext(config=config, run=RunDir(tmp_path / "run"), data_dir=ccp_dir))
    assert (summary["fetched"], summary["already_present"], summary["failed"]) == (0, 2098, 0)


def test_reused_ids_need_the_per_split_layout(server, tmp_path):
    # the real competition's splits reuse imageIds 1..N for different photos
    data_dir = tmp_path / "data"
    write_competition(data_dir, train=[("1", server.url("/good/a.jpg"))], validation=[],
                      test=[(1, server.url("/good/b.jpg"))])
    ctx = stage_context(tmp_path, data_dir)
    with pytest.raises(CompetitionDataError, match="per_split"):
        run_download(ctx)
    ctx.config.data.image_layout = "per_split"
    summary = run_download(ctx)
    assert (summary["fetched"], summary["failed"]) == (2, 0)
    assert (data_dir / "images" / "train" / "1.jpg").exists() and (data_dir / "images" / "test" / "1.jpg").exists()
