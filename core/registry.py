"""Name -> class registries filled by a decorator (stackers, decision rules): an unknown name is an
error that lists the valid ones, as timm's create_model does."""
from __future__ import annotations


class Registry(dict):
    def __init__(self, kind: str, name_attribute: str = "name"):
        super().__init__()
        self.kind = kind  # "stacker", "decision rule": what the error message calls an entry
        self.name_attribute = name_attribute

    def register(self, name: str):
        def decorate(cls):
            setattr(cls, self.name_attribute, name)
            self[name] = cls
            return cls
        return decorate

    def create(self, name: str, **params):
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; valid {self.kind}s: {sorted(self)}")
        return self[name](**params)
