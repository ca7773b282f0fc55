"""The shared plug-in test harness: one row per registered stacker and decision rule, the settings
that make it quick on the tests' small data. Tests parametrised over these rows run every
plug-in through the same checks (tests/test_stackers.py, test_decision.py, test_plugins.py); a
registered plug-in without a row fails test_plugins.py::test_every_plugin_has_a_harness_row.
Adding a stacker or a rule is its module plus its row here (docs/EXTENDING.md)."""
import pytest

STACKER_ROWS = {
    "mean": {},
    "weighted": {},
    "linear": {},
    "xgboost": {"n_estimators": 30, "n_jobs": 1},
    "xgboost_long": {"n_estimators": 30, "n_jobs": 1},
    "grid_cnn": {"epochs": 3, "hidden_units": 32},
}

RULE_ROWS = {
    "global": {},
    "per_label": {},
    "expected_f1": {},
    "gfm": {},
    "group": {},
    "topk": {},
}


def rows(table: dict) -> list:
    """pytest params (name, quick settings), one per row, named by the plug-in."""
    return [pytest.param(name, settings, id=name) for name, settings in table.items()]
