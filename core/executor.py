"""Where a stage's independent units run: in this process, one after another (`local`, the
default), or as Ray core tasks on a cluster (`ray`). A stage hands its units over as `Task`s and
gets their results back in the same order; it does not know which executor ran them.

A unit is already independent, resumable and atomically written (its DONE.json last), so an
executor adds only placement: Ray places each task where its resources (CPUs, GPUs, fractions of
a GPU) are free, retries a task whose worker died (the retry resumes from the unit's own
checkpoint), and stops the run with a unit's error once its retries are spent; units that finished
stay done, and a rerun does only the rest. The run directory must be on storage every node sees.

Progress: units done / total with each unit's time and node, in the log and appended to
<run>/executor/units.csv; each unit's own log is kept beside its artifacts (`Task.log_path`).
"""
from __future__ import annotations

import csv
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from fashion_stack.core.log import LOGGER_NAME, format_seconds, get_logger

log = get_logger("executor")
ENGINES = ("local", "ray")
UNITS_LOG = ("finished_at", "stage", "unit", "engine", "node", "seconds", "status", "attempt")


class UnitFailed(RuntimeError):
    """A unit failed (after its retries, on Ray); the other finished units stay done."""


@dataclass(frozen=True)
class Resources:
    cpus: float = 1.0
    gpus: float = 0.0  # a fraction (0.5) lets two units share a GPU


@dataclass(frozen=True)
class Task:
    stage: str
    key: str  # the unit's name in the run, e.g. "tiny_cnn_64/fold0"
    fn: Callable  # a module-level function (Ray pickles it by reference)
    args: tuple = ()
    resources: Resources = field(default_factory=Resources)
    log_path: Optional[Path] = None  # the unit's own log, beside its artifacts


def run_task(task: Task, engine: str = "local", attempt_file: Optional[str] = None) -> dict:
    """Runs one task where it was placed, with its own log file, and says where it ran."""
    attempt = _count_attempt(attempt_file)
    handler = None
    if task.log_path is not None:
        Path(task.log_path).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(task.log_path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        logging.getLogger(LOGGER_NAME).addHandler(handler)
        if engine != "local":  # a fresh Ray worker has no logging set up
            logging.getLogger(LOGGER_NAME).setLevel(logging.INFO)
    node = platform.node()
    started = time.perf_counter()
    try:
        get_logger("executor").info("%s %s: started on %s (attempt %d)", task.stage, task.key, node, attempt)
        result = task.fn(*task.args)
    finally:
        if handler is not None:
            logging.getLogger(LOGGER_NAME).removeHandler(handler)
            handler.close()
    return {"result": result, "node": node, "seconds": time.perf_counter() - started, "attempt": attempt,
            "pid": os.getpid()}


def _count_attempt(attempt_file: Optional[str]) -> int:
    # Ray retries a task whose worker died; the attempt number is kept in the run directory so
    # the units log can say a retry happened
    if not attempt_file:
        return 1
    path = Path(attempt_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = int(path.read_text() or 0) + 1 if path.exists() else 1
    path.write_text(str(count))
    return count


class StageProgress:
    """Units done / total across a whole stage (every member's folds, not one member's), with an
    ETA from the units this run has finished. A stage announces its total with plan() and the
    units it skips (already done) with skipped(); each map() call's units then count towards it."""

    def __init__(self):
        self.plans: dict = {}  # stage -> {"total", "done", "seconds" (of units run now), "run"}

    def plan(self, stage: str, total: int) -> None:
        self.plans[stage] = {"total": int(total), "done": 0, "seconds": 0.0, "run": 0}

    def skipped(self, stage: str, count: int = 1) -> None:
        if stage in self.plans:
            self.plans[stage]["done"] += count

    def finished(self, task: "Task", seconds: float, where: str = "", batch=None) -> str:
        """The log line for a finished unit. `batch` = (number, count) within this map call,
        the fallback when the stage announced no plan."""
        plan = self.plans.get(task.stage)
        if plan is None:
            number, count = batch or (1, 1)
            return f"{task.stage}: unit {number}/{count} {task.key} done{where} in {seconds:.0f} s"
        plan["done"] += 1
        plan["run"] += 1
        plan["seconds"] += seconds
        plan["total"] = max(plan["total"], plan["done"])
        left = plan["total"] - plan["done"]
        eta = f"; {left} left, ETA {format_seconds(left * plan['seconds'] / plan['run'])}" if left else "; stage done"
        return (f"{task.stage}: {plan['done']}/{plan['total']} units done ({task.key}{where} in {seconds:.0f} s)"
                f"{eta}")


class LocalExecutor:
    """Today's loop: each unit in this process, in order."""
    name = "local"

    def __init__(self, run_root: Optional[Path] = None):
        self.run_root = Path(run_root) if run_root else None
        self.progress = StageProgress()

    def map(self, tasks: Sequence[Task]) -> list:
        results = []
        for number, task in enumerate(tasks, start=1):
            outcome = run_task(task)
            _record(self.run_root, task, self.name, outcome, "done")
            log.info("%s", self.progress.finished(task, outcome["seconds"], batch=(number, len(tasks))))
            results.append(outcome["result"])
        return results


class RayExecutor:
    """Ray core tasks with resource requests. `address`: None starts (or joins) a local Ray,
    "auto" joins the cluster this machine is part of, "HOST:PORT" a given head."""
    name = "ray"

    def __init__(self, run_root: Path, address: Optional[str] = None, max_retries: int = 2,
                 runtime_env: Optional[dict] = None):
        self.run_root, self.address, self.max_retries = Path(run_root), address, int(max_retries)
        self.runtime_env = runtime_env
        self.progress = StageProgress()

    def _ray(self):
        import ray
        if not ray.is_initialized():
            import fashion_stack  # workers import the package from where this process found it
            project = str(Path(fashion_stack.__file__).resolve().parent.parent)
            env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [project, os.environ.get("PYTHONPATH")])),
                                "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "tensorflow")}}
            env.update(self.runtime_env or {})
            ray.init(address=self.address, include_dashboard=False, runtime_env=env, log_to_driver=False)
        return ray

    def cluster_gpus(self) -> float:
        return float(self._ray().cluster_resources().get("GPU", 0.0))

    def map(self, tasks: Sequence[Task]) -> list:
        ray = self._ray()
        if not tasks:
            return []
        gpus_here = self.cluster_gpus()
        remote = ray.remote(run_task)
        pending = {}
        for number, task in enumerate(tasks):
            gpus = task.resources.gpus if gpus_here else 0.0  # a CPU-only cluster: run there anyway
            attempts = self.run_root / "executor" / "attempts" / f"{task.stage}--{task.key.replace('/', '--')}"
            ref = remote.options(num_cpus=task.resources.cpus, num_gpus=gpus, max_retries=self.max_retries,
                                 retry_exceptions=False, name=f"{task.stage}:{task.key}").remote(
                task, self.name, str(attempts))
            pending[ref] = number
        results: list = [None] * len(tasks)
        failure = None
        finished = 0
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            number = pending.pop(ref)
            task = tasks[number]
            try:
                outcome = ray.get(ref)
            except Exception as err:  # noqa: BLE001 - Ray wraps the unit's own error; reported below
                _record(self.run_root, task, self.name, {"node": "?", "seconds": float("nan"), "attempt": "?"},
                        f"failed: {type(err).__name__}")
                log.error("%s %s failed after its retries: %s", task.stage, task.key, _cause(err))
                failure = failure or (task, err)
                continue  # let the units already running finish: their work is kept
            finished += 1
            results[number] = outcome["result"]
            _record(self.run_root, task, self.name, outcome, "done")
            log.info("%s", self.progress.finished(
                task, outcome["seconds"], f" on {outcome['node']}, attempt {outcome['attempt']}",
                batch=(finished, len(tasks))))
        if failure:
            task, err = failure
            raise UnitFailed(f"{task.stage} unit {task.key} failed on Ray after up to {self.max_retries} retries: "
                             f"{_cause(err)}; the {finished} finished unit(s) stay done, rerun to do the rest "
                             f"(its log: {task.log_path})")
        return results


def _cause(err: Exception) -> str:
    cause = getattr(err, "cause", None) or err
    return f"{type(cause).__name__}: {cause}"


def _record(run_root: Optional[Path], task: Task, engine: str, outcome: dict, status: str) -> None:
    if run_root is None:
        return
    path = run_root / "executor" / "units.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    # appended, not rewritten: a log of what ran where, read by people, never by a later stage
    with open(path, "a", newline="") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(UNITS_LOG)
        writer.writerow([f"{time.time():.0f}", task.stage, task.key, engine, outcome.get("node"),
                         f"{outcome.get('seconds', float('nan')):.1f}", status, outcome.get("attempt")])


def make_executor(engine: str, run_root: Path, address: Optional[str] = None, max_retries: int = 2):
    if engine == "local":
        return LocalExecutor(run_root)
    if engine == "ray":
        return RayExecutor(run_root, address=address, max_retries=max_retries)
    raise ValueError(f"unknown engine {engine!r}; use one of {ENGINES}")
