"""Contact sheets: grid geometry, captions from the label map, unreadable images shown, not fatal."""
from __future__ import annotations

import pytest
from PIL import Image

from fashion_stack.core.config import DemoConfig
from fashion_stack.core.labels import LabelSpace
from fashion_stack.datasets.demo import generate_demo
from fashion_stack.reports.contact_sheet import contact_sheet, label_caption, main


def test_grid_size_and_an_unreadable_image(tmp_path):
    good = tmp_path / "a.png"  # lossless, so the pixel check is exact
    Image.new("RGB", (40, 20), (255, 0, 0)).save(good)
    broken = tmp_path / "b.jpg"
    broken.write_bytes(b"not a jpeg")
    out = contact_sheet([good, broken, good], ["red", "broken", "red again"], tmp_path / "s.png", columns=2, thumb=50)
    sheet = Image.open(out)
    assert sheet.width == 6 + 2 * (50 + 6)
    assert sheet.getpixel((6 + 25, 6 + 25))[:3] == (255, 0, 0)  # enlarged to the thumbnail, centred


def test_mismatched_captions_are_refused(tmp_path):
    with pytest.raises(ValueError, match="one caption per image"):
        contact_sheet([tmp_path / "a.jpg"], [], tmp_path / "s.png")


def test_captions_read_names_in_group_order():
    space = LabelSpace(("17", "62", "66"), ("Black", "Dresses", "Female"), ("color", "category", "gender"))
    assert label_caption("5", ["17", "66", "62"], space) == "#5: Dresses, Female, Black"


def test_cli_on_a_demo_split(tmp_path):
    data = generate_demo(tmp_path / "demo", DemoConfig(n_train=4, n_validation=2, n_test=2, image_size=32))
    main(["--data-dir", str(data), "--split", "test", "--n", "3", "--out", str(tmp_path / "t.png"), "--thumb", "40"])
    assert Image.open(tmp_path / "t.png").size[0] == 6 + 6 * 46


def test_cli_on_real_photos(ccp_dir, tmp_path):
    main(["--data-dir", str(ccp_dir), "--n", "2", "--out", str(tmp_path / "ccp.png"), "--thumb", "40"])
    assert (tmp_path / "ccp.png").stat().st_size > 1000
