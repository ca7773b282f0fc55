"""Every plug-in through one harness (core.registry): each registry refuses a name registered
twice; each stacker and rule has its harness row; each plug-in's declared settings resolve to
their defaults, and a value outside any declared bound is refused when the config loads, as a
one-line error naming the setting's dotted key. Nothing here names a plug-in: a new one is
checked by being registered."""
from __future__ import annotations

import dataclasses
from typing import Annotated, get_args, get_origin, get_type_hints

import annotated_types
import pytest

from fashion_stack import pipeline
from fashion_stack.core.config import ConfigError, dump_config, load_config, parse_override
from fashion_stack.core.registry import Registry
from plugin_harness import RULE_ROWS, STACKER_ROWS

CHOICES = pipeline.registered_choices()
MEMBER = "members=[{name: m, backbone: tiny_cnn, weights: null, %s: %s}]"
# where each kind of plug-in is written in a config, and the dotted key its settings get there
WRITTEN = {
    "stack.stackers": ("stack.stackers=[%s]", "stack.stackers[0]"),
    "decision.rules": ("decision.rules=[%s]", "decision.rules[0]"),
    "members.loss": (MEMBER.replace("%s: %s", "loss: %s"), "members[0].loss"),
    "members.pooling": (MEMBER.replace("%s: %s", "pooling: %s"), "members[0].pooling"),
}
PLUGINS = [pytest.param(kind, name, id=f"{kind}:{name}") for kind in WRITTEN for name in sorted(CHOICES[kind])]


def _entry(name: str, params: dict) -> str:
    inner = ", ".join(f"{k}: {v!r}" if isinstance(v, str) else f"{k}: {v}" for k, v in params.items())
    return f"{{name: {name}, params: {{{inner}}}}}"


def _load(kind: str, name: str, params: dict):
    return load_config(None, [parse_override(WRITTEN[kind][0] % _entry(name, params))], choices=CHOICES)


def _out_of_bounds(hint) -> list:
    """(bad value, what the error says) for every bound an Annotated setting declares."""
    if get_origin(hint) is not Annotated:
        return []
    base, *markers = get_args(hint)
    step = 1 if base is int else 0.5
    flat = [m for marker in markers for m in (marker if isinstance(marker, annotated_types.GroupedMetadata) else [marker])]
    bad = []
    for marker in flat:
        for attribute, offset, says in (("ge", -step, "at least"), ("gt", 0, "greater than"),
                                        ("le", step, "at most"), ("lt", 0, "less than")):
            bound = getattr(marker, attribute, None)
            if bound is not None:
                bad.append((base(bound + offset), f"it must be {says} {bound}"))
    return bad


def test_a_name_registered_twice_is_refused_naming_both():
    registry = Registry("widget")
    registry.register("a")(type("First", (), {}))
    with pytest.raises(ValueError, match=r"widget 'a' is registered twice \(.*First and .*Second\)"):
        registry.register("a")(type("Second", (), {}))
    with pytest.raises(ValueError, match=r"unknown widget 'b'; valid widgets: \['a'\]"):
        registry.create("b")


def test_every_plugin_has_a_harness_row():
    assert set(STACKER_ROWS) == set(CHOICES["stack.stackers"])
    assert set(RULE_ROWS) == set(CHOICES["decision.rules"])


@pytest.mark.parametrize("kind, name", PLUGINS)
def test_declared_settings_resolve_to_their_defaults_and_round_trip(kind, name):
    registry = CHOICES[kind]
    defaults = {f.name: (f.default_factory() if f.default is dataclasses.MISSING else f.default)
                for f in registry.settings(name)}
    assert registry.resolve(name, {}) == defaults
    config = _load(kind, name, {})
    again = load_config(None, [{"members": [dataclasses.asdict(m) for m in config.members]},
                               {"stack": dataclasses.asdict(config.stack)},
                               {"decision": dataclasses.asdict(config.decision)}], choices=CHOICES)
    assert dump_config(again) == dump_config(config)  # what a run records loads back the same


@pytest.mark.parametrize("kind, name", PLUGINS)
def test_a_setting_outside_its_declared_bounds_is_refused_at_load_naming_its_key(kind, name):
    registry = CHOICES[kind]
    hints = get_type_hints(registry[name], include_extras=True)
    cases = [(f.name, value, says) for f in registry.settings(name) for value, says in _out_of_bounds(hints[f.name])]
    for setting, value, says in cases:
        with pytest.raises(ConfigError) as caught:
            _load(kind, name, {setting: value})
        message = str(caught.value)
        assert f"{WRITTEN[kind][1]}.params.{setting} is {value!r}" in message and says in message, message
        assert "\n" not in message
    with pytest.raises(ConfigError, match=rf"unknown setting\(s\) {WRITTEN[kind][1]}\.params\.no_such_setting".replace("[", r"\[").replace("]", r"\]")):
        _load(kind, name, {"no_such_setting": 1})
