"""Fault suite, settings (issue 9, item 3): every bad setting is refused when the config loads,
in one place (core.config.load_config), with a line that names the key and the fix, before any
stage runs. Each case is one row of docs/FAULTS.md."""
import dataclasses
from typing import get_args, get_type_hints

import pytest

from fashion_stack import pipeline as run_pipeline
from fashion_stack.core.config import ConfigError, MemberConfig, PipelineConfig, load_config, parse_override

MEMBER = "members=[{name: m, backbone: tiny_cnn, weights: null, head_epochs: 0, finetune_epochs: 1%s}]"


def load(*overrides, choices=None):
    return load_config(None, [parse_override(o) for o in overrides], choices=choices)


def load_checked(*overrides):
    """As the CLI loads: with every plug-in registry, so names and plug-in settings are checked."""
    return load(*overrides, choices=run_pipeline.registered_choices())


@pytest.mark.parametrize("override, message", [
    (MEMBER % ", finetune_epochs: -2", r"members\[0\]\.finetune_epochs is -2; it must be at least 0"),
    (MEMBER % ", head_epochs: 0, finetune_epochs: 0", r"members\[0\] \(m\): head_epochs \+ finetune_epochs is 0"),
    (MEMBER % ", mode: frozen, frozen_epochs: 0", r"members\[0\] \(m\): frozen_epochs is 0"),
    (MEMBER % ", learning_rate: -0.001", r"members\[0\]\.learning_rate is -0\.001; it must be greater than 0"),
    (MEMBER % ", finetune_learning_rate: 0", r"finetune_learning_rate is 0\.0; it must be greater than 0"),
    (MEMBER % ", batch_size: 0", r"members\[0\]\.batch_size is 0; it must be at least 1"),
    (MEMBER % ", dropout: 1.5", r"members\[0\]\.dropout is 1\.5; it must be less than 1"),
    (MEMBER % ", batch_size: '32'", r"members\[0\]\.batch_size: expected int, got the string '32'"),
    (MEMBER % ", augment: 1", r"members\[0\]\.augment: expected bool, got int 1"),
    (MEMBER % ", resize: squash", r"members\[0\]\.resize: the string 'squash' is not one of stretch, pad, crop"),
    (MEMBER % ", mode: train", r"members\[0\]\.mode: the string 'train' is not one of finetune, frozen"),
    (MEMBER % ", unfreeze: half", r"members\[0\]\.unfreeze: the string 'half' is not one of top, all"),
    ("stack.stackers=mean", r"stack\.stackers: expected a list, got the string 'mean'; write \[mean\]"),
    ("stack.stackers=[]", r"stack\.stackers has 0 entries; it needs at least 1"),
    ("decision.rules=[]", r"decision\.rules has 0 entries; it needs at least 1"),
    ("decision.rules=global", r"decision\.rules: expected a list, got the string 'global'"),
    ("folds.k=1", r"folds\.k is 1; it must be at least 2"),
    ("folds.k=2.5", r"folds\.k: expected int, got float 2\.5"),
    ("decision.min_labels=0", r"decision\.min_labels is 0; it must be at least 1"),
    ("decision.metric=macro", r"decision\.metric: the string 'macro' is not one of micro, samples"),
    ("data.pool=everything", r"data\.pool: the string 'everything' is not one of train\+validation"),
    ("data.validate_workers=0", r"data\.validate_workers is 0; it must be at least 1"),
    ("download.timeout_s=0", r"download\.timeout_s is 0\.0; it must be greater than 0"),
    ("members={name: m}", r"members: expected a list, got a dict"),
    ("folds=3", r"folds: expected a mapping of keys, got int 3"),
])
def test_bad_setting_is_refused_at_load_naming_key_and_bound(override, message):
    with pytest.raises(ConfigError, match=message):
        load(override)


@pytest.mark.parametrize("override, message", [
    # plug-in settings (issue 24 item 11): each checked against the bounds its plug-in declares,
    # under the key as written, instead of a traceback from inside the stage
    ("stack.xgboost.n_estimators=-5", r"stack\.xgboost\.n_estimators is -5; it must be at least 1$"),
    ("stack.grid_cnn.epochs=0", r"stack\.grid_cnn\.epochs is 0; it must be at least 1$"),
    ("stack.xgboost_long.chunk_images=0", r"stack\.xgboost_long\.chunk_images is 0; it must be at least 1$"),
    ("stack.xgboost.subsample=5", r"stack\.xgboost\.subsample is 5\.0; it must be at most 1$"),
    (MEMBER.replace("name: m", "name: 'my member'") % "",
     r"members\[0\]\.name 'my member' may hold only letters, digits, '_', '-' and '\.'"),
    ("stack.stackers=[mean, {name: xgboost, params: {n_estimators: -5}}]",
     r"stack\.stackers\[1\]\.params\.n_estimators is -5; it must be at least 1$"),
    ("stack.stackers=[mean, {name: xgboost, params: {n_estimatorz: 5}}]",
     r"unknown setting\(s\) stack\.stackers\[1\]\.params\.n_estimatorz; its settings: \['colsample_bytree'"),
    ("stack.stackers=[{name: linear, params: {C: -1}}]", r"stack\.stackers\[0\]\.params\.C is -1\.0; it must be greater than 0"),
    ("stack.stackers=[{name: linear, params: {C: fast}}]", r"stack\.stackers\[0\]\.params\.C: the string 'fast' fits none of"),
    ("stack.stackers=[mean, mean]", r"stack\.stackers lists mean more than once"),
    ("stack.xgbost.n_estimators=3", r"unknown config key\(s\): stack\.xgbost; valid keys here: \['stackers'\] and a "
                                    r"stacker's name \(grid_cnn, linear"),
    ("stack.stackers=[{name: mean, extra: 1}]", r"stack\.stackers\[0\]: write a name, or \{name: \.\.\., params"),
    ("decision.per_label.shrinkage=-1", r"decision\.per_label\.shrinkage is -1\.0; it must be at least 0"),
    ("decision.rules=[{name: gfm, params: {min_labels: 3}}]",
     r"decision\.rules\[0\]\.params\.min_labels; .*min_labels: set once for every entry"),
    (MEMBER % ", loss: hinge", r"members\[0\]\.loss: the string 'hinge' is not one of asymmetric, bce, focal"),
    (MEMBER % ", loss: {name: focal, params: {gamma: -1}}", r"members\[0\]\.loss\.params\.gamma is -1\.0; it must be at least 0"),
    (MEMBER % ", pooling: sum", r"members\[0\]\.pooling: the string 'sum' is not one of avg, bands, csra, max"),
    (MEMBER % ", pooling: {name: bands, params: {bands: 0}}", r"members\[0\]\.pooling\.params\.bands is 0; it must be at least 1"),
])
def test_bad_plugin_setting_is_refused_at_load_naming_key_and_bound(override, message):
    with pytest.raises(ConfigError, match=message) as caught:
        load_checked(override)
    assert "\n" not in str(caught.value)


def test_plugin_settings_reach_the_plugin_whichever_way_they_are_written():
    inline = load_checked("stack.stackers=[mean, {name: xgboost, params: {n_estimators: 40}}]")
    section = load_checked("stack.stackers=[mean, xgboost]", "stack.xgboost.n_estimators=40")
    both = load_checked("stack.stackers=[mean, {name: xgboost, params: {n_estimators: 7, max_depth: 2}}]",
                        "stack.xgboost.n_estimators=40")  # a section (--set) overrides the inline value
    for config in (inline, section, both):
        xgboost = config.stack.stackers[1]
        assert (xgboost.name, xgboost.params["n_estimators"], xgboost.params["learning_rate"]) == ("xgboost", 40, 0.05)
    assert both.stack.stackers[1].params["max_depth"] == 2 and inline.stack.stackers[1].params["max_depth"] == 3
    assert inline.stack.stackers[0].params == {}
    rules = load_checked("decision.per_label.shrinkage=25").decision.rules
    assert [r.params.get("shrinkage") for r in rules if r.name == "per_label"] == [25.0]


def test_older_member_keys_move_into_their_plugin():
    focal = load_checked(MEMBER % ", loss: focal, focal_gamma: 3").members[0]
    assert (focal.loss.name, focal.loss.params) == ("focal", {"gamma": 3.0})
    bands = load_checked(MEMBER % ", pooling: bands, pooling_bands: 4, csra_lambda: 0.5").members[0]
    assert (bands.pooling.name, bands.pooling.params) == ("bands", {"bands": 4})  # csra's setting had no effect


def test_min_labels_above_max_labels_is_refused():
    with pytest.raises(ConfigError, match="min_labels 5 is above max_labels 3"):
        load("decision.min_labels=5", "decision.max_labels=3")


@pytest.mark.parametrize("text, message", [
    ("folds.k=[", r"--set 'folds\.k=\[': the value '\[' is not valid YAML"),
    ("folds.k={a", r"is not valid YAML"),
    ("folds.k", r"must look like section\.key=value"),
    ("folds..k=3", r"has an empty part"),
])
def test_set_that_does_not_parse_is_a_one_line_error(text, message):
    with pytest.raises(ConfigError, match=message) as caught:
        parse_override(text)
    assert "\n" not in str(caught.value)


def test_good_values_pass_and_ints_become_floats():
    config = load(MEMBER % ", learning_rate: 1, dropout: 0")
    assert config.members[0].learning_rate == 1.0 and isinstance(config.members[0].learning_rate, float)
    assert config.members[0].input_size is None  # Optional stays None


def test_every_literal_field_is_checked_generically():
    # the loader knows no field by name: each Literal annotation of MemberConfig (the scale
    # settings included) refuses a value outside it, and accepts each of its choices
    hints = get_type_hints(MemberConfig, include_extras=True)
    literal_fields = [f.name for f in dataclasses.fields(MemberConfig) if get_args(hints[f.name])
                      and all(isinstance(a, str) for a in get_args(hints[f.name]))]
    assert {"mode", "resize", "unfreeze"} <= set(literal_fields)
    for name in literal_fields:
        for choice in get_args(hints[name]):
            try:
                assert getattr(load(MEMBER % f", {name}: {choice}").members[0], name) == choice
            except ConfigError as err:  # the value passed; a cross-field rule wants a companion (probe_of)
                assert f"members[0].{name}:" not in str(err), err
        with pytest.raises(ConfigError, match=rf"members\[0\]\.{name}: the string 'nonsense' is not one of"):
            load(MEMBER % f", {name}: nonsense")


def test_registry_names_are_checked_at_load_when_given():
    choices = run_pipeline.registered_choices()
    with pytest.raises(ConfigError, match=r"stack\.stackers\[1\]: the string 'xgbost' is not one of"):
        load("stack.stackers=[mean, xgbost]", choices=choices)
    with pytest.raises(ConfigError, match=r"decision\.rules\[0\]: the string 'globl' is not one of"):
        load("decision.rules=[globl]", choices=choices)
    with pytest.raises(ConfigError, match=r"members\[0\]\.backbone: the string 'resnet5' is not one of"):
        load(MEMBER.replace("tiny_cnn", "resnet5") % "", choices=choices)
    assert load(choices=choices).stack.stackers  # the shipped demo config passes the same check


def test_config_vocabularies_match_the_registries_that_use_them():
    # one source per vocabulary: the Literal the loader checks is the registry's set of names
    # (plug-ins, losses and poolings included, have no Literal: their registry is the vocabulary)
    from fashion_stack.models.inputs import RESIZE_POLICIES
    from fashion_stack.models.stage import MODES
    hints = get_type_hints(MemberConfig, include_extras=True)
    assert set(get_args(hints["resize"])) == set(RESIZE_POLICIES)
    assert set(get_args(hints["mode"])) == set(MODES)
    from fashion_stack.datasets.manifest import POOLS
    assert set(get_args(get_type_hints(type(PipelineConfig().data))["pool"])) == set(POOLS)


@pytest.mark.parametrize("override", ["stack.stackers=mean", "decision.rules=[]", "folds.k=[",
                                      MEMBER % ", batch_size: 0", "stack.stackers=[mean, nosuch]"])
def test_cli_refuses_bad_settings_before_any_work(tmp_path, capsys, override):
    run = tmp_path / "run"
    assert run_pipeline.main(["--run-dir", str(run), "--set", override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert not run.exists()  # nothing was written: no stage started
