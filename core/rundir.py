"""The run directory: one folder per run, finished units marked by a DONE.json written last.

A unit (a fold of a member, a stacker, the decision stage...) is done when its DONE.json exists
and records the same config hash and folds hash as the current run. A DONE.json with other hashes
means the inputs changed under finished work: that is an error unless the user asked to redo.
"""
from __future__ import annotations

import fcntl
import functools
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from fashion_stack.core import atomic, lineage
from fashion_stack.core.log import get_logger
from fashion_stack.core.names import check_name

DONE = "DONE.json"


class StaleArtifactError(RuntimeError):
    """Finished work was made under another config or fold assignment."""


class RunDirError(RuntimeError):
    """The run directory cannot be used: another run holds it, or it is not writable."""


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    # Fixed places (docs/CONTRACTS.md lists every artifact and its format).
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
        return self.root / "members" / check_name(member, "member name")

    def fold_dir(self, member: str, fold: int) -> Path:
        return self.member_dir(member) / f"fold{fold}"

    def stacker_dir(self, stacker: str) -> Path:
        return self.root / "ensemble" / check_name(stacker, "stacker name")

    @property
    def decision_dir(self) -> Path:
        return self.root / "decision"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    def folds_hash(self) -> Optional[str]:
        path = self.root / "folds.csv.sha256"
        return path.read_text().split()[0] if path.exists() else None


class UnfinishedUnitError(RuntimeError):
    """An upstream unit that a stage would consume has no valid DONE record, or a damaged artifact."""


def is_done(unit_dir: Path, config_hash: str, folds_hash: Optional[str], redo: bool = False,
            inputs_hash=None) -> bool:
    """True if the unit finished under these hashes and its artifacts still pass their check
    (core.lineage). Raises StaleArtifactError if it finished under another config or folds,
    unless `redo`. Returns False, and logs why, when it must be rebuilt: redo asked, its inputs
    changed (a dict of named digests names which), its DONE.json or an artifact is damaged.

    Nothing is deleted here: the rebuild writes over the old files, its DONE.json last, so the
    previous output stays in place until its replacement is complete."""
    unit_dir = Path(unit_dir)
    record = _read_record(unit_dir)
    if record is None:
        return False
    same = record.get("config_hash") == config_hash and record.get("folds_hash") == folds_hash
    if not same and not redo:
        raise StaleArtifactError(
            f"{unit_dir} was finished under config hash {record.get('config_hash')} / folds hash "
            f"{record.get('folds_hash')}, but the run now has {config_hash} / {folds_hash}. "
            "Pass --redo STAGE (or --redo all) to recompute it, or use another --run-dir.")
    log = get_logger("rundir")
    if redo:
        return False
    changed = lineage.changed_inputs(record.get("inputs_hash"), inputs_hash)
    if changed:
        log.info("%s: its inputs changed since it was made (%s); recomputing", unit_dir, ", ".join(changed))
        return False
    damage = damaged_artifacts(unit_dir, record)
    if damage:
        log.warning("%s: %s; rebuilding it", unit_dir, "; ".join(damage))
        return False
    return True


def mark_done(unit_dir: Path, config_hash: str, folds_hash: Optional[str], inputs_hash=None,
              artifacts=(), **info) -> None:
    """Write DONE.json last, after every other file of the unit. `artifacts`: the files (or
    folders) the unit wrote, relative to unit_dir or absolute; each is recorded with its size,
    mtime, sha256 (and rows, columns) for the checks of core.lineage."""
    unit_dir = Path(unit_dir)
    records = [lineage.record_artifact(unit_dir, rel) for rel in lineage.artifact_files(unit_dir, artifacts)]
    record = {"config_hash": config_hash, "folds_hash": folds_hash, "inputs_hash": inputs_hash,
              "artifacts": records, "finished_at": time.time(), "written_in": str(unit_dir.absolute()), **info}
    atomic.write_json(unit_dir / DONE, record)


def read_summary(unit_dir: Path) -> dict:
    """The summary a finished unit recorded, with the paths in it moved to where the unit is now: a
    run directory can move, and its last screen must name the files at their new place."""
    unit_dir = Path(unit_dir)
    record = read_done(unit_dir)
    summary = record.get("summary") or {}
    old, new = record.get("written_in"), str(unit_dir.absolute())
    if not old or old == new:
        return summary
    # the longest common tail of the two unit paths is the part inside the run; what precedes it moved
    old_parts, new_parts = Path(old).parts, Path(new).parts
    shared = 0
    while shared < min(len(old_parts), len(new_parts)) and old_parts[-1 - shared] == new_parts[-1 - shared]:
        shared += 1
    old_root, new_root = str(Path(*old_parts[:len(old_parts) - shared])), str(Path(*new_parts[:len(new_parts) - shared]))

    def moved(value):
        if isinstance(value, str) and (value == old_root or value.startswith(old_root + os.sep)):
            return new_root + value[len(old_root):]
        if isinstance(value, dict):
            return {key: moved(item) for key, item in value.items()}
        if isinstance(value, list):
            return [moved(item) for item in value]
        return value
    return moved(summary)


def damaged_artifacts(unit_dir: Path, record: dict) -> list:
    """'<path>: <problem>' for each recorded artifact that fails its check."""
    problems = []
    for artifact in record.get("artifacts") or []:
        problem = lineage.check_artifact(unit_dir, artifact)
        if problem:
            problems.append(f"{os.path.normpath(Path(unit_dir) / artifact['path'])}: {problem}")
    return problems


def upstream_digest(unit_dir: Path, stage: str) -> str:
    """The recorded hash of a finished upstream unit, for a consumer's inputs. Raises
    UnfinishedUnitError, naming the unit and the stage that makes it, when the unit has no readable
    DONE.json (unfinished, e.g. killed before it was marked) or an artifact fails its check."""
    unit_dir = Path(unit_dir)
    record = _read_record(unit_dir)
    if record is None:
        raise UnfinishedUnitError(f"{unit_dir} has no valid {DONE}: it is not finished; run --stages {stage}")
    damage = damaged_artifacts(unit_dir, record)
    if damage:
        raise UnfinishedUnitError(f"{'; '.join(damage)}; run --stages {stage} again: it rebuilds the unit")
    if record.get("artifacts"):
        return lineage.artifacts_digest(record["artifacts"])
    return lineage.digest({k: v for k, v in record.items() if k not in ("finished_at", "written_in")})  # not where or when


def is_finished(unit_dir: Path) -> bool:
    """Whether the unit has a readable DONE.json (its artifacts are checked when consumed)."""
    return (Path(unit_dir) / DONE).is_file() and _read_record(Path(unit_dir), quiet=True) is not None


def _read_record(unit_dir: Path, quiet: bool = False) -> Optional[dict]:
    marker = unit_dir / DONE
    if not marker.exists():
        return None
    try:
        record = atomic.read_json(marker)
    except (OSError, ValueError) as err:  # truncated or garbled: the unit is not finished
        record = err
    if not isinstance(record, dict):
        if not quiet:
            get_logger("rundir").warning("%s is unreadable (%s); the unit is rebuilt", marker, record)
        return None
    return record


def files_hash(paths) -> str:
    """Fingerprint of files by name, size and modification time (see core.lineage.stamps_digest)."""
    return lineage.stamps_digest(paths)


def read_done(unit_dir: Path) -> dict:
    return atomic.read_json(Path(unit_dir) / DONE)


LOCK = "run.lock"


@contextmanager
def run_lock(root: str | Path) -> Iterator[Path]:
    """Hold the run directory for one run: a second run on it stops at once, naming the process
    that has it. The lock is the kernel's (flock), so a run killed with -9 leaves no stale lock
    behind: the next run takes it over and says whose it was. Unwritable: one clear error."""
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        handle = open(root / LOCK, "a+", encoding="utf-8")
    except OSError as err:
        raise unwritable(root, err) from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(handle)
            raise RunDirError(f"run directory {root} is in use by process {holder.get('pid', '?')} on "
                              f"{holder.get('host', '?')} since {holder.get('since', '?')}; wait for it to "
                              "finish or use another --run-dir") from None
        previous = _lock_holder(handle)
        if previous:
            get_logger("rundir").warning(
                "run directory %s: taking over the lock of process %s (since %s), which ended without "
                "releasing it (killed?)", root, previous.get("pid", "?"), previous.get("since", "?"))
        try:
            _write_holder(handle, {"pid": os.getpid(), "host": platform.node(),
                                   "since": time.strftime("%Y-%m-%d %H:%M:%S")})
        except OSError as err:  # a full disk: the lock is held all the same (flock), say so in one line
            fcntl.flock(handle, fcntl.LOCK_UN)
            raise unwritable(root, err) from None
        try:
            yield root
        finally:
            try:
                _write_holder(handle, None)
            except OSError:
                pass  # the kernel's lock is what counts; it is released below either way
            fcntl.flock(handle, fcntl.LOCK_UN)


def unwritable(root: Path, err: OSError) -> RunDirError:
    """One line for a run directory that cannot be written, with the fix for the cause."""
    import errno
    fix = ("free some space on its disk or choose another --run-dir" if err.errno in (errno.ENOSPC, errno.EDQUOT)
           else "fix its permissions or choose another --run-dir")
    return RunDirError(f"run directory {root} is not writable ({err.strerror or err}); {fix}")


def _lock_holder(handle) -> dict:
    handle.seek(0)
    try:
        holder = json.loads(handle.read() or "{}")
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _write_holder(handle, holder: Optional[dict]) -> None:
    handle.seek(0)
    handle.truncate()
    if holder:
        handle.write(json.dumps(holder))
    handle.flush()


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


def derived_stage(name: str, inputs, outputs, config_sections=(), upstream=None):
    """Make a cheap stage whose outputs follow from artifacts already on disk (features summary,
    submission, comparison, report) skip when neither its input files, its upstream units nor the
    named config sections changed and its outputs pass their check; otherwise it simply recomputes
    (nothing here is worth asking the user about). `inputs(ctx)` and `outputs(ctx)` list paths;
    `upstream(ctx)` lists (unit folder, stage that makes it): units it consumes only when finished
    (upstream_digest), by their recorded hashes."""
    def wrap(entry):
        @functools.wraps(entry)
        def run(ctx) -> dict:
            unit = ctx.run.root / "stages" / name
            inputs_hash = {"config": ctx.config.section_hash(*config_sections) if config_sections else "",
                           "files": files_hash(inputs(ctx))}
            for unit_dir, stage in (upstream(ctx) if upstream else []):
                inputs_hash[f"{stage} {Path(unit_dir).name}"] = upstream_digest(unit_dir, stage)
            # folds are an input like any other here (folds.csv is listed where it matters)
            if is_done(unit, name, None, redo=ctx.redo_stage(name), inputs_hash=inputs_hash):
                return {**read_summary(unit), "up_to_date": True}
            summary = entry(ctx)
            unit.mkdir(parents=True, exist_ok=True)
            mark_done(unit, name, None, inputs_hash=inputs_hash, artifacts=outputs(ctx),
                      summary=summary)
            return summary
        return run
    return wrap
