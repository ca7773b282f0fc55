"""The documentation names only what exists: every relative link, every `python -m` module, every
benchmark and config it mentions; the README stays a short front door."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from fashion_stack.core.config import PROJECT_ROOT

DOCS = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
MODULE = re.compile(r"python -m ((?:fashion_stack|benchmarks)(?:\.[a-z_0-9]+)*)")
CONFIG = re.compile(r"\bconfigs/([a-z0-9_/]+\.yaml)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_relative_link_names_a_file_that_exists(doc):
    missing = [target for target in LINK.findall(doc.read_text(encoding="utf-8"))
               if "://" not in target and not (doc.parent / target).exists()]
    assert not missing, f"{doc.name} links to files that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_module_and_config_named_exists(doc):
    text = doc.read_text(encoding="utf-8")
    modules = sorted(set(MODULE.findall(text)))
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    configs = sorted(set(CONFIG.findall(text)))
    missing += [f"configs/{name}" for name in configs if not (PROJECT_ROOT / "configs" / name).is_file()]
    assert not missing, f"{doc.name} names what does not exist: {missing}"


def test_the_readme_is_a_short_front_door_with_the_two_commands_ci_runs():
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    ci = (PROJECT_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    test_command = next(line.strip() for line in readme.splitlines() if "requirements-dev.txt" in line and "pytest" in line)
    # .ci/run is the README's test command, with the venv's paths as written there
    assert test_command.replace(" && ", "\n").splitlines()[-1].split("/", 1)[1] in ci
    assert "run_pipeline.py" in next(line for line in readme.splitlines() if "requirements.txt &&" in line)
