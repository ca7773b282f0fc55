"""A member's run settings (precision, devices, checkpoints, image cache, reader, resources per
unit) are one section, `hardware:` (core.config.HardwareConfig). Configs that write them flat on
the member, in member_defaults, every_member or a --set, load to the very same member."""
import dataclasses

import pytest
import yaml

from fashion_stack.core.config import (HARDWARE_KEYS, ConfigError, HardwareConfig, MemberConfig, dump_config,
                                       load_config, overlay_values, parse_override)

RUN_SETTINGS = {"mixed_precision": "bfloat16", "jit_compile": "on", "steps_per_execution": 4,
                "data_parallel": "off", "lr_scaling": "sqrt", "checkpoint_steps": 50, "checkpoint_minutes": 0.5,
                "cache": "disk", "cache_budget_gb": 2.5, "reader": "process", "reader_workers": 3,
                "unit_cpus": 2.0, "unit_gpus": 0.5, "isolation": "none",
                "micro_batch_size": 8}  # = the tests' batch_size: no split, so not in the hash


def load(tmp_path, values: dict, overrides=()):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(values))
    return load_config(path, [parse_override(o) for o in overrides])


def test_every_hardware_field_is_in_the_example_and_off_the_member():
    assert set(RUN_SETTINGS) == set(HARDWARE_KEYS) == {f.name for f in dataclasses.fields(HardwareConfig)}
    assert not set(HARDWARE_KEYS) & {f.name for f in dataclasses.fields(MemberConfig)}


def test_flat_keys_and_the_section_give_the_same_member(tmp_path):
    flat = load(tmp_path, {"members": [{"name": "a", "batch_size": 8, **RUN_SETTINGS}]}).members[0]
    nested = load(tmp_path, {"members": [{"name": "a", "batch_size": 8, "hardware": RUN_SETTINGS}]}).members[0]
    assert flat == nested == MemberConfig(name="a", batch_size=8, hardware=HardwareConfig(**RUN_SETTINGS))
    assert nested.hardware.reader_workers == 3 and nested.batch_size == 8
    # some flat, some in the section: one section
    mixed = load(tmp_path, {"members": [{"name": "a", "batch_size": 8, "reader": "process",
                                         "hardware": {"unit_gpus": 0.5}}]}).members[0]
    assert (mixed.hardware.reader, mixed.hardware.unit_gpus, mixed.hardware.cache) == ("process", 0.5, "auto")


@pytest.mark.parametrize("where", ["members", "member_defaults", "every_member"])
def test_a_key_both_flat_and_in_the_section_is_a_one_line_error_naming_it(tmp_path, where):
    both = {"reader_workers": 2, "hardware": {"reader_workers": 4}}
    values = {"members": [{"name": "a", **both}]} if where == "members" else \
        {"members": [{"name": "a"}], where: both}
    with pytest.raises(ConfigError) as err:
        load(tmp_path, values)
    message = str(err.value)
    assert "\n" not in message and "reader_workers" in message and "hardware.reader_workers" in message


def test_member_defaults_flat_keys_land_in_hardware_merged_key_by_key(tmp_path):
    config = load(tmp_path, {"member_defaults": {"unit_cpus": 2, "cache": "none"},
                             "members": [{"name": "a", "hardware": {"cache": "memory"}},
                                         {"name": "b", "reader_workers": 5}]})
    a, b = config.members
    assert (a.hardware.unit_cpus, a.hardware.cache) == (2.0, "memory")  # the member's own value wins
    assert (b.hardware.unit_cpus, b.hardware.cache, b.hardware.reader_workers) == (2.0, "none", 5)


def test_a_set_in_either_spelling_lands_in_hardware(tmp_path):
    values = {"member_defaults": {"hardware": {"unit_cpus": 1, "cache": "none"}},
              "members": [{"name": "a", "hardware": {"reader_workers": 4, "reader": "process"}}, {"name": "b"}]}
    config = load(tmp_path, values, ["members.a.reader_workers=2", "member_defaults.unit_cpus=3"])
    a, b = config.members
    assert (a.hardware.reader_workers, a.hardware.reader) == (2, "process")  # the rest of a's section kept
    assert (a.hardware.unit_cpus, b.hardware.unit_cpus, b.hardware.cache) == (3.0, 3.0, "none")
    assert load(tmp_path, values, ["members.a.hardware.reader_workers=2"]).members == \
        load(tmp_path, values, ["members.a.reader_workers=2"]).members


def test_the_rehearsal_overlay_forces_hardware_over_every_member():
    members = load_config("configs/kaggle.yaml", [overlay_values("smoke")]).members
    assert members and all(m.hardware.reader_workers == 2 and m.hardware.data_parallel == "off"
                           and m.hardware.checkpoint_minutes == 0 and m.hardware.cache == "none"  # kaggle's, kept
                           for m in members)
    kaggle = load_config("configs/kaggle.yaml").members
    assert all(m.hardware.reader_workers == 4 and m.hardware.checkpoint_minutes == 10 for m in kaggle)


def test_dump_config_round_trips(tmp_path):
    config = load(tmp_path, {"members": [{"name": "a", **RUN_SETTINGS}, {"name": "b"}]})
    dumped = dump_config(config)
    assert "hardware:" in dumped and "\n    reader_workers: 3" in dumped
    again = tmp_path / "again.yaml"
    again.write_text(dumped)
    assert load_config(again) == config


def test_runs_finished_before_the_section_keep_their_member_hash():
    """member_hash leaves the section out but for the two settings that change the numbers, kept
    where they were: the hash computed the old way (flat, those settings dropped) is the same."""
    from fashion_stack.core.lineage import digest
    from fashion_stack.models.stage import member_hash
    member = MemberConfig(name="a", batch_size=8, hardware=HardwareConfig(**RUN_SETTINGS))
    # `region` is newer than these runs and left out of the hash while unset
    flat = {k: v for k, v in dataclasses.asdict(member).items() if k not in ("hardware", "region")}
    flat.update(dataclasses.asdict(member.hardware))
    old_speed_fields = ("steps_per_execution", "data_parallel", "checkpoint_steps", "checkpoint_minutes", "cache",
                        "cache_budget_gb", "reader", "reader_workers", "jit_compile", "unit_cpus", "unit_gpus",
                        "isolation", "micro_batch_size")  # newer than the section, and no more in the hash than the others
    old = digest({"member": {k: v for k, v in flat.items() if k not in old_speed_fields},
                  "pool": "train", "labels": ["1"]})
    assert member_hash(member, "train", ["1"]) == old
    precise = dataclasses.replace(member, hardware=dataclasses.replace(member.hardware, mixed_precision="off"))
    assert member_hash(precise, "train", ["1"]) != old  # precision changes the numbers: a new hash
