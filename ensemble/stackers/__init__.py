"""Stackers: second-level models that turn members' probabilities into one probability per label.

One module per family, registered by name in base.STACKERS (core.registry):
averages (mean, weighted), linear, boosted (xgboost per label, xgboost_long over (image, label)
rows), grid (grid_cnn, a Keras network over the members x labels matrix). See make_stacker.
"""
from fashion_stack.ensemble.stackers.base import (STACKERS, Stacker, as_member_stack, load_stacker, make_stacker,
                                    register_stacker, stacker_params)
from fashion_stack.ensemble.stackers.averages import MeanStacker, WeightedMeanStacker
from fashion_stack.ensemble.stackers.linear import LinearStacker
from fashion_stack.ensemble.stackers.boosted import LongFormatXGBoostStacker, XGBoostStacker
from fashion_stack.ensemble.stackers.grid import GridStacker

__all__ = ["STACKERS", "Stacker", "as_member_stack", "load_stacker", "make_stacker", "register_stacker",
           "stacker_params", "MeanStacker", "WeightedMeanStacker", "LinearStacker", "XGBoostStacker",
           "LongFormatXGBoostStacker", "GridStacker"]
