"""Shared fixtures. Tests that need ../shared skip cleanly where it is absent."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHARED = ROOT.parent / "shared"
SHARED_DATA = SHARED / "data"


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs ../shared/{'/'.join(parts)}, absent on this machine")
    return path


@pytest.fixture
def imat_dir() -> Path:
    return shared_path("data", "imat2018")


@pytest.fixture
def ccp_dir() -> Path:
    return shared_path("data", "ccp")


def pytest_collection_modifyitems(config, items):
    """A `-m` given on the command line replaces pytest.ini's `-m "not slow"`; an expression that
    does not mention slow (`-m "not integration"`, the fast inner loop) keeps slow tests out as
    the default does. Ask for them by name: `-m "slow or integration"`, `-m "not integration or slow"`."""
    expression = config.getoption("markexpr") or ""
    if not expression or "slow" in expression:
        return
    kept = [item for item in items if item.get_closest_marker("slow") is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item.get_closest_marker("slow")])
        items[:] = kept
