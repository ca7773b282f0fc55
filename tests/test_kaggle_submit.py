"""The opt-in kaggle_submit stage, against a fake Kaggle client (never the network): what it sends,
the leaderboard log it writes, and every refusal."""
from __future__ import annotations

import enum
import inspect
import sys
from types import SimpleNamespace

import pandas as pd
import pytest

from fashion_stack import pipeline as run_pipeline
from fashion_stack.core import atomic
from fashion_stack.core.config import PipelineConfig
from fashion_stack.core.context import StageContext
from fashion_stack.core.rundir import RunDir
from fashion_stack.datasets.manifest import make_manifest
from fashion_stack.submissions import kaggle as kaggle_stage
from fashion_stack.submissions.kaggle import (LOG_COLUMNS, KaggleCredentialsError, KaggleSubmitError, kaggle_credentials,
                                run_kaggle_submit)
from fashion_stack.submissions.writer import write_submission

LABELS = ["1", "2", "3", "4"]
TEST_IDS = ["t0", "t1", "t2", "t3"]
SLUG = "imaterialist-challenge-fashion-2018"


class SubmissionStatus(enum.Enum):  # as kagglesdk's competitions.types.submission_status
    PENDING = 0
    COMPLETE = 1
    ERROR = 2


class FakeKaggleApi:
    """The two KaggleApi methods the stage uses. Each submission is scored after `polls_to_score`
    listings (with `outcome`); `accept=False` answers as the client does when an upload fails."""

    def __init__(self, public_score="0.6123", polls_to_score=2, outcome=SubmissionStatus.COMPLETE, accept=True):
        self.public_score, self.polls_to_score, self.outcome, self.accept = public_score, polls_to_score, outcome, accept
        self.submitted, self.listings = [], 0

    def competition_submit(self, file_name, message, competition, quiet=False, sandbox=False):
        if not self.accept:
            return SimpleNamespace(ref=0, message="Could not submit to competition")
        self.submitted.append({"file": file_name, "message": message, "competition": competition,
                               "bytes": open(file_name, "rb").read()})
        return SimpleNamespace(ref=1000 + len(self.submitted), message="Successfully submitted")

    def competition_submissions(self, competition):
        self.listings += 1
        scored = self.listings > self.polls_to_score
        return [SimpleNamespace(ref=1000 + n, status=self.outcome if scored else SubmissionStatus.PENDING,
                                public_score=self.public_score if scored and self.outcome == SubmissionStatus.COMPLETE else "",
                                error_description="Submission has 3 rows, expected 4" if scored else "")
                for n in range(1, len(self.submitted) + 1)]


class FakeClock:
    def __init__(self):
        self.now, self.sleeps = 1_800_000_000.0, []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def finished_run(tmp_path):
    """A run directory as the submit stage leaves it: manifest, decision, a valid submission.csv."""
    data_dir, run_dir = tmp_path / "data", tmp_path / "runs" / "demo_run"
    data_dir.mkdir()
    (run_dir / "decision").mkdir(parents=True)
    pd.DataFrame({"labelId": LABELS, "labelName": [f"label{x}" for x in LABELS]}).to_csv(data_dir / "label_map.csv", index=False)
    rows = [{"imageId": image_id, "split": "test", "labels": "", "path": str(data_dir / f"{image_id}.jpg"),
             "width": 8, "height": 8, "mode": "RGB", "bytes": 100, "status": "ok", "reason": ""} for image_id in TEST_IDS]
    make_manifest(rows).to_parquet(run_dir / "manifest.parquet")
    atomic.write_json(run_dir / "decision" / "rule.json",
                      {"source": "xgboost", "kind": "stacker", "rule": "global", "metric": "micro", "score": 0.5990})
    pd.DataFrame({"source": ["mean", "xgboost", "xgboost"], "rule": ["global", "global", "topk"],
                  "micro_f1": [0.58, 0.599, 0.59]}).to_csv(run_dir / "decision" / "scores.csv", index=False)
    write_submission(run_dir / "submission.csv", TEST_IDS, {i: ["1", "3"] for i in TEST_IDS}, LABELS)
    config = PipelineConfig(name="demo_run")
    config.kaggle.competition = SLUG
    return StageContext(config=config, run=RunDir(run_dir), data_dir=data_dir)


def _log(ctx) -> pd.DataFrame:
    return pd.read_csv(ctx.run.root.parent / "leaderboard.csv", dtype={"submission_ref": str})


def test_the_validated_file_is_submitted_and_its_public_score_logged_beside_the_cv_score(finished_run):
    client, clock = FakeKaggleApi(polls_to_score=2), FakeClock()
    summary = run_kaggle_submit(finished_run, client=client, clock=clock, sleep=clock.sleep)
    [sent] = client.submitted
    assert sent["competition"] == SLUG and sent["bytes"] == finished_run.run.submission.read_bytes()
    assert "xgboost" in sent["message"] and "0.5990" in sent["message"]
    board = _log(finished_run)
    assert list(board.columns) == LOG_COLUMNS and len(board) == 1
    row = board.iloc[0]
    assert (row["run"], row["source"], row["rule"], row["status"]) == ("demo_run", "xgboost", "global", "complete")
    assert row["cv_score"] == pytest.approx(0.5990) and row["public_score"] == pytest.approx(0.6123)
    assert row["cv_candidates"] == 3  # the CV score is the best of 3 pairs: a maximum, said so
    assert row["submission_ref"] == "1001" and summary["public_score"] == pytest.approx(0.6123)
    assert clock.sleeps == [finished_run.config.kaggle.poll_s] * 2  # two listings before it was scored


def test_the_same_file_is_not_submitted_twice_unless_redo(finished_run):
    client, clock = FakeKaggleApi(polls_to_score=0), FakeClock()
    run_kaggle_submit(finished_run, client=client, clock=clock, sleep=clock.sleep)
    again = run_kaggle_submit(finished_run, client=client, clock=clock, sleep=clock.sleep)
    assert again["up_to_date"] and len(client.submitted) == 1
    finished_run.redo = {"kaggle_submit"}
    run_kaggle_submit(finished_run, client=client, clock=clock, sleep=clock.sleep)
    assert len(client.submitted) == 2 and list(_log(finished_run)["submission_ref"]) == ["1001", "1002"]


def test_a_score_that_does_not_come_in_time_is_logged_pending(finished_run):
    finished_run.config.kaggle.wait_for_score_s, finished_run.config.kaggle.poll_s = 30.0, 10.0
    client, clock = FakeKaggleApi(polls_to_score=99), FakeClock()
    summary = run_kaggle_submit(finished_run, client=client, clock=clock, sleep=clock.sleep)
    assert summary["status"] == "pending" and clock.sleeps == [10.0, 10.0, 10.0]
    row = _log(finished_run).iloc[0]
    assert row["status"] == "pending" and pd.isna(row["public_score"]) and row["submission_ref"] == "1001"


def test_a_submission_kaggle_fails_to_score_is_logged_with_its_error(finished_run):
    client, clock = FakeKaggleApi(polls_to_score=0, outcome=SubmissionStatus.ERROR), FakeClock()
    assert run_kaggle_submit(finished_run, client=client, clock=clock, sleep=clock.sleep)["status"] == "error"
    assert "expected 4" in _log(finished_run).iloc[0]["error"]


def test_an_upload_kaggle_does_not_accept_is_an_error_and_not_logged(finished_run):
    with pytest.raises(KaggleSubmitError, match="did not accept.*Could not submit"):
        run_kaggle_submit(finished_run, client=FakeKaggleApi(accept=False))
    assert not (finished_run.run.root.parent / "leaderboard.csv").exists()


def test_an_invalid_submission_is_refused_before_anything_is_sent(finished_run):
    lines = finished_run.run.submission.read_text().splitlines()
    finished_run.run.submission.write_text("\n".join(lines[:-1]) + "\n")  # one test image lost
    client = FakeKaggleApi()
    with pytest.raises(KaggleSubmitError, match="(?s)not a valid submission.*missing 1 test image_id"):
        run_kaggle_submit(finished_run, client=client)
    assert client.submitted == []


def test_no_competition_is_refused_before_anything_is_sent(finished_run):
    finished_run.config.kaggle.competition = None
    client = FakeKaggleApi()
    with pytest.raises(KaggleSubmitError, match="kaggle.competition is not set.*--set kaggle.competition"):
        run_kaggle_submit(finished_run, client=client)
    assert client.submitted == []


@pytest.fixture
def no_credentials(tmp_path, monkeypatch):
    for name in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_V1_TOKEN", "KAGGLE_CONFIG_DIR",
                 "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def test_no_credentials_is_refused_without_importing_the_client(finished_run, no_credentials, monkeypatch):
    monkeypatch.delitem(sys.modules, "kaggle", raising=False)
    with pytest.raises(KaggleCredentialsError, match="no Kaggle credentials found.*KAGGLE_API_TOKEN"):
        run_kaggle_submit(finished_run)
    assert "kaggle" not in sys.modules


def test_the_cli_refuses_without_credentials_and_never_runs_kaggle_submit_in_all(finished_run, no_credentials,
                                                                                   tmp_path, capsys):
    assert "kaggle_submit" not in run_pipeline.chosen_stages("all")
    assert run_pipeline.chosen_stages("submit,kaggle_submit") == ["submit", "kaggle_submit"]
    config = tmp_path / "config.yaml"
    config.write_text(f"name: demo_run\nkaggle: {{competition: {SLUG}}}\n")
    code = run_pipeline.main(["--config", str(config), "--data-dir", str(finished_run.data_dir),
                              "--run-dir", str(finished_run.run.root), "--stages", "kaggle_submit"])
    err = capsys.readouterr().err
    assert code == 1 and "error in stage kaggle_submit" in err and "no Kaggle credentials found" in err


def test_credentials_are_looked_for_where_the_official_client_looks(tmp_path):
    home = tmp_path / "home"
    assert kaggle_credentials({}, home) is None
    assert kaggle_credentials({"KAGGLE_USERNAME": "me"}, home) is None  # a key is needed too
    assert "KAGGLE_API_TOKEN" in kaggle_credentials({"KAGGLE_API_TOKEN": "KGAT_x"}, home)
    assert "KAGGLE_KEY" in kaggle_credentials({"KAGGLE_USERNAME": "me", "KAGGLE_KEY": "k"}, home)
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "kaggle.json").write_text('{"username": "me", "key": "k"}')
    assert kaggle_credentials({"KAGGLE_CONFIG_DIR": str(tmp_path / "conf")}, home).endswith("kaggle.json")
    (home / ".kaggle").mkdir(parents=True)
    (home / ".kaggle" / "access_token").write_text("")  # an empty file is no token
    assert kaggle_credentials({}, home) is None
    (home / ".kaggle" / "access_token").write_text("KGAT_x")
    assert kaggle_credentials({}, home) == str(home / ".kaggle" / "access_token")


def test_a_foreign_file_at_the_log_path_is_refused_and_left_as_it_was(finished_run):
    log_path = finished_run.run.root.parent / "leaderboard.csv"
    log_path.write_text("team,score\nus,0.7\n")
    with pytest.raises(KaggleSubmitError, match="lacks the columns"):
        run_kaggle_submit(finished_run, client=FakeKaggleApi())
    assert log_path.read_text() == "team,score\nus,0.7\n"


def test_the_fake_client_has_the_official_clients_methods_and_fields():
    """Where the official client is installed, the calls made here match its signatures."""
    pytest.importorskip("kaggle")
    from kaggle.api.kaggle_api_extended import KaggleApi
    from kagglesdk.competitions.types.competition_api_service import ApiCreateSubmissionResponse, ApiSubmission
    from kagglesdk.competitions.types.submission_status import SubmissionStatus as Official

    submit = inspect.signature(KaggleApi.competition_submit).parameters
    assert list(submit)[1:4] == ["file_name", "message", "competition"] and "quiet" in submit
    assert list(inspect.signature(KaggleApi.competition_submissions).parameters)[1] == "competition"
    assert {"ref", "message"} <= set(dir(ApiCreateSubmissionResponse))
    assert {"ref", "status", "public_score", "error_description"} <= set(dir(ApiSubmission))
    assert {s.name for s in Official} >= {s.name for s in SubmissionStatus}
    assert kaggle_stage._status_name(Official.COMPLETE) == "complete"
