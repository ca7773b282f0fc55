"""Config files: member_defaults, `base:` overlays, shipped configs by name, the cache folder."""
from __future__ import annotations

import dataclasses

import pytest

from fashion_stack.core.config import (CONFIGS_DIR, ConfigError, MemberConfig, cache_root, config_path, load_config,
                         parse_override, shipped_configs)


def write(folder, name, text):
    path = folder / name
    path.write_text(text)
    return path


MEMBERS = """member_defaults:
  batch_size: 16
  learning_rate: 0.01
  tta_flip: true
members:
  - {name: a, backbone: tiny_cnn}
  - {name: b, backbone: tiny_cnn, batch_size: 8}
"""


def test_member_defaults_apply_to_every_member_and_a_members_own_value_wins(tmp_path):
    a, b = load_config(write(tmp_path, "c.yaml", MEMBERS)).members
    assert (a.batch_size, b.batch_size) == (16, 8)
    assert a.learning_rate == b.learning_rate == 0.01 and a.tta_flip and b.tta_flip
    assert a.head_epochs == MemberConfig().head_epochs  # neither sets it: the code default


def test_member_defaults_can_be_overridden_from_the_command_line(tmp_path):
    config = load_config(write(tmp_path, "c.yaml", MEMBERS), [parse_override("member_defaults.batch_size=4")])
    assert [m.batch_size for m in config.members] == [4, 8]


@pytest.mark.parametrize("text, message", [
    ("member_defaults: {batch_sise: 4}\nmembers: [{name: a}]\n", r"member_defaults\.batch_sise"),
    ("member_defaults: {batch_size: many}\nmembers: [{name: a}]\n", r"member_defaults\.batch_size: expected int"),
    ("member_defaults: {name: x}\nmembers: [{name: a}]\n", r"member_defaults\.name"),
    ("member_defaults: [batch_size]\nmembers: [{name: a}]\n", "member_defaults: expected a mapping"),
])
def test_a_bad_member_default_is_named_as_a_member_default(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, "c.yaml", text))


def test_the_competition_config_states_its_shared_member_settings_once():
    config = load_config("imaterialist2018")
    shared = {"weights": "imagenet", "head_epochs": 1, "finetune_epochs": 3, "tta_flip": True}
    for member in config.members:
        assert {key: getattr(member, key) for key in shared} == shared, member.name
        assert member.hardware.mixed_precision == "auto", member.name
    assert {m.name: (m.backbone, m.batch_size) for m in config.members} == {
        "inception_v3": ("inception_v3", 64), "resnet50": ("resnet50", 64), "xception": ("xception", 64),
        "densenet201": ("densenet201", 48)}
    assert "member_defaults" not in config.to_dict()  # the saved config.yaml lists every member in full


def test_an_overlay_merges_over_its_base_and_replaces_lists_whole(tmp_path):
    write(tmp_path, "base.yaml", MEMBERS + "folds: {k: 5, seed: 1}\nname: base\n")
    overlay = write(tmp_path, "over.yaml", "base: base.yaml\nfolds: {k: 4}\nmember_defaults: {batch_size: 2}\n")
    config = load_config(overlay)
    assert (config.name, config.folds.k, config.folds.seed) == ("base", 4, 1)
    assert [m.batch_size for m in config.members] == [2, 8] and config.members[0].learning_rate == 0.01
    replaced = write(tmp_path, "other.yaml", "base: base.yaml\nmembers: [{name: c}]\n")
    assert [m.name for m in load_config(replaced).members] == ["c"]


def test_an_overlay_chain_that_comes_back_to_itself_is_refused(tmp_path):
    write(tmp_path, "one.yaml", "base: two.yaml\n")
    write(tmp_path, "two.yaml", "base: one.yaml\n")
    with pytest.raises(ConfigError, match="leads back to itself"):
        load_config(tmp_path / "one.yaml")
    with pytest.raises(ConfigError, match="absent.yaml not found"):
        load_config(write(tmp_path, "three.yaml", "base: absent.yaml\n"))


def test_the_kaggle_overlay_is_the_competition_config_with_the_notebooks_paths_and_gpus():
    kaggle, competition = load_config("kaggle"), load_config("imaterialist2018")
    assert [m.name for m in kaggle.members] == [m.name for m in competition.members]
    assert kaggle.data.dir.startswith("/kaggle/input/") and kaggle.data.pool == competition.data.pool
    assert all(m.hardware.data_parallel == "auto" and m.hardware.checkpoint_minutes > 0 for m in kaggle.members)
    assert kaggle.tensorboard.enabled and kaggle.kaggle.competition == "imaterialist-challenge-fashion-2018"
    differing = {f.name for f in dataclasses.fields(MemberConfig)
                 if getattr(kaggle.members[0], f.name) != getattr(competition.members[0], f.name)}
    assert differing <= {"hardware", "batch_size"}  # the overlay changes where and how, not which model


def test_shipped_configs_are_found_by_name_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert {"demo", "ccp", "imaterialist2018", "kaggle"} <= set(shipped_configs())
    assert config_path("ccp") == config_path("ccp.yaml") == config_path("configs/ccp.yaml") == CONFIGS_DIR / "ccp.yaml"
    local = write(tmp_path, "ccp.yaml", "name: mine\n")
    assert config_path("ccp.yaml").resolve() == local  # a file that exists wins over the shipped one
    with pytest.raises(ConfigError, match="shipped config: .*demo"):
        config_path("nonesuch")
    with pytest.raises(ConfigError, match="not found"):
        config_path("elsewhere/ccp.yaml")


def test_the_cache_is_the_checkouts_in_a_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cache_root() == CONFIGS_DIR.parent / ".cache"  # this test runs from a source checkout
