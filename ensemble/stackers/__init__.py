"""Stackers: second-level models that turn members' probabilities into one probability per label.

One module per family, registered by name in base.STACKERS (core.registry):
averages (mean, weighted), linear, boosted (xgboost per label, xgboost_long over (image, label)
rows), grid (grid_cnn, a Keras network over the members x labels matrix). See make_stacker.
Every module of this package is imported here, so a new stacker is one new module (see
docs/EXTENDING.md): nothing else lists it.
"""
import importlib
import pkgutil

from fashion_stack.ensemble.stackers.base import (STACKERS, Stacker, as_member_stack, load_stacker, make_stacker,
                                                  register_stacker, stacker_params, stacker_settings)
from fashion_stack.ensemble.stackers.averages import MeanStacker, WeightedMeanStacker
from fashion_stack.ensemble.stackers.linear import LinearStacker
from fashion_stack.ensemble.stackers.boosted import LongFormatXGBoostStacker, XGBoostStacker
from fashion_stack.ensemble.stackers.grid import GridStacker

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["STACKERS", "Stacker", "as_member_stack", "load_stacker", "make_stacker", "register_stacker",
           "stacker_params", "stacker_settings", "MeanStacker", "WeightedMeanStacker", "LinearStacker",
           "XGBoostStacker", "LongFormatXGBoostStacker", "GridStacker"]
