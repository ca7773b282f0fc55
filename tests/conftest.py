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
