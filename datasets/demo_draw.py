"""Drawing for the demo dataset: one garment on a cluttered background, driven only by its
visible attributes (silhouette, colours, pattern, sleeve, neckline).

The garment is drawn as a map of region codes (base, second colour block, trim, detail lines) at
the target size with PIL, then coloured and patterned with numpy in one pass. Nothing here knows
label ids: datasets.demo maps labels to these attribute names.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageChops, ImageDraw

SILHOUETTES = ("dress", "tshirt", "tank", "jacket", "hoodie", "jumpsuit", "swimsuit",
               "pants", "shorts", "skirt", "boots", "sneakers")
UPPER_BODY = frozenset({"dress", "tshirt", "tank", "jacket", "hoodie", "jumpsuit", "swimsuit"})
PATTERNS = ("stripes", "dots", "checks", "floral")
SLEEVES = ("long", "short", "none")
NECKLINES = ("round", "v", "turtle", "collar")

# region codes in the drawn map; 0 is background (and neckline cut-outs)
BASE, SECOND, TRIM, DETAIL, PATTERN, OUTLINE = 1, 2, 3, 4, 5, 6
_NOISE_SIDE = 512


@dataclass(frozen=True)
class GarmentLook:
    """What the picture shows. `colours` are RGB triples, 1 to 3: the first fills the garment,
    the second draws the pattern (or a colour block when there is no pattern), the third the trim."""
    silhouette: str
    colours: tuple
    pattern: Optional[str] = None
    sleeve: Optional[str] = None  # only for UPPER_BODY silhouettes
    neckline: Optional[str] = None  # only for UPPER_BODY silhouettes; None draws a straight top edge

    def __post_init__(self):
        if self.silhouette not in SILHOUETTES:
            raise ValueError(f"unknown silhouette {self.silhouette!r}; known: {SILHOUETTES}")
        if not 1 <= len(self.colours) <= 3:
            raise ValueError(f"a garment has 1 to 3 colours, got {len(self.colours)}")
        for value, allowed in ((self.pattern, PATTERNS), (self.sleeve, SLEEVES), (self.neckline, NECKLINES)):
            if value is not None and value not in allowed:
                raise ValueError(f"unknown attribute {value!r}; known: {allowed}")


# Torso outline per upper-body silhouette, in a unit box (x right from the centre line, y down):
# shoulder top y0 and half-width sw, armpit (aw, ah below y0), waist (ww at yw), hem (hw at y1),
# and split: where a second colour block starts.
_TORSO = {
    "tshirt": dict(y0=0.16, sw=0.21, aw=0.2, ah=0.17, ww=0.19, yw=0.5, hw=0.2, y1=0.86, split=0.55),
    "tank": dict(y0=0.12, sw=0.1, aw=0.19, ah=0.24, ww=0.17, yw=0.5, hw=0.19, y1=0.86, split=0.55),
    "jacket": dict(y0=0.12, sw=0.23, aw=0.22, ah=0.18, ww=0.21, yw=0.5, hw=0.23, y1=0.9, split=0.55),
    "hoodie": dict(y0=0.2, sw=0.22, aw=0.21, ah=0.17, ww=0.2, yw=0.55, hw=0.2, y1=0.88, split=0.6),
    "dress": dict(y0=0.08, sw=0.14, aw=0.14, ah=0.15, ww=0.11, yw=0.38, hw=0.33, y1=0.96, split=0.38),
    "jumpsuit": dict(y0=0.08, sw=0.15, aw=0.15, ah=0.15, ww=0.13, yw=0.4, hw=0.16, y1=0.52, split=0.45),
    "swimsuit": dict(y0=0.14, sw=0.1, aw=0.15, ah=0.2, ww=0.12, yw=0.5, hw=0.17, y1=0.7, split=0.5),
}
_LOWER_SPLIT = {"pants": 0.5, "shorts": 0.5, "skirt": 0.55, "boots": 0.5, "sneakers": 0.6}


class _Canvas:
    """Unit-box drawing onto a region map at a random place, scale and width."""

    def __init__(self, width: int, height: int, rng: np.random.Generator):
        side = min(width, height)
        self.scale = side * rng.uniform(0.8, 0.96)
        self.stretch = rng.uniform(0.88, 1.12)
        self.left = rng.uniform(0, width - self.scale)
        self.top = rng.uniform(0, height - self.scale)
        self.wobble = self.scale * 0.012
        self.rng = rng
        self.regions = Image.new("L", (width, height), 0)
        self.pen = ImageDraw.Draw(self.regions)

    def point(self, x: float, y: float) -> tuple:
        return (self.left + (0.5 + x * self.stretch) * self.scale, self.top + y * self.scale)

    def polygon(self, points: Sequence, code: int, mirror: bool = False) -> None:
        if mirror:  # right half given; close it with its mirror image, walked back
            points = list(points) + [(-x, y) for x, y in reversed(points)]
        unit = np.asarray(points, dtype=float)
        pixels = np.column_stack([self.left + (0.5 + unit[:, 0] * self.stretch) * self.scale,
                                  self.top + unit[:, 1] * self.scale])
        pixels += self.rng.normal(0.0, self.wobble, size=pixels.shape)
        self.pen.polygon(pixels.ravel().tolist(), fill=code)

    def both_sides(self, points: Sequence, code: int) -> None:
        self.polygon(points, code)
        self.polygon([(-x, y) for x, y in points], code)

    def ellipse(self, x: float, y: float, rx: float, ry: float, code: int) -> None:
        x0, y0 = self.point(x - rx, y - ry)
        x1, y1 = self.point(x + rx, y + ry)
        self.pen.ellipse([x0, y0, x1, y1], fill=code)

    def line(self, points: Sequence, code: int, width: float = 0.015) -> None:
        self.pen.line([self.point(x, y) for x, y in points], fill=code,
                      width=max(1, round(width * self.scale)))

    def y_pixel(self, y: float) -> float:
        return self.top + y * self.scale


def _sleeves(c: _Canvas, t: dict, sleeve: Optional[str]) -> None:
    y0, sw = t["y0"], t["sw"]
    if sleeve == "long":
        c.both_sides([(sw - 0.02, y0), (sw + 0.17, y0 + 0.52), (sw + 0.08, y0 + 0.56), (sw - 0.02, y0 + 0.2)], BASE)
    elif sleeve == "short":
        c.both_sides([(sw - 0.02, y0), (sw + 0.14, y0 + 0.17), (sw + 0.06, y0 + 0.24), (sw - 0.02, y0 + 0.16)], BASE)


def _neckline(c: _Canvas, y0: float, neckline: Optional[str]) -> None:
    if neckline == "round":
        c.ellipse(0.0, y0, 0.075, 0.07, 0)
    elif neckline == "v":
        c.polygon([(-0.075, y0 - 0.02), (0.075, y0 - 0.02), (0.0, y0 + 0.16)], 0)
    elif neckline == "turtle":
        c.polygon([(-0.065, y0 - 0.08), (0.065, y0 - 0.08), (0.07, y0 + 0.01), (-0.07, y0 + 0.01)], TRIM)
        c.line([(-0.06, y0 - 0.04), (0.06, y0 - 0.04)], DETAIL, 0.012)
    elif neckline == "collar":
        c.ellipse(0.0, y0, 0.05, 0.045, 0)
        c.both_sides([(0.0, y0 + 0.07), (0.1, y0 - 0.015), (0.11, y0 + 0.09)], TRIM)


def _torso(c: _Canvas, kind: str) -> dict:
    t = _TORSO[kind]
    y0 = t["y0"]
    c.polygon([(0.0, y0), (t["sw"], y0), (t["aw"], y0 + t["ah"]), (t["ww"], t["yw"]), (t["hw"], t["y1"]),
               (0.0, t["y1"])], BASE, mirror=True)
    return t


def _upper_extras(c: _Canvas, kind: str, t: dict) -> None:
    if kind == "jacket":
        c.line([(0.0, t["y0"] + 0.08), (0.0, t["y1"])], DETAIL, 0.018)
        for y in np.linspace(t["y0"] + 0.2, t["y1"] - 0.1, 4):
            c.ellipse(0.035, y, 0.014, 0.014, DETAIL)
    elif kind == "hoodie":
        c.polygon([(-0.2, t["y1"] - 0.06), (0.2, t["y1"] - 0.06), (0.2, t["y1"]), (-0.2, t["y1"])], TRIM)
        c.line([(-0.12, 0.58), (0.12, 0.58), (0.15, 0.74), (-0.15, 0.74), (-0.12, 0.58)], DETAIL, 0.012)
    elif kind == "dress":
        c.line([(-t["ww"], t["yw"]), (t["ww"], t["yw"])], DETAIL, 0.014)
    elif kind == "jumpsuit":
        c.polygon([(0.0, 0.5), (0.17, 0.48), (0.19, 0.95), (0.05, 0.95), (0.0, 0.58)], BASE, mirror=True)
        c.line([(-0.14, 0.42), (0.14, 0.42)], DETAIL, 0.014)
    elif kind == "swimsuit":
        c.both_sides([(0.02, 0.72), (0.17, 0.64), (0.12, 0.8)], 0)


def _draw_upper(c: _Canvas, look: GarmentLook) -> float:
    kind = look.silhouette
    if kind == "hoodie":  # the hood sits behind the shoulders
        c.ellipse(0.0, _TORSO[kind]["y0"] - 0.02, 0.13, 0.15, BASE)
        c.ellipse(0.0, _TORSO[kind]["y0"] - 0.0, 0.075, 0.09, TRIM)
    t = _torso(c, kind)
    _sleeves(c, t, look.sleeve)
    _upper_extras(c, kind, t)
    _neckline(c, t["y0"], look.neckline)
    return t["split"]


def _draw_lower(c: _Canvas, kind: str) -> float:
    if kind == "pants":
        c.polygon([(0.0, 0.06), (0.17, 0.06), (0.2, 0.32), (0.17, 0.96), (0.04, 0.96), (0.0, 0.4)], BASE, mirror=True)
        c.polygon([(-0.17, 0.06), (0.17, 0.06), (0.172, 0.1), (-0.172, 0.1)], TRIM)
        c.both_sides([(0.06, 0.1), (0.15, 0.1), (0.16, 0.2)], DETAIL)
    elif kind == "shorts":
        c.polygon([(0.0, 0.24), (0.2, 0.24), (0.25, 0.52), (0.27, 0.72), (0.05, 0.74), (0.0, 0.5)], BASE, mirror=True)
        c.polygon([(-0.2, 0.24), (0.2, 0.24), (0.203, 0.3), (-0.203, 0.3)], TRIM)
    elif kind == "skirt":
        c.polygon([(0.0, 0.18), (0.15, 0.18), (0.33, 0.82), (0.0, 0.84)], BASE, mirror=True)
        c.polygon([(-0.15, 0.18), (0.15, 0.18), (0.155, 0.24), (-0.155, 0.24)], TRIM)
        for x in (-0.15, -0.05, 0.05, 0.15):
            c.line([(x * 0.45, 0.26), (x * 1.05, 0.8)], DETAIL, 0.01)
    elif kind == "boots":
        c.polygon([(-0.26, 0.06), (0.0, 0.06), (0.02, 0.62), (0.3, 0.7), (0.34, 0.84), (-0.26, 0.84)], BASE)
        c.polygon([(-0.27, 0.84), (0.35, 0.84), (0.35, 0.9), (-0.27, 0.9)], TRIM)
        c.polygon([(-0.27, 0.9), (-0.12, 0.9), (-0.12, 0.96), (-0.27, 0.96)], TRIM)
    elif kind == "sneakers":
        c.polygon([(-0.4, 0.44), (-0.12, 0.38), (0.04, 0.48), (0.3, 0.56), (0.42, 0.66), (0.42, 0.74),
                   (-0.4, 0.74)], BASE)
        c.polygon([(-0.41, 0.72), (0.43, 0.72), (0.43, 0.8), (-0.41, 0.8)], TRIM)
        for x in (-0.04, 0.04, 0.12):
            c.line([(x, 0.46 + x * 0.5), (x + 0.06, 0.42 + x * 0.5)], DETAIL, 0.018)
    return _LOWER_SPLIT[kind]


def _pattern_mask(pattern: str, xs: np.ndarray, ys: np.ndarray, scale: float,
                  rng: np.random.Generator, size: tuple) -> np.ndarray:
    period = scale * rng.uniform(0.09, 0.14)
    dx, dy = rng.uniform(0, period, size=2)
    if pattern == "stripes":
        angle = rng.choice([0.0, 0.5, 0.25, -0.25]) * np.pi + rng.normal(0, 0.05)
        along = xs * np.cos(angle) + ys * np.sin(angle) + dx
        return (along % period) < period * rng.uniform(0.4, 0.55)
    if pattern == "checks":
        return ((np.floor((xs + dx) / period) + np.floor((ys + dy) / period)) % 2) == 0
    if pattern == "dots":
        row = np.floor((ys + dy) / period)
        u = (xs + dx + (row % 2) * period / 2) % period - period / 2
        v = (ys + dy) % period - period / 2
        return u * u + v * v < (period * rng.uniform(0.22, 0.3)) ** 2
    return _floral_mask(scale, rng, size)


def _floral_mask(scale: float, rng: np.random.Generator, size: tuple) -> np.ndarray:
    width, height = size
    layer = Image.new("L", size, 0)
    radius = max(2, round(scale * rng.uniform(0.06, 0.085)))
    count = int(rng.integers(14, 22) * (width * height) / (scale * scale))
    xs, ys = rng.integers(-radius, width, count), rng.integers(-radius, height, count)
    for x, y, turn in zip(xs, ys, rng.integers(0, _FLOWER_TURNS, count)):
        layer.paste(255, (int(x), int(y)), _flower(radius, int(turn)))
    return np.asarray(layer, dtype=bool)


_FLOWER_TURNS = 6


@lru_cache(maxsize=256)
def _flower(radius: int, turn: int) -> Image.Image:
    """A five-petal flower stamp with a hole in the middle (the centre shows the base colour)."""
    side = 2 * radius + 1
    v, u = np.mgrid[-radius:radius + 1, -radius:radius + 1] / max(radius, 1)
    angle = np.arctan2(v, u) + turn * (2 * np.pi / 5) / _FLOWER_TURNS
    r = np.hypot(u, v)
    petals = (r <= 0.55 + 0.45 * np.abs(np.cos(2.5 * angle))) & (r > 0.22)
    return Image.fromarray((petals * 255).astype(np.uint8), "L").resize((side, side))


def _shade(rgb: np.ndarray, amount: float) -> np.ndarray:
    """Toward black (amount < 0) or white (amount > 0), keeping the hue."""
    target = 255.0 if amount > 0 else 0.0
    return rgb + (target - rgb) * abs(amount)


def _palette(look: GarmentLook, rng: np.random.Generator) -> list:
    """Flat RGB palette indexed by region code (PIL "P" mode)."""
    n = len(look.colours)
    jittered = np.asarray(look.colours, float) * rng.uniform(0.88, 1.08, (n, 1)) + rng.normal(0, 6, (n, 3))
    colours = list(np.clip(jittered, 0, 255))
    base = colours.pop(0)
    dark = base.mean() < 110
    pattern = (colours.pop(0) if colours else _shade(base, 0.55 if dark else -0.5)) if look.pattern else base
    second = colours.pop(0) if (colours and look.pattern is None) else base
    trim = colours.pop(0) if colours else _shade(base, 0.3 if dark else -0.3)
    detail = _shade(base, 0.35 if dark else -0.45)
    outline = _shade(base, -0.55)
    table = np.stack([np.zeros(3), base, second, trim, detail, pattern, outline])
    return np.clip(table, 0, 255).astype(np.uint8).ravel().tolist()


def _background(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """A tinted wall with a vertical light ramp and a few muted boxes, blobs and poles."""
    ramp = np.linspace(-1, 1, height)[:, None] * rng.uniform(-30, 30)
    column = np.clip(rng.uniform(120, 235) + rng.normal(0, 10, 3) + ramp, 0, 255).astype(np.uint8)
    image = Image.fromarray(column[:, None, :], "RGB").resize((width, height), Image.Resampling.NEAREST)
    pen = ImageDraw.Draw(image)
    count = int(rng.integers(2, 6))
    greys = rng.uniform(60, 230, (count, 1))
    colours = np.clip(greys + (rng.uniform(0, 255, (count, 3)) - greys) * 0.25, 0, 255).astype(int).tolist()
    boxes = np.sort(rng.uniform(-0.2, 1.2, (count, 2, 2)), axis=1) * (width, height)  # [x0, y0], [x1, y1]
    kinds = rng.integers(0, 3, count).tolist()
    line_widths = rng.integers(1, max(2, width // 16), count).tolist()
    for colour, box, kind, line_width in zip(colours, boxes.reshape(count, 4).tolist(), kinds, line_widths):
        if kind == 0:
            pen.rectangle(box, fill=tuple(colour))
        elif kind == 1:
            pen.ellipse(box, fill=tuple(colour))
        else:
            pen.line(box, fill=tuple(colour), width=line_width)
    return image


def _eroded(mask: np.ndarray) -> np.ndarray:
    """A pixel stays only if its four neighbours are inside too (image borders count as outside)."""
    core = np.zeros_like(mask)
    core[1:-1, 1:-1] = (mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1]
                        & mask[1:-1, :-2] & mask[1:-1, 2:])
    return core


@lru_cache(maxsize=4)
def _noise_bank(sigma: float) -> Image.Image:
    # one fixed field of sensor noise, centred on 128; each image takes a random crop of it
    rng = np.random.default_rng(12345)
    field = 128.0 + rng.normal(0.0, sigma, size=(_NOISE_SIDE, _NOISE_SIDE, 3))
    return Image.fromarray(np.clip(field, 0, 255).astype(np.uint8), "RGB")


def _add_noise(image: Image.Image, rng: np.random.Generator, sigma: float) -> Image.Image:
    bank = _noise_bank(float(sigma))
    width, height = image.size
    if width > _NOISE_SIDE or height > _NOISE_SIDE:
        raise ValueError(f"images up to {_NOISE_SIDE} px per side; got {width}x{height}")
    x, y = rng.integers(0, _NOISE_SIDE - width + 1), rng.integers(0, _NOISE_SIDE - height + 1)
    return ImageChops.add(image, bank.crop((x, y, x + width, y + height)), scale=1.0, offset=-128)


def render_garment(look: GarmentLook, width: int, height: int, rng: np.random.Generator,
                   noise: float = 8.0) -> Image.Image:
    """One RGB picture of `look`; the same rng state gives the same pixels."""
    background = _background(width, height, rng)
    canvas = _Canvas(width, height, rng)
    if look.silhouette in UPPER_BODY:
        split = _draw_upper(canvas, look)
    else:
        split = _draw_lower(canvas, look.silhouette)
    regions = np.array(canvas.regions)
    ys, xs = np.ogrid[:height, :width]
    if len(look.colours) > 1 and look.pattern is None:  # a colour block below the split line
        regions[(regions == BASE) & (ys > canvas.y_pixel(split))] = SECOND
    if look.pattern is not None:
        motif = _pattern_mask(look.pattern, xs.astype(np.float32), ys.astype(np.float32),
                              canvas.scale, rng, (width, height))
        regions[(regions == BASE) & motif] = PATTERN
    inside = regions > 0
    regions[inside & ~_eroded(inside)] = OUTLINE
    garment = Image.fromarray(regions, "P")
    garment.putpalette(_palette(look, rng))
    picture = Image.composite(garment.convert("RGB"), background, Image.fromarray(inside))
    return _add_noise(picture, rng, noise) if noise > 0 else picture
