"""A member's input is one setting, `input_size: [height, width]` (one number: a square; null: the
backbone's native size). Configs written with the older image_size (the width) / image_height
keys load to the very same member."""
import dataclasses

import pytest
import yaml

from fashion_stack.core.config import ConfigError, MemberConfig, load_config, overlay_values, parse_override
from fashion_stack.models.backbones import resolve_input_spec


def load_members(tmp_path, text: str, overrides=()):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load_config(path, [parse_override(o) for o in overrides]).members


def as_old_keys(member: dict) -> dict:
    """A member's YAML settings written the older way: image_size the width, image_height the height."""
    member = dict(member)
    size = member.pop("input_size", None)
    if isinstance(size, list):
        height, width = size
        member["image_size"] = width
        if height != width:
            member["image_height"] = height
    elif size is not None:
        member["image_size"] = size
    return member


@pytest.mark.parametrize("config", ["configs/ccp.yaml", "configs/demo.yaml"])
def test_a_shipped_config_written_with_the_old_keys_loads_to_the_same_members(tmp_path, config):
    values = yaml.safe_load(open(config, encoding="utf-8"))
    assert any("input_size" in m for m in values["members"])  # the shipped configs use the new key
    values["members"] = [as_old_keys(m) for m in values["members"]]
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump(values))
    assert "image_size" in old.read_text()
    assert load_config(old).members == load_config(config).members
    assert load_config(old).to_dict() == load_config(config).to_dict()  # the same lineage hashes


def test_old_and_new_spellings_of_one_input_give_the_same_member(tmp_path):
    new = load_members(tmp_path, "members:\n  - {name: a, input_size: [320, 224], resize: stretch}\n")
    old = load_members(tmp_path, "members:\n  - {name: a, image_height: 320, image_size: 224, resize: stretch}\n")
    assert new == old and new[0].input_size == (320, 224)
    spec = resolve_input_spec(dataclasses.replace(new[0], backbone="mobilenet_v2"))
    assert (spec.height, spec.width, spec.size_name) == (320, 224, "320x224")


def test_one_number_means_a_square_and_null_the_native_size(tmp_path):
    square = load_members(tmp_path, "members:\n  - {name: a, input_size: 64}\n")[0]
    assert square.input_size == (64, 64)
    assert square == load_members(tmp_path, "members:\n  - {name: a, input_size: [64, 64]}\n")[0]
    assert square == load_members(tmp_path, "members:\n  - {name: a, image_size: 64}\n")[0]
    assert MemberConfig(name="a", input_size=64) == square  # by hand too
    native = load_members(tmp_path, "members:\n  - {name: a, backbone: mobilenet_v2}\n")[0]
    assert native.input_size is None
    spec = resolve_input_spec(native)
    assert (spec.height, spec.width) == (224, 224)


@pytest.mark.parametrize("value, message", [
    ("[320, 224, 224]", r"^.*members\[0\] \(a\)\.input_size is \[320, 224, 224\]; write \[height, width\]"),
    ("[8, 8]", r"^.*members\[0\]\.input_size\[0\] is 8; it must be at least 16$"),
    ("big", r"^.*members\[0\]\.input_size: .*'big'"),
    ("[320, wide]", r"^.*members\[0\]\.input_size\[1\]: expected int, got the string 'wide'$"),
])
def test_a_bad_input_size_is_a_one_line_error_naming_the_key(tmp_path, value, message):
    with pytest.raises(ConfigError, match=message) as caught:
        load_members(tmp_path, f"members:\n  - {{name: a, input_size: {value}}}\n")
    assert "\n" not in str(caught.value)


def test_both_spellings_at_once_is_an_error_naming_both(tmp_path):
    with pytest.raises(ConfigError, match="input_size and image_size are both set"):
        load_members(tmp_path, "members:\n  - {name: a, input_size: 64, image_size: 64}\n")


def test_an_old_key_set_over_a_new_config_changes_its_side(tmp_path):
    text = "members:\n  - {name: a, input_size: [320, 224]}\n  - {name: b, input_size: 96}\n"
    # as before: image_size is the width (a tall input stays tall), image_height the height
    assert load_members(tmp_path, text, ["members.a.image_size=256"])[0].input_size == (320, 256)
    assert load_members(tmp_path, text, ["members.b.image_size=128"])[1].input_size == (128, 128)
    assert load_members(tmp_path, text, ["members.b.image_height=160"])[1].input_size == (160, 96)
    assert load_members(tmp_path, text, ["members.a.input_size=128"])[0].input_size == (128, 128)


def test_member_defaults_and_every_member_take_either_spelling(tmp_path):
    text = ("member_defaults: {image_height: 320, image_size: 224}\n"
            "members:\n  - {name: a}\n  - {name: b, input_size: 96}\n  - {name: c, image_size: 192}\n")
    a, b, c = load_members(tmp_path, text)
    assert (a.input_size, b.input_size, c.input_size) == ((320, 224), (96, 96), (320, 192))
    # the rehearsal overlay forces a square 96 on every member, whatever its input was
    forced = load_config("configs/ccp.yaml", [overlay_values("smoke")]).members
    assert {m.input_size for m in forced if m.mode != "probe"} == {(96, 96)}
