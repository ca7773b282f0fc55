"""Contact sheets: a grid of thumbnails with their labels, to see whether images and labels agree.

    python -m fashion_stack.reports.contact_sheet --data-dir DIR --split train --n 24 --out sheet.png

reads any competition-layout folder (label names from its label_map.csv).
"""
from __future__ import annotations

import argparse
import textwrap
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont, ImageOps

from fashion_stack.core import atomic
from fashion_stack.core.labels import LabelSpace
from fashion_stack.datasets.competition import read_split
from fashion_stack.datasets.imageops import UnreadableImage, open_image, to_upright_rgb

FONT_SIZE = 11
LINE_HEIGHT = 13
PAD = 6
# the usual reading order of a fashion label set; groups not listed come after
GROUP_ORDER = ("category", "gender", "color", "pattern", "sleeve", "neckline", "material", "style")


def _thumbnail(path: Path, thumb: int) -> Image.Image:
    try:
        image, _ = to_upright_rgb(open_image(path))
    except UnreadableImage as err:
        return _placeholder(thumb, f"unreadable: {err}")
    return ImageOps.contain(image, (thumb, thumb))  # small images are enlarged too, to be seen


def _placeholder(thumb: int, text: str) -> Image.Image:
    tile = Image.new("RGB", (thumb, thumb), (200, 200, 200))
    ImageDraw.Draw(tile).multiline_text((4, 4), textwrap.fill(text, 18), fill=(120, 0, 0))
    return tile


def contact_sheet(image_paths: Sequence, captions: Sequence[str], out_png: str | Path,
                  columns: int = 6, thumb: int = 128) -> Path:
    """Write a PNG grid: each image scaled to fit `thumb` px, its caption wrapped below it."""
    if len(image_paths) != len(captions):
        raise ValueError(f"{len(image_paths)} images but {len(captions)} captions; give one caption per image")
    if not image_paths:
        raise ValueError("no images for the contact sheet")
    font = ImageFont.load_default(size=FONT_SIZE)
    width_chars = max(8, int(thumb / (FONT_SIZE * 0.55)))
    wrapped = [textwrap.fill(caption, width_chars) for caption in captions]
    caption_height = LINE_HEIGHT * max(text.count("\n") + 1 for text in wrapped)
    cell_w, cell_h = thumb + PAD, thumb + caption_height + 2 * PAD
    rows = -(-len(image_paths) // columns)
    sheet = Image.new("RGB", (columns * cell_w + PAD, rows * cell_h + PAD), "white")
    pen = ImageDraw.Draw(sheet)
    for k, (path, text) in enumerate(zip(image_paths, wrapped)):
        left, top = PAD + (k % columns) * cell_w, PAD + (k // columns) * cell_h
        image = _thumbnail(Path(path), thumb)
        sheet.paste(image, (left + (thumb - image.width) // 2, top + (thumb - image.height) // 2))
        pen.multiline_text((left, top + thumb + 2), text, fill="black", font=font, spacing=1)
    out_png = Path(out_png)
    with atomic.atomic_path(out_png, suffix=".png") as tmp:
        sheet.save(tmp, format="PNG")
    return out_png


def label_caption(image_id: str, label_ids: Sequence[str], label_space: LabelSpace) -> str:
    """`#id: names`, in GROUP_ORDER when the label space has groups."""
    def rank(label_id: str) -> tuple:
        index = label_space.index_of(label_id)
        group = label_space.groups[index] if label_space.has_groups() else ""
        return (GROUP_ORDER.index(group) if group in GROUP_ORDER else len(GROUP_ORDER), index)
    names = [label_space.names[label_space.index_of(i)] for i in sorted(label_ids, key=rank)]
    return f"#{image_id}: " + ", ".join(names)


def split_sheet(data_dir: Path, split: str, n: int, out_png: Path, columns: int = 6, thumb: int = 128) -> Path:
    """The first `n` images of a split of a competition-layout folder, captioned by label names."""
    label_space = LabelSpace.from_csv(data_dir / "label_map.csv")
    images = read_split(data_dir / f"{split}.json", split, label_space).images.head(n)
    paths = [data_dir / "images" / f"{image_id}.jpg" for image_id in images["imageId"]]
    if "labelIds" in images.columns:
        captions = [label_caption(i, labels, label_space) for i, labels in zip(images["imageId"], images["labelIds"])]
    else:
        captions = [f"#{i} (unlabelled)" for i in images["imageId"]]
    return contact_sheet(paths, captions, out_png, columns=columns, thumb=thumb)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Contact sheet of a split: thumbnails captioned with labels.")
    parser.add_argument("--data-dir", type=Path, required=True, help="competition-layout folder")
    parser.add_argument("--split", default="train", help="train, validation or test")
    parser.add_argument("--n", type=int, default=24, help="how many images (the first n of the split)")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--columns", type=int, default=6)
    parser.add_argument("--thumb", type=int, default=128, help="thumbnail side in pixels")
    args = parser.parse_args(argv)
    print(split_sheet(args.data_dir, args.split, args.n, args.out, args.columns, args.thumb))


if __name__ == "__main__":
    main()
