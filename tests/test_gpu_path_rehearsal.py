"""The GPU user's path, rehearsed on CPU (issue 23). GPU images carry no TensorFlow, so a GPU user
runs Keras on JAX: the pipeline end to end on JAX, a member trained in bfloat16 on JAX, and the
real competition config through the rehearsal overlay on a stand-in of the competition (the real
label map and label sets, images fetched over HTTP with a 404 and an HTML page among them). Each
runs in a subprocess, since the Keras backend is fixed when Keras is first imported."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fashion_stack.core.config import PROJECT_ROOT

pytestmark = pytest.mark.integration
pytest.importorskip("jax")

TESTS = Path(__file__).resolve().parent
TINY = ["demo.n_train=45", "demo.n_validation=15", "demo.n_test=12", "demo.image_size=48", "folds.k=3",
        "members=[{name: cnn_a, backbone: tiny_cnn, input_size: 32, weights: null, head_epochs: 0, "
        "finetune_epochs: 3}, {name: cnn_b, backbone: tiny_cnn, input_size: 40, weights: null, head_epochs: 0, "
        "finetune_epochs: 3, pooling: max, seed: 1}]",
        "stack.stackers=[mean, grid_cnn]", "stack.grid_cnn.epochs=4", "decision.rules=[global, topk]",
        "ablation.bootstrap=50"]


def _env(backend: str) -> dict:
    return dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=os.pathsep.join([str(PROJECT_ROOT), str(TESTS)]),
                TF_CPP_MIN_LOG_LEVEL="2")


def _run(args: list, backend: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "fashion_stack", *args], env=_env(backend), cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
    print(done.stdout[-3000:])
    return done


def test_the_pipeline_runs_end_to_end_on_jax(tmp_path):
    args = ["run", "--run-dir", str(tmp_path / "run")]
    for override in TINY:
        args += ["--set", override]
    done = _run(args, "jax", PROJECT_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
    for member in ("cnn_a", "cnn_b"):
        placement = json.loads((run / "members" / member / "fold0" / "DONE.json").read_text())["placement"]
        # XLA-compiled steps: the JAX trainer's (TensorFlow on a CPU trains without XLA)
        assert placement["kind"] == "cpu" and placement["jit_compile"] is True
    assert (run / "ensemble" / "grid_cnn" / "oof.parquet").exists()  # the Keras stacker ran on JAX too
    assert json.loads((run / "decision" / "rule.json").read_text())["rule"] in ("global", "topk")
    verdict = _run(["validate", str(run)], "jax", PROJECT_ROOT)
    assert verdict.returncode == 0 and "valid: 12 rows" in verdict.stdout


BF16_SCRIPT = r"""
import json, sys
from pathlib import Path
import keras, numpy as np
assert keras.backend.backend() == "jax"
from fashion_stack.core import predictions
from fashion_stack.core.metrics import frequency_floor, micro_f1
from fashion_stack.core.rundir import read_done
from fashion_stack.datasets.folds import read_folds
from fashion_stack.datasets.manifest import pool_labels, read_manifest
from fashion_stack.models.stage import run_members
from models_synthetic import N_LABELS, make_run, tiny_member

ctx = make_run(Path(sys.argv[1]), n_train=60, n_validation=0, n_test=4, k=2, pool="train")
ctx.config.members = [tiny_member("bf16", input_size=16, head_epochs=0, finetune_epochs=9, learning_rate=3e-3,
                                  batch_size=16, mixed_precision="bfloat16")]
run_members(ctx)
folds = read_folds(ctx.run.folds)
y = pool_labels(read_manifest(ctx.run.manifest), list(folds.index), ctx.label_space(), ctx.config.data.pool)
oof = predictions.read(ctx.run.member_dir("bf16") / "oof.parquet", [str(j + 1) for j in range(N_LABELS)])
probs = oof.reindex(folds.index).to_numpy()
model = keras.saving.load_model(str(ctx.run.member_dir("bf16") / "fold0" / "model.keras"), compile=False)
print(json.dumps({"precision": read_done(ctx.run.member_dir("bf16") / "fold0")["placement"]["precision"],
                  "policy": model.dtype_policy.name, "compute_dtype": model.layers[-2].compute_dtype,
                  "micro_f1@0.5": micro_f1(y, probs >= 0.5),
                  "floor": frequency_floor(y, folds.to_numpy(), "micro", N_LABELS)["oof"]}))
"""


def test_a_member_trains_in_bfloat16_on_jax_and_beats_the_floor(tmp_path):
    done = subprocess.run([sys.executable, "-c", BF16_SCRIPT, str(tmp_path)], env=_env("jax"), cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(result)
    assert result["precision"] == "mixed_bfloat16"
    assert result["micro_f1@0.5"] - result["floor"] > 0.1, result  # the margin test_members_learn asks of float32


@pytest.mark.shared
@pytest.mark.slow  # four ImageNet-sized backbones compiled on a CPU: minutes, not seconds (docs/RESULTS.md)
def test_the_competition_config_rehearsed_on_a_stand_in_to_a_validated_submission(tmp_path, imat_dir):
    from benchmarks.competition_standin import build_standin, standin_server
    with standin_server() as server:
        data = build_standin(tmp_path, imat_dir, server, n_train=60, n_validation=45, n_test=15)
        done = _run(["run", "--config", "imaterialist2018", "--overlay", "smoke", "--data-dir", str(data),
                     "--run-dir", str(tmp_path / "run")], os.environ.get("KERAS_BACKEND", "jax"), tmp_path, 2400)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
    failures = (run / "download_failures.csv").read_text()
    assert "HTTP 404" in failures and "validation" in failures and failures.count("\n") == 3  # header + 2
    config = (run / "config.yaml").read_text()
    assert config.count("backbone: ") == 4 and config.count("weights: random") == 4 and "imagenet" not in config
    verdict = _run(["validate", str(run)], "jax", tmp_path)
    assert verdict.returncode == 0 and "valid: 15 rows" in verdict.stdout, verdict.stdout + verdict.stderr
    assert "label_map.csv" in verdict.stdout  # the run's own 228-label map
