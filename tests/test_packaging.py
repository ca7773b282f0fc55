"""The installable package: one place for each pin, and a wheel that works away from the checkout
(built and installed here without the network: no build isolation, no index, no dependencies)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from core.config import PROJECT_ROOT

PACKAGES = ("core", "datasets", "models", "features", "ensemble", "submissions", "reports", "fashion_stack")
# requirements-gpu.txt is requirements.txt with the CUDA builds in place of the CPU-only ones
CUDA_BUILDS = {"tensorflow-cpu": "tensorflow[and-cuda]", "xgboost-cpu": "xgboost"}


def _requirements(path: Path) -> list:
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _pins(path: Path) -> dict:
    return {Requirement(line).name.lower(): str(Requirement(line)) for line in _requirements(path)
            if not line.startswith("-r")}


def test_pyproject_takes_every_dependency_from_the_requirements_files():
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    dynamic = project["tool"]["setuptools"]["dynamic"]
    assert set(project["project"]["dynamic"]) == {"dependencies", "optional-dependencies"}
    assert "dependencies" not in project["project"] and "optional-dependencies" not in project["project"]
    assert dynamic["dependencies"] == {"file": ["requirements.txt"]}
    assert dynamic["optional-dependencies"] == {
        "gpu": {"file": ["requirements/jax.txt", "requirements/gpu.txt"]},
        "dev": {"file": ["requirements/dev.txt", "requirements/jax.txt", "requirements/ray.txt"]},
        "kaggle": {"file": ["requirements/kaggle.txt"]}, "ray": {"file": ["requirements/ray.txt"]}}
    assert project["project"]["scripts"] == {"fashion-stack": "fashion_stack.cli:main"}


def test_every_requirement_is_pinned_and_written_in_one_file_only():
    files = [PROJECT_ROOT / "requirements.txt", *sorted((PROJECT_ROOT / "requirements").glob("*.txt"))]
    seen = {}
    for path in files:
        for line in _requirements(path):
            assert " #" not in line, f"{path.name}: {line!r}: put the comment on a line of its own (setuptools reads the line whole)"
            requirement = Requirement(line)
            [spec] = requirement.specifier
            assert spec.operator == "==", f"{path.name}: {line} is not pinned"
            assert requirement.name.lower() not in seen, f"{requirement.name} is in {seen.get(requirement.name.lower())} and {path.name}"
            seen[requirement.name.lower()] = path.name


def test_the_readmes_dev_install_is_the_runtime_list_plus_the_dev_extra():
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    dev_files = project["tool"]["setuptools"]["dynamic"]["optional-dependencies"]["dev"]["file"]
    assert _requirements(PROJECT_ROOT / "requirements-dev.txt") == [f"-r {name}" for name in ["requirements.txt", *dev_files]]


def test_the_tensorflow_gpu_list_is_the_runtime_list_with_the_cuda_builds():
    cpu, gpu = _pins(PROJECT_ROOT / "requirements.txt"), _pins(PROJECT_ROOT / "requirements-gpu.txt")
    expected = {CUDA_BUILDS.get(name, name).split("[")[0]: pin.replace(name, CUDA_BUILDS.get(name, name), 1)
                for name, pin in cpu.items()}
    assert gpu == expected


# ---- the wheel, installed away from the checkout ------------------------------------------------


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel built from a copy of the source tree, installed with pip into a folder of its own."""
    root = tmp_path_factory.mktemp("packaging")
    source = root / "source"
    shutil.copytree(PROJECT_ROOT, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "runs", ".cache", "build", "*.egg-info", "__pycache__", ".pytest_cache", "out"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(root / "dist"),
                          str(source)], check=True, capture_output=True)
    [wheel] = (root / "dist").glob("fashion_stack-*.whl")
    site = root / "site"
    subprocess.run(pip + ["install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    return {"site": site, "source": source, "cwd": elsewhere}


def _run(installed, *command):
    env = {**os.environ, "PYTHONPATH": str(installed["site"])}
    out = subprocess.run(list(command), cwd=installed["cwd"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def _tree(folder: Path, pattern: str) -> set:
    return {str(path.relative_to(folder)) for path in folder.glob(pattern) if "__pycache__" not in path.parts}


def test_the_installed_copy_holds_every_module_config_and_label_statistics_file(installed):
    source, site = installed["source"], installed["site"]
    expected = {path for package in PACKAGES for path in _tree(source, f"{package}/**/*.py")}
    expected |= {"run_pipeline.py"} | _tree(source, "configs/*") | _tree(source, "datasets/resources/*")
    expected -= {path for path in expected if path.endswith(".pyc")}
    installed_files = {path for path in _tree(site, "**/*") if not path.startswith(("bin/", "fashion_stack-"))
                       and (site / path).is_file()}
    assert expected == installed_files


def test_the_installed_command_and_python_m_work_away_from_the_checkout(installed):
    script = installed["site"] / "bin" / "fashion-stack"
    top = _run(installed, str(script), "--help")
    assert all(command in top for command in ("run", "configs", "validate"))
    run_help = _run(installed, str(script), "run", "--help")
    assert run_help.startswith("usage: fashion-stack run") and "kaggle_submit" in run_help and "--redo" in run_help
    assert "usage: fashion-stack run" in _run(installed, sys.executable, "-m", "fashion_stack", "run", "--help")
    assert "--stages" in _run(installed, sys.executable, "-m", "run_pipeline", "--help")
    listing = _run(installed, sys.executable, "-m", "fashion_stack", "configs")
    assert f"kaggle               {installed['site'] / 'configs' / 'kaggle.yaml'}" in listing


def test_the_installed_copy_reads_its_own_configs_and_label_statistics_and_writes_under_the_cwd(installed):
    probe = ("from core.config import load_config, config_path, cache_root, DemoConfig\n"
             "from datasets.demo import demo_cache_dir, generate_demo\n"
             "import core\n"
             "cfg = DemoConfig(n_train=8, n_validation=4, n_test=4, image_size=32)\n"
             "print(core.__file__); print(config_path('ccp')); print(load_config('kaggle').kaggle.competition)\n"
             "print(generate_demo(demo_cache_dir(cfg), cfg))\n")
    lines = _run(installed, sys.executable, "-c", probe).splitlines()
    site, cwd = installed["site"], installed["cwd"]
    assert lines[0] == str(site / "core" / "__init__.py") and lines[1] == str(site / "configs" / "ccp.yaml")
    assert lines[2] == "imaterialist-challenge-fashion-2018"
    demo = Path(lines[3])
    assert demo.parent == cwd / ".cache" / "demo" and (demo / "label_map.csv").is_file()
    assert len(list((demo / "images").glob("*.jpg"))) == 16  # drawn from the packaged label statistics
