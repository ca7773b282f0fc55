"""The local engine's child processes (a member's hardware.isolation "member", the default): a
member's units run in one child process of their own, which ends with them, so what TensorFlow
keeps of a trained backbone goes back to the system instead of piling up member after member. The
child's logs reach the parent's, its error stops the stage naming the unit (finished units stay
done), its peak memory is counted in the stage's, and no child outlives an interrupted parent."""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from fashion_stack.core.config import ConfigError, HardwareConfig
from fashion_stack.core.executor import LocalExecutor, Task, UnitFailed
from fashion_stack.core.log import LOGGER_NAME
from fashion_stack.core.process import child_peak_memory_mb, peak_memory_mb, reset_peak_memory

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from isolation_units import (unit_reporting_its_process, unit_that_allocates, unit_that_fails,  # noqa: E402
                             unit_whose_process_dies, unit_with_a_decode_pool)


@pytest.fixture
def info_logs():
    """The pipeline's logger at INFO, as run_pipeline sets it (a child logs at its parent's level)."""
    logger = logging.getLogger(LOGGER_NAME)
    previous = logger.level
    logger.setLevel(logging.INFO)
    yield logger
    logger.setLevel(previous)


def _unit(folder: Path, value: int, child=None) -> Task:
    return Task("test", f"unit{value}", unit_reporting_its_process, (value, str(folder)), child=child,
                log_path=folder / f"unit{value}.log")


def _pids(folder: Path) -> dict:
    return {int(p.stem): int(p.read_text()) for p in folder.glob("*.done")}


def test_units_naming_a_child_share_one_child_process_and_the_others_run_here(tmp_path):
    tasks = [_unit(tmp_path, 0, "a"), _unit(tmp_path, 1, "a"), _unit(tmp_path, 2), _unit(tmp_path, 3, "b")]
    assert LocalExecutor(tmp_path).map(tasks) == [0, 1, 2, 3]
    pids = _pids(tmp_path)
    assert pids[0] == pids[1] != os.getpid()  # one child for a's units, not one per unit
    assert pids[2] == os.getpid()  # child None: in this process, as before
    assert pids[3] not in (pids[0], os.getpid())  # b's own child
    units = pd.read_csv(tmp_path / "executor" / "units.csv")
    assert list(units["unit"]) == ["unit0", "unit1", "unit2", "unit3"] and set(units["status"]) == {"done"}


def test_a_childs_log_lines_reach_this_processs_log_and_the_units_own_log(tmp_path, info_logs):
    parent_log = tmp_path / "run.log"
    handler = logging.FileHandler(parent_log)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    info_logs.addHandler(handler)
    try:
        LocalExecutor(tmp_path).map([_unit(tmp_path, 0, "a"), _unit(tmp_path, 1, "a")])
    finally:
        info_logs.removeHandler(handler)
        handler.close()
    child = _pids(tmp_path)[0]
    text = parent_log.read_text()
    assert f"INFO unit 0 ran in process {child}" in text and f"unit 1 ran in process {child}" in text
    assert f"test unit1: started on" in text and f"in process {child}" in text
    # progress lines are the parent's, after each unit
    assert re.search(r"test: unit 1/2 unit0 done in \d+ s", text) and "test: unit 2/2 unit1 done" in text
    assert f"unit 0 ran in process {child}" in (tmp_path / "unit0.log").read_text()
    assert "unit 1 ran" not in (tmp_path / "unit0.log").read_text()


def test_a_failing_unit_in_a_child_is_an_error_naming_it_and_the_finished_units_stay(tmp_path, info_logs):
    doomed = Task("test", "m/doomed", unit_that_fails, ("boom",), child="m", log_path=tmp_path / "doomed.log")
    tasks = [_unit(tmp_path, 0, "m"), doomed, _unit(tmp_path, 2, "m")]
    with pytest.raises(UnitFailed, match=r"test unit m/doomed failed in its child process \d+: ValueError: boom; "
                                         r"the 1 unit\(s\) finished before it stay done") as raised:
        LocalExecutor(tmp_path).map(tasks)
    assert isinstance(raised.value.__cause__, ValueError)  # the unit's own error, carried over
    assert sorted(_pids(tmp_path)) == [0]  # the unit after the failed one did not run
    units = pd.read_csv(tmp_path / "executor" / "units.csv").set_index("unit")
    assert units.loc["unit0", "status"] == "done" and units.loc["m/doomed", "status"] == "failed: ValueError"
    assert "about to fail" in (tmp_path / "doomed.log").read_text()


def test_a_child_that_dies_mid_unit_is_an_error_naming_the_unit(tmp_path):
    tasks = [_unit(tmp_path, 0, "m"), Task("test", "m/killed", unit_whose_process_dies, (3,), child="m")]
    with pytest.raises(UnitFailed, match=r"test unit m/killed: its child process \d+ ended with exit code 3"):
        LocalExecutor(tmp_path).map(tasks)
    assert sorted(_pids(tmp_path)) == [0]


def test_a_childs_peak_memory_is_reported_to_the_stage(tmp_path):
    reset_peak_memory()
    assert child_peak_memory_mb() is None
    LocalExecutor(tmp_path).map([Task("test", "big", unit_that_allocates, (300, str(tmp_path)), child="m")])
    assert child_peak_memory_mb() >= 300  # the child's own high-water mark, not this process's
    if peak_memory_mb() is not None:
        reset_peak_memory()
        assert child_peak_memory_mb() is None


def test_a_child_with_worker_processes_of_its_own_exits_and_takes_them_along(tmp_path, caplog):
    # the decode pool (JAX's reader) in a member's child: its exit once waited for the idle
    # workers, 60 s, until the parent ended it and left them running
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        LocalExecutor(tmp_path).map([Task("test", "pool", unit_with_a_decode_pool, (str(tmp_path),), child="m")])
    assert time.monotonic() - started < 30 and "has not exited" not in caplog.text
    assert _gone(int((tmp_path / "worker.pid").read_text()), 10)


def test_isolation_is_a_member_hardware_setting_checked_at_load(tmp_path):
    from fashion_stack.core.config import load_config
    assert HardwareConfig().isolation == "member"
    path = tmp_path / "c.yaml"
    path.write_text("members:\n  - {name: a, hardware: {isolation: sometimes}}\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert "isolation" in str(raised.value) and "member, none" in str(raised.value)
    assert "\n" not in str(raised.value)


def _parent_with_a_sleeping_child(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(
        "import signal, sys\n"
        # as at a terminal: a shell that started the test run in the background (CI under `&`)
        # hands it SIGINT ignored, and Python keeps that, so Ctrl-C would never reach the parent
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        f"sys.path[:0] = {[str(HERE.parent), str(HERE)]!r}\n"
        "from fashion_stack.core.executor import LocalExecutor, Task\n"
        "from isolation_units import unit_that_sleeps\n"
        "if __name__ == '__main__':\n"
        f"    LocalExecutor(None).map([Task('test', 'long', unit_that_sleeps, ({str(tmp_path)!r},), child='m')])\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    marker = tmp_path / "sleeping.pid"
    deadline = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < deadline and parent.poll() is None:
        time.sleep(0.1)
    assert marker.exists(), parent.communicate()[0]
    return parent, int(marker.read_text())


def _gone(pid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # a zombie (exited, not yet reaped by init) counts as gone
            if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.integration
def test_ctrl_c_in_the_parent_ends_its_child(tmp_path):
    parent, child = _parent_with_a_sleeping_child(tmp_path)
    parent.send_signal(signal.SIGINT)
    output = parent.communicate(timeout=60)[0].decode()
    assert parent.returncode != 0 and "KeyboardInterrupt" in output
    assert _gone(child, 5), f"child {child} outlived its interrupted parent"


@pytest.mark.integration
def test_a_child_whose_parent_was_killed_ends_itself(tmp_path):
    parent, child = _parent_with_a_sleeping_child(tmp_path)
    parent.kill()  # SIGKILL: the parent has no chance to end it
    parent.wait()
    assert _gone(child, 15), f"child {child} outlived its killed parent"


# ---- the members stage ----------------------------------------------------------------------


def _members_ctx(root: Path, isolation: str):
    from models_synthetic import make_run, tiny_member
    ctx = make_run(root, k=2)
    ctx.config.members = [tiny_member("tiny", head_epochs=0, finetune_epochs=1, isolation=isolation)]
    return ctx


def _unit_pids(ctx) -> list:
    return [int(re.search(r"started on \S+ in process (\d+)", (ctx.run.fold_dir("tiny", k) / "unit.log").read_text())[1])
            for k in (0, 1)]


def test_with_isolation_none_a_members_units_run_in_the_pipelines_process(tmp_path, info_logs):
    from fashion_stack.pipeline import run_stage
    ctx = _members_ctx(tmp_path, "none")
    run_stage("members", ctx, logging.getLogger(LOGGER_NAME))
    assert _unit_pids(ctx) == [os.getpid(), os.getpid()]
    times = json.loads((ctx.run.root / "stage_times.json").read_text())["members"]
    assert times["child_peak_memory_mb"] is None


@pytest.mark.integration
def test_an_isolated_members_units_share_one_child_and_the_stage_counts_its_memory(tmp_path, caplog, info_logs):
    from fashion_stack.pipeline import run_stage
    ctx = _members_ctx(tmp_path, "member")
    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        run_stage("members", ctx, logging.getLogger(LOGGER_NAME))
    pids = _unit_pids(ctx)
    assert pids[0] == pids[1] != os.getpid()
    assert all((ctx.run.fold_dir("tiny", k) / "DONE.json").exists() for k in (0, 1))
    # the child's training lines came through this process's logger
    assert any(r.process == pids[0] and "tiny fold1" in r.getMessage() for r in caplog.records)
    times = json.loads((ctx.run.root / "stage_times.json").read_text())["members"]
    assert times["child_peak_memory_mb"] > 100  # a TensorFlow process
    assert times["peak_memory_mb"] == times["process_peak_memory_mb"] + times["child_peak_memory_mb"]


@pytest.mark.integration
def test_a_member_unit_failing_in_its_child_names_it_and_a_rerun_keeps_the_finished_fold(tmp_path, info_logs):
    from executor_callbacks import FailOnFit
    from fashion_stack.models.stage import load_stage_data, run_member
    ctx = _members_ctx(tmp_path, "member")
    member = ctx.config.members[0]
    with pytest.raises(UnitFailed, match=r"members unit tiny/fold1 failed in its child process \d+: "
                                         r"RuntimeError: fit 2 refused"):
        run_member(ctx, member, load_stage_data(ctx), callbacks=(FailOnFit(str(tmp_path / "fits"), 2),))
    assert (ctx.run.fold_dir("tiny", 0) / "DONE.json").exists()
    assert not (ctx.run.fold_dir("tiny", 1) / "DONE.json").exists()
    summary = run_member(ctx, member, load_stage_data(ctx))
    assert (summary["units_trained"], summary["units_skipped"]) == (1, 1)


PARENT_SCRIPT = """
import json, logging, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from models_synthetic import make_run, tiny_member
from fashion_stack.core.log import LOGGER_NAME
from fashion_stack.pipeline import registered_choices, run_stage

if __name__ == "__main__":  # the child process is spawned: it imports this file again
    registered_choices()  # every plug-in registry the config check reads
    ctx = make_run(Path({root!r}), k=2)
    ctx.config.members = [tiny_member("tiny", head_epochs=0, finetune_epochs=1, isolation="member")]
    run_stage("members", ctx, logging.getLogger(LOGGER_NAME))
    print(json.dumps({{name: name in sys.modules for name in ("keras", "tensorflow", "jax", "torch")}}))
"""


@pytest.mark.integration
def test_the_pipeline_process_checks_every_plug_in_and_runs_isolated_members_without_importing_keras(tmp_path):
    """A child per member holds the framework; the pipeline process that checks the config,
    plans the units and gathers their predictions never imports Keras or TensorFlow, so it stays
    small (about 0.2 GB, not TensorFlow's 0.8 GB) while a child trains beside it."""
    script = tmp_path / "parent.py"
    script.write_text(PARENT_SCRIPT.format(tests=str(HERE), root=str(tmp_path / "run_root")))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    imported = json.loads(done.stdout.strip().splitlines()[-1])
    assert imported == {"keras": False, "tensorflow": False, "jax": False, "torch": False}
    assert (tmp_path / "run_root" / "run" / "members" / "tiny" / "fold1" / "DONE.json").exists()
