"""One image file -> (height, width, 3) uint8 pixels under a resize policy, with PIL only.

This module is what the decode worker processes import: numpy and PIL, no Keras, no TensorFlow,
no JAX, so a worker starts in well under a second and costs tens of MB, and a JAX or PyTorch
install without TensorFlow can read images. The TensorFlow reader (models.inputs) follows the
same geometry with tf ops; `policy_geometry` and `draft_ratio` are the one definition of it.

Speed: a JPEG is decoded at 1/2, 1/4 or 1/8 scale in the DCT (libjpeg's scaled decoding, PIL's
`draft`) whenever the result still holds at least the pixels the resize needs, so a 1000 px photo
resized to 299 is not decoded at full size. Then one antialiased (triangle filter) resize.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple, get_args

import numpy as np
from PIL import Image

from fashion_stack.core.config import ResizePolicy

RESIZE_POLICIES = get_args(ResizePolicy)  # the member config's `resize` choices, one source
DRAFT_RATIOS = (8, 4, 2, 1)  # the scales libjpeg decodes at directly


def check_policy(policy: str) -> None:
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"unknown resize policy {policy!r}; use one of {RESIZE_POLICIES} (member config `resize`)")


def as_hw(size) -> Tuple[int, int]:
    """An int (square) or a (height, width) pair -> (height, width)."""
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    height, width = size
    return int(height), int(width)


@dataclass(frozen=True)
class Geometry:
    """Where the source pixels go: source box (top, left, height, width) -> content
    (height, width) placed at (top, left) of the target."""
    box: Tuple[int, int, int, int]
    content: Tuple[int, int]
    offset: Tuple[int, int]


def policy_geometry(height: int, width: int, target_h: int, target_w: int, policy: str) -> Geometry:
    """stretch: the whole image onto the whole target. crop: the largest centred box of the
    target's aspect. pad: the whole image fitted inside, centred, black around it.
    Integer arithmetic only, so the tf version in models.inputs gives the same numbers."""
    if policy == "crop":
        box_h = min(height, width * target_h // target_w)
        box_w = min(width, height * target_w // target_h)
        return Geometry(((height - box_h) // 2, (width - box_w) // 2, box_h, box_w), (target_h, target_w), (0, 0))
    if policy == "pad":
        if target_w * height <= target_h * width:  # width is the tighter side
            content = (max(1, min(target_h, (2 * height * target_w + width) // (2 * width))), target_w)
        else:
            content = (target_h, max(1, min(target_w, (2 * width * target_h + height) // (2 * height))))
        offset = ((target_h - content[0]) // 2, (target_w - content[1]) // 2)
        return Geometry((0, 0, height, width), content, offset)
    return Geometry((0, 0, height, width), (target_h, target_w), (0, 0))


def draft_ratio(height: int, width: int, target_h: int, target_w: int, policy: str) -> int:
    """The largest JPEG decode scale (1, 2, 4, 8) that still leaves at least as many source
    pixels in the policy's box as the resize puts out, on both axes."""
    geometry = policy_geometry(height, width, target_h, target_w, policy)
    _, _, box_h, box_w = geometry.box
    room = min(box_h // geometry.content[0], box_w // geometry.content[1])
    return next(r for r in DRAFT_RATIOS if r <= max(room, 1))


def decode_resized(path: str, size, policy: str) -> np.ndarray:
    """(height, width, 3) uint8. Raises OSError / PIL errors naming nothing: callers add the path."""
    target_h, target_w = as_hw(size)
    with Image.open(path) as image:
        if image.format == "JPEG":
            ratio = draft_ratio(image.height, image.width, target_h, target_w, policy)
            if ratio > 1:
                # requesting (w // r, h // r) makes PIL pick exactly scale r (see draft_ratio)
                image.draft("RGB", (image.width // ratio, image.height // ratio))
        image = image.convert("RGB")  # decodes; grey and palette images expand to 3 channels
        geometry = policy_geometry(image.height, image.width, target_h, target_w, policy)
        top, left, box_h, box_w = geometry.box
        if (box_h, box_w) != (image.height, image.width):
            image = image.crop((left, top, left + box_w, top + box_h))
        content_h, content_w = geometry.content
        # PIL's bilinear widens its triangle filter by the scale when shrinking: antialiased,
        # like tf.image.resize(antialias=True); stripes and small prints do not alias to moire
        image = image.resize((content_w, content_h), Image.BILINEAR)
        pixels = np.asarray(image, dtype=np.uint8)
    if (content_h, content_w) == (target_h, target_w):
        return pixels
    canvas = np.zeros((target_h, target_w, 3), np.uint8)
    top, left = geometry.offset
    canvas[top:top + content_h, left:left + content_w] = pixels
    return canvas


def decode_many(paths: Sequence[str], size, policy: str) -> np.ndarray:
    """A (n, height, width, 3) uint8 stack; an unreadable file raises ValueError naming it."""
    target_h, target_w = as_hw(size)
    out = np.empty((len(paths), target_h, target_w, 3), np.uint8)
    for n, path in enumerate(paths):
        out[n] = decode_or_explain(path, size, policy)
    return out


def decode_or_explain(path: str, size, policy: str) -> np.ndarray:
    try:
        return decode_resized(path, size, policy)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot read image {path}: {err}. The prepare stage checks every image; "
                         "rerun it (--redo prepare) if files changed after it ran") from err
