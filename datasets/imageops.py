"""The one image policy, applied everywhere an image is decoded or stored.

- Decode by content, never by file extension.
- EXIF orientation is applied (the stored pixels are upright; no reader needs to look at EXIF).
- Output is 8-bit RGB: grayscale and palette are expanded, CMYK converted, 16-bit scaled
  (not clipped) to 8 bits, and alpha composited on BACKGROUND.
- Decompression bombs (over MAX_PIXELS) are refused, not decoded.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

BACKGROUND = (255, 255, 255)  # product photos sit on white; alpha is composited on it
MAX_PIXELS = 64_000_000  # about 8k x 8k; larger images are treated as decompression bombs
# An image file or download body larger than this is refused before it is read whole: a
# competition photo is a few MB, and a 64-megapixel JPEG stays well under it.
MAX_IMAGE_BYTES = 64 * 2**20
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class UnreadableImage(ValueError):
    """The bytes are not a decodable image; the message is the reason stored in the manifest."""


def open_image(source: Union[str, Path, bytes]) -> Image.Image:
    """Open and fully decode an image from a path or bytes; raise UnreadableImage with a reason."""
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise UnreadableImage("empty file")
        stream = io.BytesIO(source)
    else:
        path = Path(source)
        if not path.exists():
            raise UnreadableImage("missing file")
        stream = io.BytesIO(read_image_bytes(path))
    try:
        image = Image.open(stream)  # reads the header only
        _refuse_bomb(image)
        image.load()  # truncated data shows up here, not at open()
    except Image.DecompressionBombError as err:
        raise UnreadableImage(f"decompression bomb: {err}") from err
    except UnidentifiedImageError:
        # Pillow's own message names the in-memory stream, which means nothing in a manifest
        raise UnreadableImage("not an image: no known format matches the content") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise UnreadableImage(f"cannot decode: {err}") from err
    return image


def read_image_bytes(path: Union[str, Path], size: int = None) -> bytes:
    """The bytes of an image file, refused (UnreadableImage) before reading when the file is empty,
    larger than MAX_IMAGE_BYTES, or cannot be read (permissions): never a whole huge file in memory."""
    try:
        size = os.stat(path).st_size if size is None else size
        if size == 0:
            raise UnreadableImage("empty file")
        if size > MAX_IMAGE_BYTES:
            raise UnreadableImage(f"file of {size:,} bytes is larger than the {MAX_IMAGE_BYTES:,} an image may have "
                                  "(imageops.MAX_IMAGE_BYTES); not read")
        with open(path, "rb") as handle:
            data = handle.read(MAX_IMAGE_BYTES + 1)
    except OSError as err:
        raise UnreadableImage(f"cannot read: {err.strerror or err}") from None
    if len(data) > MAX_IMAGE_BYTES:  # grew since the stat
        raise UnreadableImage(f"file is larger than the {MAX_IMAGE_BYTES:,} bytes an image may have; not read")
    return data


def _refuse_bomb(image: Image.Image) -> None:
    # Checked against this module's MAX_PIXELS at call time, before any pixel is decoded;
    # Pillow's own guard only raises at twice its limit and warns below that.
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise UnreadableImage(
            f"decompression bomb: {width}x{height} = {width * height} pixels exceeds MAX_PIXELS {MAX_PIXELS}")


def to_upright_rgb(image: Image.Image) -> tuple:
    """(8-bit upright RGB image, list of repairs applied). An empty list means the decoded
    pixels were usable as they were."""
    repairs = []
    orientation = image.getexif().get(0x0112, 1)
    if orientation not in (1, None):
        image = ImageOps.exif_transpose(image)
        repairs.append(f"exif orientation {orientation} applied")
    mode = image.mode
    if mode in _HIGH_BIT_DEPTH_MODES:
        image = _scale_high_bit_depth(image)
        repairs.append(f"{mode} scaled to 8 bits")
        mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        repairs.append("palette expanded")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA") or (mode in ("RGB", "L") and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        image = Image.alpha_composite(canvas, rgba).convert("RGB")
        repairs.append(f"{mode} alpha composited on background {BACKGROUND}")
    elif mode == "CMYK":
        image = image.convert("RGB")
        repairs.append("CMYK converted to RGB")
    elif mode in ("L", "1"):
        image = image.convert("RGB")
        repairs.append(f"{mode} expanded to RGB")
    elif mode != "RGB":
        image = image.convert("RGB")
        repairs.append(f"{mode} converted to RGB")
    return image, repairs


_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_HIGH_BIT_DEPTH_MODES = _SIXTEEN_BIT_MODES + ("I",)


def _scale_high_bit_depth(image: Image.Image) -> Image.Image:
    # 16-bit data uses the full 0..65535 range; dividing by 257 maps it onto 0..255 exactly,
    # where convert("L") would clip everything above 255 to white. A 16-bit mode is scaled as
    # 16-bit even when the picture is dark (max <= 255); only the 32-bit "I" mode, which carries
    # no bit depth, falls back to judging by its values.
    values = np.asarray(image, dtype=np.float64)
    sixteen_bit = image.mode in _SIXTEEN_BIT_MODES or values.max() > 255
    peak = 65535.0 if sixteen_bit else 255.0
    scaled = np.clip(np.round(values * (255.0 / peak)), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def fit_within(image: Image.Image, max_side: int) -> Image.Image:
    """Shrink (never enlarge) to fit max_side x max_side, aspect kept."""
    if max(image.size) <= max_side:
        return image
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def encode_jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
