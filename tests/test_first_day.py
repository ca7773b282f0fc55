"""A new user's first day (issue 23): validating where the run is, overriding one member, the
rehearsal overlay, load-time checks, the frequency-floor warnings, one best member, progress that
reads cleanly in a log file, and a report that opens with its answer."""
from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fashion_stack import cli
from fashion_stack.core import atomic
from fashion_stack.core.config import ConfigError, PROJECT_ROOT, load_config, overlay_values, parse_override
from fashion_stack.core.executor import StageProgress, Task
from fashion_stack.core.log import LineProgress, progress, setup_logging
from fashion_stack.core.rundir import RunDir
from fashion_stack.reports.run_data import best_member, floor_check, floor_margin

SHIPPED_MAP = PROJECT_ROOT / "datasets" / "resources" / "label_map_228.csv"


# ---- validate where the user is --------------------------------------------------------------

def _run_with_submission(tmp_path: Path, rows: str) -> Path:
    """A run directory as the pipeline leaves it: config.yaml and env.json naming the data, whose
    test.json lists ids 1..3 and whose label map has labels 1..3."""
    data, run = tmp_path / "data", tmp_path / "runs" / "r"
    data.mkdir(parents=True)
    run.mkdir(parents=True)
    (data / "tests.json").write_text(json.dumps({"images": [{"imageId": i, "url": f"http://x/{i}"} for i in (1, 2, 3)]}))
    (data / "labels.csv").write_text("labelId,labelName\n1,a\n2,b\n3,c\n")
    (run / "config.yaml").write_text("name: r\ndata: {dir: x, test: tests.json, label_map: labels.csv}\n")
    (run / "env.json").write_text(json.dumps({"data_dir": str(data)}))
    (run / "submission.csv").write_text("image_id,label_id\n" + rows)
    return run


def _validate(capsys, *args) -> tuple:
    code = cli.main(["validate", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_validate_a_run_directory_finds_its_test_list_and_label_map(tmp_path, capsys):
    run = _run_with_submission(tmp_path, "1,1 2\n2,3\n3,1\n")
    code, out, _ = _validate(capsys, run)
    assert code == 0 and "valid: 3 rows" in out and "tests.json" in out and "labels.csv" in out
    code, out, _ = _validate(capsys, run / "submission.csv")  # the file inside the run: the same
    assert code == 0 and "valid: 3 rows" in out


def test_validate_uses_the_runs_label_map_so_an_unknown_label_fails(tmp_path, capsys):
    run = _run_with_submission(tmp_path, "1,1 4\n2,3\n3,1\n")  # label 4 is not in the run's 3-label map
    code, out, _ = _validate(capsys, run)
    assert code == 1 and "unknown label(s) 4" in out


def test_a_bare_file_is_checked_against_the_shipped_228_label_map(tmp_path, capsys):
    run = _run_with_submission(tmp_path, "")
    bare = tmp_path / "bare.csv"
    bare.write_text("image_id,label_id\n1,999 abc\n2,228\n3,1\n")
    code, out, _ = _validate(capsys, bare, "--test", tmp_path / "data" / "tests.json")
    assert code == 1 and "unknown label(s) 999 abc not in the label map" in out
    assert str(SHIPPED_MAP) in out and "line 3" not in out  # 228 and 1 are labels of the shipped map
    code, out, _ = _validate(capsys, bare, "--test", tmp_path / "data" / "tests.json", "--label-map",
                             tmp_path / "data" / "labels.csv")
    assert code == 1 and "unknown label(s) 228" in out  # --label-map overrides
    assert run.exists()


def test_a_bare_file_without_a_test_list_is_one_line_naming_the_fix(tmp_path, capsys):
    bare = tmp_path / "bare.csv"
    bare.write_text("image_id,label_id\n1,1\n")
    code, out, err = _validate(capsys, bare)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--test" in err and "fashion-stack validate runs/<run>" in err


def test_validate_help_names_the_command_typed(capsys):
    with pytest.raises(SystemExit):
        cli.main(["validate", "--help"])
    assert "usage: fashion-stack validate" in capsys.readouterr().out


# ---- overriding one member, the rehearsal overlay, load-time checks ---------------------------

def test_set_one_member_by_name_or_position():
    config = load_config("imaterialist2018", [parse_override("members.densenet201.batch_size=16"),
                                              parse_override("members.0.input_size=320")])
    by_name = {m.name: m for m in config.members}
    assert by_name["densenet201"].batch_size == 16 and by_name["resnet50"].batch_size == 64  # the rest keep theirs
    assert by_name["inception_v3"].input_size == (320, 320) and by_name["inception_v3"].weights == "imagenet"


@pytest.mark.parametrize("override, message", [
    ("members.densenet_201.batch_size=16", r"members\.densenet_201: no member named 'densenet_201'; configured: "
                                           r"inception_v3, resnet50, xception, densenet201"),
    ("members.7.batch_size=16", r"members\.7: there are 4 members"),
    ("members.resnet50.batch_sise=16", r"members\[1\]\.batch_sise"),
])
def test_a_bad_member_override_is_one_line_naming_it(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("imaterialist2018", [parse_override(override)])


@pytest.mark.parametrize("config_name", ["imaterialist2018", "demo", "ccp"])
def test_the_smoke_overlay_shrinks_any_config(config_name):
    from fashion_stack.models.backbones import is_pretrained
    from fashion_stack.models.trainer import finetune_phases
    full = load_config(config_name)
    smoke = load_config(config_name, [overlay_values("smoke")])
    assert [m.backbone for m in smoke.members] == [m.backbone for m in full.members]  # same members
    for configured, member in zip(full.members, smoke.members):
        assert member.head_epochs == 1 and member.finetune_epochs == 1
        assert member.input_size == (96, 96) and member.batch_size == 16 and member.hardware.reader_workers == 2
        if configured.backbone is None:  # a probe: no trunk of its own
            continue
        # nothing downloads; each member keeps its training path: pretrained ones still train the head,
        # then the top blocks with BatchNorm frozen, on random trunks; from-scratch ones stay so
        assert member.weights == (None if configured.weights is None else "random")
        assert [p.name for p in finetune_phases(member)] == [p.name for p in finetune_phases(configured)]
        assert is_pretrained(member.weights) == is_pretrained(configured.weights)
    stackers = {spec.name: spec.params for spec in smoke.stack.stackers}
    assert smoke.download.workers <= 4 and stackers["grid_cnn"]["epochs"] <= 5


def test_a_set_after_the_overlay_wins_over_it():
    config = load_config("imaterialist2018", [overlay_values("smoke"), parse_override("members.xception.input_size=128")])
    assert {m.name: m.input_size[1] for m in config.members} == {"inception_v3": 96, "resnet50": 96, "xception": 128,
                                                              "densenet201": 96}


def test_an_unknown_overlay_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="overlay tiny not found; .*shipped overlay: smoke"):
        overlay_values("tiny")


def test_sizes_below_a_backbones_minimum_and_missing_weights_files_are_refused_at_load(tmp_path):
    from fashion_stack import pipeline
    choices = pipeline.registered_choices(["members"])
    with pytest.raises(ConfigError, match=r"members\[0\] \(inception_v3\)\.input_size is \[70, 70\]; backbone inception_v3 "
                                          r"takes at least 75"):
        load_config("imaterialist2018", [parse_override("members.inception_v3.input_size=70")], choices=choices)
    missing = tmp_path / "absent.weights.h5"
    with pytest.raises(ConfigError, match=rf"members\[1\] \(resnet50\)\.weights: file {missing} not found"):
        load_config("imaterialist2018", [parse_override(f"members.resnet50.weights={missing}")], choices=choices)
    # without the members stage's vocabularies (e.g. --stages report) nothing about members is checked
    load_config("imaterialist2018", [parse_override(f"members.resnet50.weights={missing}")])


@pytest.mark.integration
def test_a_failed_weights_download_is_one_line_with_host_and_fixes(tmp_path):
    script = ("from fashion_stack.models.backbones import BackboneError, create_backbone\n"
              "try:\n    create_backbone('resnet50', 32, 'imagenet')\n"
              "except BackboneError as err:\n    print('ERROR', err)\n")
    env = dict(os.environ, KERAS_HOME=str(tmp_path / "keras"), https_proxy="http://127.0.0.1:9",
               http_proxy="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9", PYTHONPATH=str(PROJECT_ROOT))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stdout.splitlines() if line.startswith("ERROR")]
    assert len(lines) == 1, done.stdout + done.stderr
    line = lines[0]
    assert "backbone 'resnet50'" in line and "storage.googleapis.com" in line
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in line and str(tmp_path / "keras" / "models") in line
    assert "weights: null" in line and ".weights.h5" in line


# ---- the frequency floor and the best member -------------------------------------------------

def _scored_run(tmp_path, members: dict, floor: float, honest=None, score=0.5) -> RunDir:
    run = RunDir(tmp_path / "run")
    for name, value in members.items():
        atomic.write_json(run.member_dir(name) / "scores.json",
                          {"member": name, "oof": {"micro_f1@best": value, "samples_f1@best": value}})
    atomic.write_json(run.report_dir / "frequency_floor.json", {"oof": floor, "k": [3], "folds": [floor]})
    rule = {"source": "mean", "rule": "global", "metric": "micro", "score": score, "kind": "stacker",
            "honest": None if honest is None else {"method": "outer", "micro_f1": honest, "samples_f1": honest,
                                                   "per_fold": [], "n_candidates": 2}}
    atomic.write_json(run.decision_dir / "rule.json", rule)
    return run


def test_a_headline_and_a_member_below_the_floor_are_warned_with_the_margin(tmp_path):
    run = _scored_run(tmp_path, {"good": 0.52, "bad": 0.30}, floor=0.3815, honest=0.3475)
    warnings = floor_check(run)
    assert len(warnings) == 2
    assert "honest headline micro-F1 0.3475 does not clear the frequency floor 0.3815 (margin -0.0340)" in warnings[0]
    assert "member bad scores micro-F1 0.3000" in warnings[1] and "margin -0.0815" in warnings[1]
    assert floor_margin(run) == pytest.approx((0.3815, 0.3475 - 0.3815))


def test_a_run_that_clears_the_floor_is_not_warned(tmp_path):
    run = _scored_run(tmp_path, {"a": 0.55, "b": 0.50}, floor=0.40, honest=0.58)
    assert floor_check(run) == []
    assert floor_margin(run)[1] == pytest.approx(0.18)


def test_without_the_outer_loop_the_nested_cv_score_is_checked_and_said_to_be_optimistic(tmp_path):
    run = _scored_run(tmp_path, {"a": 0.55}, floor=0.40, honest=None, score=0.39)
    (warning,) = floor_check(run)
    assert "nested-CV (optimistic" in warning and "margin -0.0100" in warning


def test_one_best_member_ties_broken_by_name(tmp_path):
    run = _scored_run(tmp_path, {"zeta": 0.6, "alpha": 0.6, "mid": 0.5}, floor=0.3)
    assert best_member(run) == ("alpha", 0.6)
    assert best_member(run, among={"mid", "zeta"}) == ("zeta", 0.6)


# ---- progress that reads cleanly in a log file -----------------------------------------------

@pytest.fixture
def log_lines():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = setup_logging()
    logger.addHandler(handler)
    yield stream
    logger.removeHandler(handler)


def test_off_a_terminal_progress_is_plain_lines_with_count_rate_and_eta(log_lines, monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal, as a log file is not
    bar = progress(range(5), desc="validate images", unit="img")
    assert isinstance(bar, LineProgress)
    bar.interval_s = 0.0
    assert list(bar) == [0, 1, 2, 3, 4]
    text = log_lines.getvalue()
    assert "validate images: 3/5 img (" in text and "img/s, ETA" in text and "5/5 img" in text
    assert "\r" not in text and "\x1b" not in text and "[A" not in text
    written = sys.stderr.getvalue()  # what a log file redirected from stderr receives: whole lines only
    assert "\r" not in written and "\x1b" not in written and all(" INFO " in line for line in written.splitlines())


def test_stage_progress_counts_units_across_members_with_an_eta():
    progress_ = StageProgress()
    progress_.plan("members", 6)
    progress_.skipped("members")  # one unit already done
    first = progress_.finished(Task("members", "a/fold1", print), 10.0)
    second = progress_.finished(Task("members", "b/fold0", print), 30.0)
    assert first == "members: 2/6 units done (a/fold1 in 10 s); 4 left, ETA 40 s"
    assert second == "members: 3/6 units done (b/fold0 in 30 s); 3 left, ETA 60 s"
    progress_.add("members", 1)  # a shared pass found under way counts too: "stage done" after it
    last = [progress_.finished(Task("members", key, print), 5.0) for key in ("b/embeddings", "b/fold1", "c/fold0", "c/fold1")]
    assert last[2] == "members: 6/7 units done (c/fold0 in 5 s); 1 left, ETA 11 s"
    assert last[3].startswith("members: 7/7 units done (c/fold1 in 5 s); stage done")
    # the units left in a map call go at that call's pace, the rest at the stage's
    slow = StageProgress()
    slow.plan("members", 9)
    for number in range(1, 6):  # five 5-second probe units in one call
        slow.finished(Task("members", f"probe/fold{number}", print), 5.0, batch=(number, 5))
    line = slow.finished(Task("members", "finetune/fold0", print), 245.0, batch=(1, 3))
    # 2 x 245 s + 1 x the stage's mean (270 s / 6); at the stage's mean alone it would say 2 min 15 s
    assert line == "members: 6/9 units done (finetune/fold0 in 245 s); 3 left, ETA 8 min 55 s"
    # a stage that announced nothing keeps the per-call count
    assert StageProgress().finished(Task("stack", "xgboost/fold0", print), 2.0, batch=(1, 3)) == \
        "stack: unit 1/3 xgboost/fold0 done in 2 s"


def test_training_reports_steps_within_an_epoch(log_lines):
    keras = pytest.importorskip("keras")
    from fashion_stack.models.trainer import Phase, StepProgress
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    callback = StepProgress("m fold0", Phase("all", 2, 0.1), steps_in_epoch=5, batch_size=2)
    callback.interval_s = 0.0
    model.fit(np.zeros((10, 4)), np.zeros((10, 2)), batch_size=2, epochs=2, verbose=0, callbacks=[callback])
    text = log_lines.getvalue()
    assert "m fold0 all epoch 1/2: step 3/5," in text and "m fold0 all epoch 2/2: step 5/5," in text
    assert "images/s, epoch ETA" in text and "phase ETA" in text


# ---- determinism: the same config on the same machine, two fresh runs -------------------------

DETERMINISM = ["demo.n_train=45", "demo.n_validation=15", "demo.n_test=12", "demo.image_size=48", "folds.k=3",
               "members=[{name: cnn_a, backbone: tiny_cnn, input_size: 32, weights: null, head_epochs: 0, "
               "finetune_epochs: 2}, {name: cnn_b, backbone: tiny_cnn, input_size: 40, weights: null, head_epochs: 0, "
               "finetune_epochs: 2, pooling: max, seed: 1}]",
               "stack.stackers=[mean, linear, xgboost]", "decision.rules=[global, group, topk]",
               "ablation.bootstrap=50"]


def _numbers(run: Path) -> dict:
    rule = json.loads((run / "decision" / "rule.json").read_text())
    members = {p.parent.name: json.loads(p.read_text())["oof"] for p in sorted((run / "members").glob("*/scores.json"))}
    stackers = {p.parent.name: json.loads(p.read_text())["oof"] for p in sorted((run / "ensemble").glob("*/scores.json"))}
    return {"submission": (run / "submission.csv").read_text(), "rule": {k: rule[k] for k in ("source", "rule", "score")},
            "honest": rule.get("honest"), "members": members, "stackers": stackers,
            # every column but the time each candidate took
            "decision scores": pd.read_csv(run / "decision" / "scores.csv").drop(columns=["seconds"]).to_dict("list")}


@pytest.mark.integration
def test_two_fresh_runs_of_one_config_give_the_same_numbers(tmp_path):
    numbers = []
    for attempt in ("first", "second"):
        args = [sys.executable, "-m", "fashion_stack", "run", "--run-dir", str(tmp_path / attempt)]
        for override in DETERMINISM:
            args += ["--set", override]
        done = subprocess.run(args, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(PROJECT_ROOT)),
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        numbers.append(_numbers(tmp_path / attempt))
    first, second = numbers
    print(json.dumps({"first": first["rule"], "second": second["rule"],
                      "members": {m: s["micro_f1@best"] for m, s in first["members"].items()}}))
    assert first == second


def test_the_members_stage_counts_a_frozen_members_embeddings_pass_and_says_done_after_the_last_unit(
        tmp_path, caplog):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from models_synthetic import make_run, tiny_member
    from fashion_stack.core.log import LOGGER_NAME
    from fashion_stack.pipeline import run_stage
    ctx = make_run(tmp_path, k=2)
    ctx.config.members = [tiny_member("fr", mode="frozen", frozen_epochs=1)]
    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        run_stage("members", ctx, logging.getLogger(LOGGER_NAME))
    counts = [r.getMessage() for r in caplog.records if "units done" in r.getMessage()]
    # two folds and the embeddings pass they share: three units, "stage done" only after the last
    assert [line.split(" units done")[0] for line in counts] == ["members: 1/3", "members: 2/3", "members: 3/3"]
    assert "fr/embeddings" in counts[0] and counts[-1].endswith("stage done")
    assert not any("stage done" in line for line in counts[:-1])
