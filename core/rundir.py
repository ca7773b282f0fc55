"""The run directory: one folder per run, finished units marked by a DONE.json written last.

A unit (a fold of a member, a stacker, the decision stage...) is done when its DONE.json exists
and records the same config hash and folds hash as the current run. A DONE.json with other hashes
means the inputs changed under finished work: that is an error unless the user asked to redo.
"""
from __future__ import annotations

import functools
import hashlib
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Optional

from core import atomic
from core.log import get_logger

DONE = "DONE.json"


class StaleArtifactError(RuntimeError):
    """Finished work was made under another config or fold assignment."""


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    # Fixed places, as DESIGN.md lays them out.
    @property
    def manifest(self) -> Path:
        return self.root / "manifest.parquet"

    @property
    def folds(self) -> Path:
        return self.root / "folds.csv"

    @property
    def submission(self) -> Path:
        return self.root / "submission.csv"

    def member_dir(self, member: str) -> Path:
        return self.root / "members" / member

    def fold_dir(self, member: str, fold: int) -> Path:
        return self.member_dir(member) / f"fold{fold}"

    def stacker_dir(self, stacker: str) -> Path:
        return self.root / "ensemble" / stacker

    @property
    def decision_dir(self) -> Path:
        return self.root / "decision"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    def folds_hash(self) -> Optional[str]:
        path = self.root / "folds.csv.sha256"
        return path.read_text().split()[0] if path.exists() else None


def is_done(unit_dir: Path, config_hash: str, folds_hash: Optional[str], redo: bool = False,
            inputs_hash: Optional[str] = None) -> bool:
    """True if the unit finished under these hashes. Raises if it finished under another config or
    folds, unless `redo`, in which case the old unit is removed and False is returned.

    `inputs_hash` fingerprints upstream artifacts (a stacker's member predictions, say). When only
    those changed, e.g. a member was added or retrained, the unit is derived work that is simply out
    of date: it is removed and recomputed without asking, and the log says so."""
    marker = Path(unit_dir) / DONE
    if not marker.exists():
        return False
    record = atomic.read_json(marker)
    same = record.get("config_hash") == config_hash and record.get("folds_hash") == folds_hash
    if same and not redo and record.get("inputs_hash") == inputs_hash:
        return True
    if redo or same:
        if same and not redo:
            get_logger("rundir").info("%s: its inputs changed since it was made; recomputing", unit_dir)
        shutil.rmtree(unit_dir)
        return False
    raise StaleArtifactError(
        f"{unit_dir} was finished under config hash {record.get('config_hash')} / folds hash "
        f"{record.get('folds_hash')}, but the run now has {config_hash} / {folds_hash}. "
        "Pass --redo STAGE (or --redo all) to recompute it, or use another --run-dir."
    )


def mark_done(unit_dir: Path, config_hash: str, folds_hash: Optional[str], inputs_hash: Optional[str] = None,
              **info) -> None:
    """Write DONE.json last, after every other file of the unit."""
    record = {"config_hash": config_hash, "folds_hash": folds_hash, "inputs_hash": inputs_hash,
              "finished_at": time.time(), **info}
    atomic.write_json(Path(unit_dir) / DONE, record)


def files_hash(paths) -> str:
    """Fingerprint of artifacts by name, size and modification time (their writers replace them
    atomically, so a rewrite always changes the mtime); a missing file counts as its own state."""
    parts = []
    for path in sorted(map(Path, paths)):
        stat = path.stat() if path.exists() else None
        parts.append(f"{path}:{stat.st_size}:{stat.st_mtime_ns}" if stat else f"{path}:missing")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def read_done(unit_dir: Path) -> dict:
    return atomic.read_json(Path(unit_dir) / DONE)


PACKAGES = ("tensorflow-cpu", "tensorflow", "keras", "xgboost-cpu", "xgboost", "numpy", "pandas",
            "scikit-learn", "joblib", "pyarrow", "pillow", "iterative-stratification", "jax", "torch")


def environment_record() -> dict:
    """Package versions, git sha and host, saved as env.json beside the resolved config."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": platform.node(),
        "packages": versions,
        "git_sha": _git_sha(),
    }


def _git_sha() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def derived_stage(name: str, inputs, outputs, config_sections=()):
    """Make a cheap stage whose outputs follow from artifacts already on disk (features summary,
    submission, comparison, report) skip when neither its input files nor the named config
    sections changed and its outputs still exist; otherwise it simply recomputes (nothing here
    is worth asking the user about). `inputs(ctx)` and `outputs(ctx)` list paths."""
    def wrap(entry):
        @functools.wraps(entry)
        def run(ctx) -> dict:
            unit = ctx.run.root / "stages" / name
            config_part = ctx.config.section_hash(*config_sections) if config_sections else ""
            inputs_hash = f"{config_part}:{files_hash(inputs(ctx))}"
            # folds are an input like any other here (folds.csv is listed where it matters)
            done = is_done(unit, name, None, redo=ctx.redo_stage(name), inputs_hash=inputs_hash)
            if done and all(Path(p).exists() for p in outputs(ctx)):
                return {**read_done(unit).get("summary", {}), "up_to_date": True}
            summary = entry(ctx)
            unit.mkdir(parents=True, exist_ok=True)
            mark_done(unit, name, None, inputs_hash=inputs_hash, summary=summary)
            return summary
        return run
    return wrap
