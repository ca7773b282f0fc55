"""Where a stage's independent units run: on this machine, one after another (`local`, the
default), or as Ray core tasks on a cluster (`ray`). A stage hands its units over as `Task`s and
gets their results back in the same order; it does not know which executor ran them.

Locally a task runs in this process, or, when it names a `child`, in a child process ("spawn":
a fresh interpreter, never a fork of this TensorFlow process) that a map call's consecutive tasks
naming the same child share and that ends with them, so what they allocated (a backbone's
TensorFlow/Keras state, which stays in a process however its models are released) goes back to
the system. The child's log records come to this process's logger; its error stops the map with
UnitFailed naming the unit (finished units stay done); Ctrl-C here interrupts it and ends it,
and a child whose parent died ends itself. Each child reports its own peak memory
(core.process.note_child_peak) for the stage's memory log.

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
import logging.handlers
import multiprocessing
import os
import pickle
import platform
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from fashion_stack.core.log import LOGGER_NAME, format_seconds, get_logger
from fashion_stack.core.process import note_child_peak, peak_memory_mb

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
    # Local engine: a name here runs the task in a child process of its own, shared by the map
    # call's consecutive tasks of the same name (one member's units) and ended after them; None:
    # in this process. Ray ignores it (its tasks run in its worker processes anyway).
    child: Optional[str] = None


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
        get_logger("executor").info("%s %s: started on %s in process %d (attempt %d)", task.stage, task.key, node,
                                    os.getpid(), attempt)
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
        # stage -> {"total", "done", "seconds" (of units run now), "run", "call_seconds" (this map call's)}
        self.plans: dict = {}

    def plan(self, stage: str, total: int) -> None:
        self.plans[stage] = {"total": int(total), "done": 0, "seconds": 0.0, "run": 0, "call_seconds": 0.0}

    def add(self, stage: str, count: int) -> None:
        """Units found once the stage is under way (a member's shared embeddings pass)."""
        if stage in self.plans:
            self.plans[stage]["total"] += int(count)

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
        # The units left in this map call (one member's folds) at this call's own pace, the rest at
        # the stage's: a fine-tuned member's 4-minute folds after a minute of 5-second probe units
        # would otherwise be announced as a minute's work.
        number, count = batch or (1, 1)
        plan["call_seconds"] = (0.0 if number == 1 else plan["call_seconds"]) + seconds
        left_here = min(count - number, left)
        eta_s = left_here * plan["call_seconds"] / number + (left - left_here) * plan["seconds"] / plan["run"]
        eta = f"; {left} left, ETA {format_seconds(eta_s)}" if left else "; stage done"
        return (f"{task.stage}: {plan['done']}/{plan['total']} units done ({task.key}{where} in {seconds:.0f} s)"
                f"{eta}")


class LocalExecutor:
    """Each unit in order: in this process, or, for tasks that name a `child`, in a child process
    of their own (see the module's docstring)."""
    name = "local"

    def __init__(self, run_root: Optional[Path] = None):
        self.run_root = Path(run_root) if run_root else None
        self.progress = StageProgress()

    def map(self, tasks: Sequence[Task]) -> list:
        tasks = list(tasks)
        results: list = [None] * len(tasks)
        finished = 0

        def done(number: int, outcome: dict) -> None:
            nonlocal finished
            task = tasks[number]
            finished += 1
            _record(self.run_root, task, self.name, outcome, "done")
            log.info("%s", self.progress.finished(task, outcome["seconds"], batch=(finished, len(tasks))))
            results[number] = outcome["result"]

        for child, numbers in _runs_of_children(tasks):
            if child is None:
                for number in numbers:
                    done(number, run_task(tasks[number]))
            else:
                run_in_child(child, [tasks[n] for n in numbers],
                             on_done=lambda index, outcome, numbers=numbers: done(numbers[index], outcome),
                             on_failure=self._failed, finished_before=lambda: finished)
        return results

    def _failed(self, task: Task, error: str) -> None:
        outcome = {"node": platform.node(), "seconds": float("nan"), "attempt": 1}
        _record(self.run_root, task, self.name, outcome, f"failed: {error}")


def _runs_of_children(tasks: Sequence[Task]) -> list:
    """(child, task numbers) for each run of consecutive tasks naming the same child; None's
    tasks run here, each on its own."""
    runs: list = []
    for number, task in enumerate(tasks):
        if runs and task.child is not None and runs[-1][0] == task.child:
            runs[-1][1].append(number)
        else:
            runs.append((task.child, [number]))
    return runs


# ---- the child process of the local engine --------------------------------------------------

STOP_WAIT_S = 10.0  # after Ctrl-C here: how long the child has to stop on its own before it is ended
EXIT_WAIT_S = 60.0  # after its last unit: how long the child may take to exit (interpreter teardown)


def run_in_child(child: str, tasks: Sequence[Task], on_done: Callable, on_failure: Callable = None,
                 finished_before: Callable = None) -> None:
    """Runs `tasks` in order in one fresh child process; on_done(index, outcome) here as each
    finishes. A unit's error, or the child's death, raises UnitFailed naming the unit."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    level = logging.getLogger(LOGGER_NAME).getEffectiveLevel()
    process = context.Process(target=_child_main, args=(sender, list(tasks), level, os.getpid()),
                              name=f"fashion-stack {child}")
    try:
        process.start()  # pickles the tasks: a task that cannot travel fails here, before any work
    except Exception as err:  # noqa: BLE001 - said with the setting that avoids it
        sender.close()
        receiver.close()
        raise UnitFailed(f"{tasks[0].stage} units of {child} cannot be sent to a child process "
                         f"({type(err).__name__}: {err}); run them in this process instead "
                         "(the member's hardware.isolation: none)") from err
    sender.close()  # ours: the child's death then ends receiving (EOFError)
    log.info("%s: %d unit(s) of %s run in child process %d", tasks[0].stage, len(tasks), child, process.pid)
    index, peak = 0, None
    try:
        while True:
            try:
                message = receiver.recv()
            except EOFError:  # the child died without a word: killed, out of memory, a crash
                process.join()
                task = tasks[min(index, len(tasks) - 1)]
                if on_failure:
                    on_failure(task, f"child exit {process.exitcode}")
                raise UnitFailed(
                    f"{task.stage} unit {task.key}: its child process {process.pid} ended with exit code "
                    f"{process.exitcode} ({_signal_name(process.exitcode)}) before finishing it; "
                    f"{_kept(finished_before)}(its log: {task.log_path})") from None
            kind = message[0]
            if kind == "log":
                record = message[1]
                logging.getLogger(record.name).handle(record)
            elif kind == "done":
                _, index, outcome, peak = message
                on_done(index, outcome)
                index += 1
            elif kind == "failed":
                _, index, error, text, peak = message
                task = tasks[index]
                if isinstance(error, KeyboardInterrupt):  # Ctrl-C reached the child first: it is ours
                    raise KeyboardInterrupt(f"{task.stage} unit {task.key} interrupted")
                if on_failure:
                    on_failure(task, type(error).__name__ if error is not None else "?")
                cause = f"{type(error).__name__}: {error}" if error is not None else text.strip().splitlines()[-1]
                failure = UnitFailed(f"{task.stage} unit {task.key} failed in its child process {process.pid}: "
                                     f"{cause}; {_kept(finished_before)}(its log: {task.log_path})")
                failure.child_traceback = text
                raise failure from error
            elif kind == "end":
                peak = message[1]
                break
        process.join(EXIT_WAIT_S)
        if process.is_alive():  # stuck in its exit (a process of its own it waits for): said, then ended
            log.warning("%s: child process %d of %s has not exited %.0f s after its last unit; ending it",
                        tasks[0].stage, process.pid, child, EXIT_WAIT_S)
    finally:
        note_child_peak(peak)
        _stop(process)
        receiver.close()


def _kept(finished_before: Optional[Callable]) -> str:
    count = finished_before() if finished_before else 0
    return f"the {count} unit(s) finished before it stay done, rerun to do the rest "


def _signal_name(exitcode) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            pass
    return "no error reported"


def _stop(process) -> None:
    """Ends a child that is still running (this process is being interrupted or failed): Ctrl-C
    first, so its own cleanup runs, then SIGTERM, then SIGKILL. Never leaves it behind."""
    if process.pid is None:
        return
    if process.is_alive():
        try:
            os.kill(process.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
        process.join(STOP_WAIT_S)
    if process.is_alive():
        process.terminate()
        process.join(STOP_WAIT_S)
    if process.is_alive():
        process.kill()
        process.join()


class _Forward(logging.handlers.QueueHandler):
    """The child's log handler: each record, made picklable (QueueHandler.prepare formats it),
    goes to the parent over the pipe, where its own logger handles it."""

    def __init__(self, send: Callable):
        super().__init__(None)
        self.send = send

    def enqueue(self, record: logging.LogRecord) -> None:
        self.send(("log", record))


def _child_main(sender, tasks: list, level: int, parent_pid: int) -> None:
    """The child's whole life: its tasks in order, each outcome (with this process's peak memory
    so far) or the first error sent back, then the end."""
    lock = threading.Lock()

    def send(message) -> None:
        with lock:
            sender.send(message)

    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers[:] = [_Forward(send)]
    logger.setLevel(level)
    logger.propagate = False
    threading.Thread(target=_end_with_parent, args=(parent_pid,), daemon=True).start()
    for index, task in enumerate(tasks):
        try:
            outcome = run_task(task)
        except BaseException as err:  # noqa: BLE001 - reported to the parent, which raises it
            send(("failed", index, _portable(err), traceback.format_exc(), peak_memory_mb()))
            sender.close()
            return
        send(("done", index, outcome, peak_memory_mb()))
    send(("end", peak_memory_mb()))
    sender.close()


def _portable(err: BaseException) -> Optional[BaseException]:
    """The error itself when it survives pickling (the parent raises UnitFailed from it), else
    None (the parent then quotes the traceback's last line)."""
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:  # noqa: BLE001 - any error type may refuse pickling
        return None


def _end_with_parent(parent_pid: int, interval_s: float = 1.0) -> None:
    """A child whose parent died (killed outright, with no chance to end it) interrupts its unit,
    as Ctrl-C would, and exits: no orphan keeps training."""
    while os.getppid() == parent_pid:
        time.sleep(interval_s)
    try:  # to the main thread, so that a blocking call there is interrupted too
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
    except (AttributeError, OSError):
        pass
    time.sleep(STOP_WAIT_S)
    os._exit(1)


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
