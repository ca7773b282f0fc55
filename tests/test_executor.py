"""The execution layer: the local loop and Ray core tasks on a local cluster give the same
artifacts; a worker killed in the middle of a unit is retried and resumes from the unit's
checkpoint; a unit that fails all its retries stops the run with its error, the others stay done."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fashion_stack.core import predictions
from fashion_stack.core.executor import LocalExecutor, RayExecutor, Resources, Task, UnitFailed

HERE = Path(__file__).resolve().parent
ray = pytest.importorskip("ray")


@pytest.fixture(scope="session")
def local_cluster():
    """One local Ray for the session: 2 CPUs, no dashboard; workers import the project and tests."""
    path = os.pathsep.join([str(HERE.parent), str(HERE)])
    # a loaded 2-core machine starts the raylet slowly; Ray's default wait (10 s) is too short
    os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")
    settings = dict(num_cpus=2, include_dashboard=False, log_to_driver=False,
                    runtime_env={"env_vars": {"PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "2"}})
    try:
        ray.init(**settings)
    except Exception:  # noqa: BLE001 - a node that timed out starting (an overloaded machine): once more
        ray.shutdown()
        ray.init(**settings)
    yield
    ray.shutdown()


def _tasks(folder):
    from executor_callbacks import unit_that_finishes
    return [Task("test", f"unit{n}", unit_that_finishes, (n, str(folder)), Resources(cpus=1)) for n in range(3)]


def test_the_local_executor_runs_units_in_order_and_logs_them(tmp_path):
    results = LocalExecutor(tmp_path).map(_tasks(tmp_path))
    assert results == [0, 1, 2]
    units = pd.read_csv(tmp_path / "executor" / "units.csv")
    assert list(units["unit"]) == ["unit0", "unit1", "unit2"] and set(units["status"]) == {"done"}


@pytest.mark.integration
def test_ray_runs_the_same_units_and_says_where(tmp_path, local_cluster):
    results = RayExecutor(tmp_path).map(_tasks(tmp_path))
    assert results == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.glob("*.done")) == ["0.done", "1.done", "2.done"]
    units = pd.read_csv(tmp_path / "executor" / "units.csv")
    assert sorted(units["unit"]) == ["unit0", "unit1", "unit2"] and set(units["engine"]) == {"ray"}
    assert units["node"].notna().all()
    # each task ran in a Ray worker process, not in this one
    assert all(int(p.read_text()) != os.getpid() for p in tmp_path.glob("*.done"))


@pytest.mark.integration
def test_a_unit_that_fails_all_its_retries_stops_the_run_and_the_others_stay_done(tmp_path, local_cluster):
    from executor_callbacks import unit_whose_worker_always_dies
    tasks = _tasks(tmp_path)
    tasks.insert(1, Task("test", "doomed", unit_whose_worker_always_dies, (), Resources(cpus=1)))
    with pytest.raises(UnitFailed, match="test unit doomed failed on Ray after up to 1 retries"):
        RayExecutor(tmp_path, max_retries=1).map(tasks)
    assert sorted(p.name for p in tmp_path.glob("*.done")) == ["0.done", "1.done", "2.done"]
    units = pd.read_csv(tmp_path / "executor" / "units.csv")
    assert units.set_index("unit").loc["doomed", "status"].startswith("failed")
    attempts = (tmp_path / "executor" / "attempts" / "test--doomed").read_text()
    assert attempts == "2"  # the first try and its one retry


def _members_run(root: Path, executor=None, callbacks=()):
    sys.path.insert(0, str(HERE))
    from fashion_stack.models.stage import load_stage_data, run_member
    from models_synthetic import make_run, tiny_member
    ctx = make_run(root, k=2)
    member = tiny_member("tiny", head_epochs=0, finetune_epochs=2, batch_size=4, checkpoint_steps=2, augment=True)
    ctx.config.members = [member]
    ctx.executor = executor
    run_member(ctx, member, load_stage_data(ctx), callbacks=callbacks)
    return ctx


@pytest.mark.integration
def test_ray_members_equal_the_local_run_and_a_killed_worker_resumes_its_unit(tmp_path, local_cluster):
    from executor_callbacks import KillWorkerOnce, StepCounter
    local = _members_run(tmp_path / "local")
    steps = tmp_path / "steps.log"
    marker = tmp_path / "killed"
    # 2 folds x 2 epochs x 5 steps; the worker of the first unit to reach its step 8 (epoch 2, step 3)
    # dies there, once
    ctx = _members_run(tmp_path / "ray", RayExecutor(tmp_path / "ray" / "run", max_retries=2),
                       callbacks=(StepCounter(str(steps)), KillWorkerOnce(str(marker), 8)))
    assert marker.exists()
    units = pd.read_csv(ctx.run.root / "executor" / "units.csv")
    assert sorted(units["attempt"].astype(int)) == [1, 2]  # one unit needed a retry
    # the retry resumed at the killed unit's checkpoint (epoch 2, step 2): 20 planned steps + 1 twice
    assert len(steps.read_text().splitlines()) == 20 + 1
    for name in ("oof.parquet", "test.parquet"):
        np.testing.assert_allclose(predictions.read(ctx.run.member_dir("tiny") / name).to_numpy(),
                                   predictions.read(local.run.member_dir("tiny") / name).to_numpy(), atol=1e-6)
    assert (ctx.run.fold_dir("tiny", 0) / "unit.log").read_text().count("started on") >= 1
