"""Name -> plug-in registries: backbones, heads (poolings), losses, stackers and decision rules.

One idiom for every kind of plug-in:

- a plug-in is registered once by name (`@STACKERS.register("xgboost")`); a name registered twice
  is an error, so two modules cannot silently replace each other's entry;
- a plug-in class owns its settings: they are its dataclass fields, with their defaults and their
  constraints as annotated_types markers (`n_estimators: Annotated[int, Ge(1)] = 300`), declared
  once, the way scikit-learn estimators declare `_parameter_constraints`. The config loader
  (core.config) checks a YAML `{name, params}` entry against exactly these fields, so a bad value
  is a one-line error naming its dotted key when the config loads;
- fields the pipeline supplies rather than the user (a decision rule's min_labels, the label
  groups) are listed in the class's `provided` and cannot be set in YAML;
- an unknown name is an error that lists the valid ones, as timm's create_model does.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional


class Registry(dict):
    def __init__(self, kind: str, name_attribute: Optional[str] = "name"):
        super().__init__()
        self.kind = kind  # "stacker", "decision rule": what the error message calls an entry
        self.name_attribute = name_attribute  # set on a registered class (None: leave the entry alone)

    def add(self, name: str, entry: Any) -> Any:
        if name in self:
            raise ValueError(f"{self.kind} {name!r} is registered twice ({_where(self[name])} and {_where(entry)})")
        self[name] = entry
        return entry

    def register(self, name: str):
        """Class decorator: register the class under `name` (and set its name attribute)."""
        def decorate(entry):
            self.add(name, entry)
            if self.name_attribute and isinstance(entry, type):
                setattr(entry, self.name_attribute, name)
            return entry
        return decorate

    def get_entry(self, name: str) -> Any:
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; valid {self.kind}s: {sorted(self)}")
        return self[name]

    def create(self, name: str, **params):
        return self.get_entry(name)(**params)

    def settings(self, name: str) -> list:
        """The dataclass fields of `name` a config may set (its declared settings, less `provided`)."""
        return settable_fields(self.get_entry(name))

    def resolve(self, name: str, params: Optional[dict] = None, where: str = "") -> dict:
        """Every setting of `name`: `params` checked against its declarations (a one-line
        core.config.ConfigError naming `where` and the key otherwise), defaults filled in."""
        from fashion_stack.core.config import check_plugin_params
        return check_plugin_params(self.get_entry(name), params or {}, where or f"{self.kind} {name}", {})


def settable_fields(entry) -> list:
    if not dataclasses.is_dataclass(entry):
        return []
    provided = set(getattr(entry, "provided", ()))
    return [f for f in dataclasses.fields(entry) if f.init and f.name not in provided]


def _where(entry) -> str:
    return f"{getattr(entry, '__module__', '?')}.{getattr(entry, '__qualname__', type(entry).__name__)}"


class ProcessCache(dict):
    """A named cache that lives as long as the process (compiled networks, worker pools, device
    strategies, a member's image cache): every one is listed in ProcessCache.ALL under its name,
    so none is hidden, and clear_process_caches() drops them all (a long-lived process, a test)."""

    ALL: dict = {}

    def __init__(self, name: str, why: str):
        super().__init__()
        self.name, self.why = name, why
        ProcessCache.ALL[name] = self


def clear_process_caches() -> None:
    for cache in ProcessCache.ALL.values():
        cache.clear()
