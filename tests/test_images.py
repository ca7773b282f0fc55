"""Golden tests for the image policy as the manifest sees it: datasets.images.inspect_image on
tiny images made here with PIL, one per kind of file the real downloads contain."""
from __future__ import annotations

import hashlib
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fashion_stack.datasets import imageops
from fashion_stack.datasets.images import inspect_image

RED, BLUE = (220, 20, 30), (20, 40, 200)
JPEG_TOLERANCE = 12  # per channel, for flat colour regions after a JPEG round trip


def save(image: Image.Image, path: Path, **params) -> Path:
    image.save(path, **params)
    return path


def two_colour_rgb(width: int = 32, height: int = 16) -> Image.Image:
    """Left half RED, right half BLUE."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 2] = RED
    pixels[:, width // 2:] = BLUE
    return Image.fromarray(pixels, "RGB")


def pixels_of(path: str) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "JPEG" and image.mode == "RGB"
        return np.asarray(image, dtype=np.int16)


def assert_close(pixel, expected, tolerance=JPEG_TOLERANCE):
    assert np.all(np.abs(np.asarray(pixel, dtype=np.int16) - np.asarray(expected)) <= tolerance), (pixel, expected)


def png_with_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height RGB, with almost no pixel data behind it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


@pytest.fixture
def repaired(tmp_path) -> Path:
    return tmp_path / "repaired" / "x.jpg"


def test_plain_rgb_jpeg_is_ok_and_used_in_place(tmp_path, repaired):
    path = save(two_colour_rgb(), tmp_path / "1.jpg", quality=95)
    fields = inspect_image(path, repaired)
    assert fields == {"path": str(path), "width": 32, "height": 16, "mode": "RGB",
                      "bytes": path.stat().st_size, "mtime_ns": path.stat().st_mtime_ns,
                      "sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16], "status": "ok", "reason": ""}
    assert not repaired.exists()


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path, repaired):
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # full magenta + yellow = red
    fields = inspect_image(save(cmyk, tmp_path / "1.jpg", quality=95), repaired)
    assert (fields["status"], fields["mode"], fields["path"]) == ("repaired", "CMYK", str(repaired))
    assert "CMYK" in fields["reason"]
    assert_close(pixels_of(fields["path"])[8, 8], (255, 0, 0))


def test_grayscale_jpeg_is_expanded_to_three_equal_channels(tmp_path, repaired):
    gray = Image.new("L", (16, 16), 90)
    fields = inspect_image(save(gray, tmp_path / "1.jpg"), repaired)
    assert (fields["status"], fields["mode"]) == ("repaired", "L")
    assert_close(pixels_of(fields["path"])[8, 8], (90, 90, 90), tolerance=2)


def test_palette_png_is_expanded_to_its_colours(tmp_path, repaired):
    palette = two_colour_rgb().quantize(colors=2)
    assert palette.mode == "P"
    fields = inspect_image(save(palette, tmp_path / "1.png"), repaired)
    assert (fields["status"], fields["mode"]) == ("repaired", "P")
    assert "palette" in fields["reason"]
    pixels = pixels_of(fields["path"])
    assert_close(pixels[8, 4], RED)
    assert_close(pixels[8, 28], BLUE)


def test_rgba_png_transparent_pixels_become_background(tmp_path, repaired):
    rgba = np.zeros((16, 32, 4), dtype=np.uint8)  # transparent black: dropping alpha would give black
    rgba[:, 16:] = BLUE + (255,)
    path = save(Image.fromarray(rgba, "RGBA"), tmp_path / "1.png")
    upright, _ = imageops.to_upright_rgb(imageops.open_image(path))
    exact = np.asarray(upright)
    assert tuple(exact[8, 4]) == imageops.BACKGROUND
    assert tuple(exact[8, 28]) == BLUE
    fields = inspect_image(path, repaired)
    assert (fields["status"], fields["mode"]) == ("repaired", "RGBA")
    assert "alpha" in fields["reason"]
    assert_close(pixels_of(fields["path"])[8, 4], imageops.BACKGROUND)


@pytest.mark.parametrize("value16, expected8", [(32896, 128), (65535, 255), (200, 1)])
def test_16bit_png_is_scaled_not_clipped(tmp_path, repaired, value16, expected8):
    # 32896 = 128 * 257: mid grey must stay mid grey (clipping would give 255); a dark 16-bit
    # picture (200 of 65535) must stay dark rather than be read as 8-bit 200.
    deep = Image.fromarray(np.full((16, 16), value16, dtype=np.uint16))
    path = save(deep, tmp_path / "1.png")
    assert Image.open(path).mode == "I;16"
    fields = inspect_image(path, repaired)
    assert (fields["status"], fields["mode"]) == ("repaired", "I;16")
    assert_close(pixels_of(fields["path"])[8, 8], (expected8,) * 3, tolerance=2)


def test_exif_orientation_6_is_applied(tmp_path, repaired):
    # Stored 64 wide x 32 high with a red top-left corner. Orientation 6 means "rotate 90 degrees
    # clockwise to display": upright it is 32 x 64 and the red corner is at the top right.
    stored = np.full((32, 64, 3), 255, dtype=np.uint8)
    stored[:16, :16] = RED
    exif = Image.Exif()
    exif[0x0112] = 6
    path = save(Image.fromarray(stored, "RGB"), tmp_path / "1.jpg", quality=95, exif=exif.tobytes())
    fields = inspect_image(path, repaired)
    assert (fields["status"], fields["width"], fields["height"]) == ("repaired", 32, 64)
    assert "orientation 6" in fields["reason"]
    pixels = pixels_of(fields["path"])
    assert pixels.shape == (64, 32, 3)
    assert_close(pixels[8, 24], RED)  # top right
    assert_close(pixels[8, 8], (255, 255, 255))  # top left
    assert_close(pixels[56, 24], (255, 255, 255))  # bottom right
    with Image.open(fields["path"]) as written:
        assert written.getexif().get(0x0112, 1) == 1  # nothing left for a reader to rotate again


def test_png_named_jpg_is_reencoded_as_real_jpeg(tmp_path, repaired):
    path = save(two_colour_rgb(), tmp_path / "1.jpg", format="PNG")
    fields = inspect_image(path, repaired)
    assert (fields["status"], fields["mode"], fields["path"]) == ("repaired", "RGB", str(repaired))
    assert "PNG" in fields["reason"]
    assert repaired.read_bytes()[:2] == b"\xff\xd8"  # JPEG start-of-image marker
    assert_close(pixels_of(fields["path"])[8, 4], RED)


def test_truncated_jpeg_is_unreadable(tmp_path, repaired):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    whole = io.BytesIO()
    Image.fromarray(noise, "RGB").save(whole, format="JPEG")
    path = tmp_path / "1.jpg"
    path.write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    fields = inspect_image(path, repaired)
    assert fields["status"] == "unreadable" and "truncated" in fields["reason"]
    assert fields["bytes"] == path.stat().st_size
    assert not repaired.exists()


@pytest.mark.parametrize("content, reason", [(b"", "empty file"), (b"<html>404 Not Found</html>\n", "not an image")])
def test_empty_and_text_files_are_unreadable(tmp_path, repaired, content, reason):
    path = tmp_path / "1.jpg"
    path.write_bytes(content)
    fields = inspect_image(path, repaired)
    assert fields["status"] == "unreadable" and reason in fields["reason"]
    assert (fields["width"], fields["height"], fields["bytes"]) == (0, 0, len(content))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("side", [9_000, 20_000])  # over MAX_PIXELS; over Pillow's own 2x limit
def test_decompression_bomb_header_is_refused_before_decoding(tmp_path, repaired, side):
    assert side * side > imageops.MAX_PIXELS
    path = tmp_path / "1.jpg"
    path.write_bytes(png_with_header(side, side))
    fields = inspect_image(path, repaired)
    assert fields["status"] == "unreadable" and "decompression bomb" in fields["reason"]


def test_max_pixels_is_read_at_call_time(tmp_path, repaired, monkeypatch):
    path = save(two_colour_rgb(16, 16), tmp_path / "1.jpg")
    assert inspect_image(path, repaired)["status"] == "ok"
    monkeypatch.setattr(imageops, "MAX_PIXELS", 255)
    fields = inspect_image(path, repaired)
    assert fields["status"] == "unreadable" and "16x16 = 256 pixels" in fields["reason"]


def test_missing_file(tmp_path, repaired):
    fields = inspect_image(tmp_path / "absent.jpg", repaired)
    assert fields == {"path": str(tmp_path / "absent.jpg"), "width": 0, "height": 0, "mode": "", "bytes": 0,
                      "mtime_ns": 0, "sha256": "", "status": "missing", "reason": "missing file"}


def test_every_repaired_copy_decodes_with_tensorflow_decode_jpeg(tmp_path):
    """The contract downstream relies on: usable paths are 3-channel JPEGs for tf.io.decode_jpeg."""
    tf = pytest.importorskip("tensorflow")
    exif = Image.Exif()
    exif[0x0112] = 6
    sources = {
        "cmyk.jpg": (Image.new("CMYK", (8, 8), (0, 255, 255, 0)), {}),
        "gray.jpg": (Image.new("L", (8, 8), 90), {}),
        "palette.png": (two_colour_rgb().quantize(colors=2), {}),
        "rgba.png": (Image.new("RGBA", (8, 8), (0, 0, 0, 0)), {}),
        "deep.png": (Image.fromarray(np.full((8, 8), 32896, dtype=np.uint16)), {}),
        "rotated.jpg": (two_colour_rgb(), {"exif": exif.tobytes()}),
        "png_named.jpg": (two_colour_rgb(), {"format": "PNG"}),
    }
    for name, (image, params) in sources.items():
        fields = inspect_image(save(image, tmp_path / name, **params), tmp_path / "repaired" / f"{name}.jpg")
        assert fields["status"] == "repaired", name
        decoded = tf.io.decode_jpeg(tf.io.read_file(fields["path"]))
        assert tuple(decoded.shape) == (fields["height"], fields["width"], 3), name
