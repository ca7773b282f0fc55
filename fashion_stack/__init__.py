"""fashion-stack: the installed command (`fashion-stack`, `python -m fashion_stack`) over the
pipeline's packages (core, datasets, models, features, ensemble, submissions, reports)."""
from importlib import metadata

try:
    __version__ = metadata.version("fashion-stack")
except metadata.PackageNotFoundError:  # a source checkout that was never installed
    __version__ = "unknown"
