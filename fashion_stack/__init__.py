"""fashion-stack: a stacked-ensemble pipeline for multi-label fashion-image competitions.

Installed, everything lives in this one namespace: fashion_stack.core, .datasets, .models,
.features, .ensemble, .submissions, .reports, .configs, .pipeline, and the `fashion-stack`
command (`python -m fashion_stack`). In a source checkout those subpackages sit at the top of the
checkout (models/, features/, ensemble/ ... as the layout shows a reader); the package's search
path then includes the checkout, so `fashion_stack.models` is ./models there, with no install.
"""
from importlib import metadata
from pathlib import Path as _Path

_CHECKOUT = _Path(__file__).resolve().parent.parent
# A checkout is recognised by its own files, never by what happens to sit beside an installed copy
# in site-packages (a stray `models/` there must not become ours).
if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "core" / "config.py").is_file() \
        and (_CHECKOUT / "run_pipeline.py").is_file():
    __path__.append(str(_CHECKOUT))  # noqa: F821 (a package's __path__)

try:
    __version__ = metadata.version("fashion-stack")
except metadata.PackageNotFoundError:  # a source checkout that was never installed
    __version__ = "unknown"
