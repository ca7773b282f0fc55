"""Validate one image against the image policy and produce its manifest fields.

Each image is decoded once. A plain upright RGB JPEG is used where it lies; anything else that
decodes (another mode, EXIF rotation, another format under a .jpg name) is repaired into an
upright RGB JPEG, so every usable manifest path can be read with a plain JPEG decoder.
"""
from __future__ import annotations

from pathlib import Path

from fashion_stack.core import atomic
from fashion_stack.core.lineage import short_hash
from fashion_stack.datasets import imageops

OK, REPAIRED, UNREADABLE, MISSING = "ok", "repaired", "unreadable", "missing"
STATUSES = (OK, REPAIRED, UNREADABLE, MISSING)
USABLE_STATUSES = (OK, REPAIRED)

# Quality of repaired copies: high, since these pixels are the training input from now on.
REPAIR_JPEG_QUALITY = 95
# Formats whose bytes a JPEG decoder reads as they are (MPO is a JPEG with extra frames appended).
_JPEG_FORMATS = ("JPEG", "MPO")


def inspect_image(path: str | Path, repaired_path: str | Path) -> dict:
    """Decode `path` once and return its manifest fields:
    path, width, height, mode, bytes, mtime_ns, sha256, status, reason (see docs/CONTRACTS.md,
    manifest.parquet). sha256 is the short content hash of the original's bytes: what later units
    record, so a touched, copied or moved file with the same bytes is the same input.

    A repaired copy is written atomically to `repaired_path` only when the original needs one.
    Whatever cannot be used (absent, a folder, unreadable, too large, not an image) is a row with
    its reason, never an exception.
    """
    path = Path(path)
    try:
        stat = path.stat()  # before reading: a file replaced while it is read shows up on the next rerun
    except FileNotFoundError:
        return _unusable(path, MISSING, "missing file", size=0, mtime_ns=0)
    except OSError as err:
        return _unusable(path, UNREADABLE, f"cannot read: {err.strerror or err}", size=0, mtime_ns=0)
    size, mtime_ns = stat.st_size, stat.st_mtime_ns
    if not path.is_file():
        return _unusable(path, UNREADABLE, "not a file (a folder or a device has this name)", size=0, mtime_ns=0)
    try:
        data = imageops.read_image_bytes(path, size)
    except imageops.UnreadableImage as err:
        return _unusable(path, UNREADABLE, str(err), size=size, mtime_ns=mtime_ns)
    content = short_hash(data)
    try:
        image = imageops.open_image(data)
    except imageops.UnreadableImage as err:
        return _unusable(path, UNREADABLE, str(err), size=size, mtime_ns=mtime_ns, sha256=content)
    original_mode, original_format = image.mode, image.format
    try:
        upright, repairs = imageops.to_upright_rgb(image)
    except (OSError, ValueError) as err:  # a conversion Pillow cannot do for this mode
        return _unusable(path, UNREADABLE, f"cannot convert {original_mode} to RGB: {err}", size=size,
                         mtime_ns=mtime_ns, mode=original_mode, sha256=content)
    if original_format not in _JPEG_FORMATS:
        repairs.append(f"{original_format or 'unknown'} content re-encoded as JPEG")
    fields = {"width": upright.width, "height": upright.height, "mode": original_mode, "bytes": size,
              "mtime_ns": mtime_ns, "sha256": content}
    if not repairs:
        return {"path": str(path), **fields, "status": OK, "reason": ""}
    atomic.write_bytes(repaired_path, imageops.encode_jpeg(upright, quality=REPAIR_JPEG_QUALITY))
    return {"path": str(repaired_path), **fields, "status": REPAIRED, "reason": "; ".join(repairs)}


def _unusable(path: Path, status: str, reason: str, size: int, mtime_ns: int, mode: str = "",
              sha256: str = "") -> dict:
    # The original path stays in the row so the user can find the file the reason talks about.
    return {"path": str(path), "width": 0, "height": 0, "mode": mode, "bytes": size, "mtime_ns": mtime_ns,
            "sha256": sha256, "status": status, "reason": reason}
