"""A member's region (issue 21): the band of the photo it sees, zoomed to its input size. The
model cuts the band from the photo, so readers, caches and prediction need nothing new."""
from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import yaml  # noqa: E402

from fashion_stack.core.config import ConfigError, load_config  # noqa: E402
from fashion_stack.models.backbones import input_spec_of, resolve_input_spec  # noqa: E402
from fashion_stack.models.embeddings import embedding_hash  # noqa: E402
from fashion_stack.models.heads import build_embedding_model, build_member_model  # noqa: E402
from fashion_stack.models.stage import member_hash  # noqa: E402
from models_synthetic import tiny_member  # noqa: E402


def test_a_region_is_read_taller_and_cut_to_the_input_size():
    lower = resolve_input_spec(tiny_member(input_size=[24, 32], region=[0.5, 1.0], resize="stretch"))
    assert (lower.height, lower.width, lower.crop_top, lower.crop_bottom) == (48, 32, 24, 0)
    assert lower.trunk_size == (24, 32)
    middle = resolve_input_spec(tiny_member(input_size=[20, 20], region=[0.25, 0.75], resize="stretch"))
    assert (middle.height, middle.crop_top, middle.crop_bottom, middle.trunk_size) == (40, 10, 10, 20)
    whole = resolve_input_spec(tiny_member(input_size=[24, 32], resize="stretch"))
    assert (whole.height, whole.crop_top, whole.crop_bottom) == (24, 0, 0)


@pytest.mark.parametrize("build", ["embedding", "member"])
def test_the_model_sees_only_its_region_of_the_photo(build):
    member = tiny_member(input_size=[16, 16], region=[0.5, 1.0], resize="stretch", mode="frozen")
    model = build_embedding_model(member) if build == "embedding" else build_member_model(member, 3)
    spec = input_spec_of(model)  # read back from the model, as prediction does
    assert (spec.height, spec.width, spec.crop_top, spec.crop_bottom) == (32, 16, 16, 0)
    rng = np.random.default_rng(0)
    photo = rng.uniform(0, 255, size=(1, 32, 16, 3)).astype(np.float32)
    other_top = photo.copy()
    other_top[:, :16] = rng.uniform(0, 255, size=(1, 16, 16, 3))
    other_bottom = photo.copy()
    other_bottom[:, 16:] = rng.uniform(0, 255, size=(1, 16, 16, 3))
    out = [np.asarray(model.predict_on_batch(x)) for x in (photo, other_top, other_bottom)]
    np.testing.assert_allclose(out[0], out[1], rtol=1e-5, atol=1e-6)  # the top half is not seen
    assert np.abs(out[0] - out[2]).max() > 1e-4  # the bottom half is


def test_region_is_part_of_the_trunk_settings_and_a_member_without_one_keeps_its_hashes():
    plain = tiny_member(resize="stretch", mode="frozen")
    upper = tiny_member(resize="stretch", mode="frozen", region=[0.0, 0.5])
    lower = tiny_member(resize="stretch", mode="frozen", region=[0.5, 1.0])
    assert len({embedding_hash(m) for m in (plain, upper, lower)}) == 3
    assert len({member_hash(m, "train", ["1"]) for m in (plain, upper, lower)}) == 3


@pytest.mark.parametrize("region, resize, message", [
    ([0.6, 0.2], "stretch", "top < bottom"),
    ([0.2], "stretch", "top < bottom"),
    ([0.0, 0.5], "pad", "region needs resize: stretch"),
])
def test_a_bad_region_is_one_line_at_load(tmp_path, region, resize, message):
    path = _config(tmp_path, {"name": "upper", "backbone": "tiny_cnn", "mode": "frozen", "resize": resize,
                              "region": region})
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(path)
    assert "\n" not in str(caught.value)


def test_a_region_edge_outside_the_photo_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="region"):
        load_config(_config(tmp_path, {"name": "m", "backbone": "tiny_cnn", "resize": "stretch", "region": [0.5, 1.5]}))


def test_a_good_region_loads(tmp_path):
    config = load_config(_config(tmp_path, {"name": "m", "backbone": "tiny_cnn", "resize": "stretch",
                                            "region": [0, 0.5]}))
    assert config.members[0].region == (0.0, 0.5)


def _config(tmp_path, member: dict):
    path = tmp_path / "region.yaml"
    path.write_text(yaml.safe_dump({"name": "region", "members": [member]}))
    return path
