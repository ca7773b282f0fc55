"""The installable package: one place for each pin, and a wheel that works away from the checkout
(built and installed here without the network: no build isolation, no index, no dependencies)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from fashion_stack.core.config import PROJECT_ROOT

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


# ---- the wheel, installed into a venv of its own beside Hugging Face's `datasets` ----------------

NAMESPACE_FOLDERS = ("core", "datasets", "models", "features", "ensemble", "submissions", "reports", "configs")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel built from a copy of the source tree, installed with pip into a new venv that sees
    this environment's packages (Hugging Face `datasets` among them, as in a Kaggle notebook)."""
    root = tmp_path_factory.mktemp("packaging")
    source = root / "source"
    shutil.copytree(PROJECT_ROOT, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "runs", ".cache", "build", "*.egg-info", "__pycache__", ".pytest_cache", "out"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(root / "dist"),
                          str(source)], check=True, capture_output=True)
    [wheel] = (root / "dist").glob("fashion_stack-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # the new venv sees this environment's packages (TensorFlow, Hugging Face datasets...) after its own
    (site / "test_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(pip + ["install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    # a user's working folder with its own `models/` and `core/` packages (`python -c` and `-m` put
    # the working folder first on sys.path: a generic top-level name of ours would be shadowed)
    elsewhere = root / "elsewhere"
    for own in ("models", "core"):
        (elsewhere / own).mkdir(parents=True)
        (elsewhere / own / "__init__.py").write_text("raise ImportError('a user package was imported')\n")
    return {"site": site, "source": source, "cwd": elsewhere, "python": python, "bin": venv / "bin"}


def _run(installed, *command):
    out = subprocess.run(list(command), cwd=installed["cwd"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def _tree(folder: Path, pattern: str) -> set:
    return {str(path.relative_to(folder)) for path in folder.glob(pattern) if "__pycache__" not in path.parts}


@pytest.mark.integration
def test_the_wheel_puts_one_package_in_site_packages_holding_every_module_config_and_resource(installed):
    source, site = installed["source"], installed["site"]
    wheel_files = {path for path in _tree(site, "**/*") if not path.startswith(("bin/", "fashion_stack-"))
                   and (site / path).is_file() and path.startswith("fashion_stack/")}
    top_level = {path.split("/")[0] for path in _tree(site, "*")} - {"__pycache__"}
    assert not top_level & {*NAMESPACE_FOLDERS, "run_pipeline.py"}, f"generic names in site-packages: {top_level}"
    expected = {f"fashion_stack/{path}" for folder in NAMESPACE_FOLDERS for path in _tree(source, f"{folder}/**/*")
                if (source / path).is_file() and not path.endswith(".pyc")}
    expected |= {path for path in _tree(source, "fashion_stack/**/*.py")}
    assert expected == wheel_files


@pytest.mark.integration
def test_the_installed_package_sits_beside_hugging_face_datasets_and_a_users_own_models_folder(installed):
    probe = ("import datasets\n"
             "from datasets import Dataset\n"
             "hf = Dataset.from_dict({'imageId': ['1', '2'], 'labelId': [['3'], ['4', '5']]})\n"
             "import fashion_stack.datasets.manifest, fashion_stack.models.backbones as backbones\n"
             "from fashion_stack.core.config import load_config\n"
             "print(datasets.__file__); print(len(hf), hf[1]['labelId'])\n"
             "print(fashion_stack.datasets.manifest.__file__); print(load_config('ccp').name)\n"
             "print(','.join(backbones.backbone_names()))\n")
    lines = _run(installed, str(installed["python"]), "-c", probe).splitlines()
    site = installed["site"]
    assert lines[0].endswith("datasets/__init__.py") and "fashion_stack" not in lines[0]  # Hugging Face's
    assert lines[1] == "2 ['4', '5']"
    assert lines[2] == str(site / "fashion_stack" / "datasets" / "manifest.py") and lines[3] == "ccp"
    assert "mobilenet_v2" in lines[4].split(",")


@pytest.mark.integration
def test_the_installed_command_and_python_m_work_from_a_folder_with_its_own_models(installed):
    script = installed["bin"] / "fashion-stack"
    if not script.exists():  # pip --target puts scripts under the target's bin/
        script = installed["site"] / "bin" / "fashion-stack"
    top = _run(installed, str(installed["python"]), str(script), "--help")
    assert all(command in top for command in ("run", "configs", "validate"))
    run_help = _run(installed, str(installed["python"]), str(script), "run", "--help")
    assert run_help.startswith("usage: fashion-stack run") and "kaggle_submit" in run_help and "--redo" in run_help
    python = str(installed["python"])
    assert "usage: fashion-stack run" in _run(installed, python, "-m", "fashion_stack", "run", "--help")
    listing = _run(installed, python, "-m", "fashion_stack", "configs")
    assert f"kaggle               {installed['site'] / 'fashion_stack' / 'configs' / 'kaggle.yaml'}" in listing


@pytest.mark.integration
def test_the_installed_copy_reads_its_own_configs_and_label_statistics_and_writes_under_the_cwd(installed):
    probe = ("from fashion_stack.core.config import load_config, config_path, cache_root, DemoConfig\n"
             "from fashion_stack.datasets.demo import demo_cache_dir, generate_demo\n"
             "import fashion_stack.core as core\n"
             "cfg = DemoConfig(n_train=8, n_validation=4, n_test=4, image_size=32)\n"
             "print(core.__file__); print(config_path('ccp')); print(load_config('kaggle').kaggle.competition)\n"
             "print(generate_demo(demo_cache_dir(cfg), cfg))\n")
    lines = _run(installed, str(installed["python"]), "-c", probe).splitlines()
    site, cwd = installed["site"] / "fashion_stack", installed["cwd"]
    assert lines[0] == str(site / "core" / "__init__.py") and lines[1] == str(site / "configs" / "ccp.yaml")
    assert lines[2] == "imaterialist-challenge-fashion-2018"
    demo = Path(lines[3])
    assert demo.parent == cwd / ".cache" / "demo" and (demo / "label_map.csv").is_file()
    assert len(list((demo / "images").glob("*.jpg"))) == 16  # drawn from the packaged label statistics


@pytest.mark.integration
def test_a_checkout_runs_run_pipeline_py_without_an_install():
    out = subprocess.run([sys.executable, "run_pipeline.py", "--help"], cwd=PROJECT_ROOT, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0 and "--stages" in out.stdout, out.stderr[-2000:]
