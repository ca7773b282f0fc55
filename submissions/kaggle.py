"""The opt-in kaggle_submit stage: <run>/submission.csv to a Kaggle competition, and its public score
into a leaderboard log beside the run's cross-validated score.

    python run_pipeline.py --config ... --stages kaggle_submit --set kaggle.competition=SLUG

Never part of the default run: a submission spends one of the competition's daily submissions.
In order: the competition slug must be set (kaggle.competition); submission.csv must pass the
validator against the manifest's test ids and the label map; Kaggle credentials must be present;
then the official `kaggle` client (an optional dependency, imported only here) uploads the file,
the stage waits up to kaggle.wait_for_score_s for the public score, and the leaderboard log
(kaggle.leaderboard_log, a CSV shared by the runs beside this one) gets one row per submission:
written when Kaggle accepts the file, updated when the score arrives. The same file submitted
again to the same competition is skipped unless --redo kaggle_submit.

The client is anything with the two methods of kaggle.api.kaggle_api_extended.KaggleApi used
here, competition_submit(file_name, message, competition, quiet) and
competition_submissions(competition); the tests pass a fake one and never reach the network.
"""
from __future__ import annotations

import hashlib
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

import pandas as pd

from fashion_stack.core import atomic
from fashion_stack.core.rundir import environment_record
from fashion_stack.datasets.manifest import read_manifest
from fashion_stack.submissions.validate import validate_submission

STAGE = "kaggle_submit"
LOG_COLUMNS = ["run", "git_sha", "source", "kind", "rule", "metric", "cv_score", "cv_candidates",
               "public_score", "status", "competition", "submission_ref", "submission_sha256", "message",
               "submitted_at", "scored_at", "error"]
PROBLEMS_SHOWN = 10
CREDENTIALS_HELP = (
    "no Kaggle credentials found. Give the official client one of: the environment variable "
    "KAGGLE_API_TOKEN (a token from kaggle.com > Settings > API; in a Kaggle notebook, store it "
    "under Add-ons > Secrets and export it), KAGGLE_USERNAME and KAGGLE_KEY, the file "
    "~/.kaggle/access_token, or ~/.kaggle/kaggle.json (chmod 600); or run `kaggle auth login`")


class KaggleSubmitError(RuntimeError):
    """kaggle_submit cannot go on; the message says what to set or run first."""


class KaggleCredentialsError(KaggleSubmitError):
    """No credentials for the official client (it would exit the process looking for them)."""


# ---- credentials and the official client -----------------------------------------------------


def kaggle_credentials(environ=None, home: Optional[Path] = None) -> Optional[str]:
    """Where the official client will find credentials (a description), or None. Looked up here,
    without the network, because the client's own authenticate() exits the process when it finds
    none. The places are those of kaggle 2.x: token, legacy key, OAuth login, notebook token."""
    environ = os.environ if environ is None else environ
    home = Path.home() if home is None else Path(home)
    for variables in (("KAGGLE_API_TOKEN",), ("KAGGLE_USERNAME", "KAGGLE_KEY"), ("KAGGLE_API_V1_TOKEN",)):
        if all(environ.get(name) for name in variables):
            return "environment variable " + " and ".join(variables)
    config_dirs = [Path(environ["KAGGLE_CONFIG_DIR"])] if environ.get("KAGGLE_CONFIG_DIR") else []
    config_dirs += [home / ".kaggle", Path(environ.get("XDG_CONFIG_HOME") or home / ".config") / "kaggle"]
    files = [home / ".kaggle" / "access_token", home / ".kaggle" / "access_token.txt",
             *(folder / "kaggle.json" for folder in config_dirs), home / ".kaggle" / "credentials.json"]
    for path in files:
        if path.is_file() and path.stat().st_size > 0:
            return str(path)
    return None


def official_client():
    """An authenticated kaggle.api.kaggle_api_extended.KaggleApi."""
    source = kaggle_credentials()
    if source is None:
        raise KaggleCredentialsError(CREDENTIALS_HELP)
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError as err:
        raise KaggleSubmitError(f"the official Kaggle client is not installed ({err}); install it with "
                                "pip install 'fashion-stack[kaggle]' or pip install -r requirements/kaggle.txt") from None
    api = KaggleApi()
    try:
        api.authenticate()
    except SystemExit:  # the client prints its own help and calls exit(1)
        raise KaggleCredentialsError(f"the Kaggle client did not accept the credentials in {source}; "
                                     "renew the token at kaggle.com > Settings > API") from None
    return api


# ---- the stage -------------------------------------------------------------------------------


def run_kaggle_submit(ctx, client=None, clock: Callable[[], float] = time.time,
                      sleep: Callable[[float], None] = time.sleep) -> dict:
    """Validate, submit, wait for the public score, log it. `client`: None for the official one."""
    log = ctx.logger(STAGE)
    settings = ctx.config.kaggle
    if not settings.competition:
        raise KaggleSubmitError("kaggle.competition is not set: name the competition's slug in the config "
                                "(kaggle: {competition: imaterialist-challenge-fashion-2018}) or with "
                                "--set kaggle.competition=SLUG")
    submission = ctx.run.submission
    check_submission(ctx, submission)
    decision = read_decision(ctx.run.decision_dir)
    digest = hashlib.sha256(submission.read_bytes()).hexdigest()
    log_path = leaderboard_path(ctx)
    board = read_leaderboard(log_path)
    earlier = board[(board["competition"] == settings.competition) & (board["submission_sha256"] == digest)]
    if len(earlier) and not ctx.redo_stage(STAGE):
        row = earlier.iloc[-1]
        log.info("%s was already submitted to %s (ref %s, public score %s); --redo kaggle_submit submits it again",
                 submission, settings.competition, row["submission_ref"], row["public_score"])
        return {"submission_ref": row["submission_ref"], "public_score": row["public_score"],
                "leaderboard_log": str(log_path), "up_to_date": True}
    message = submission_message(settings.message, ctx.run.root.name, decision)
    client = official_client() if client is None else client
    log.info("submitting %s to %s: %s", submission, settings.competition, message)
    response = client.competition_submit(str(submission), message, settings.competition, quiet=True)
    reference = getattr(response, "ref", None)
    if not reference:
        raise KaggleSubmitError(f"Kaggle did not accept {submission} for {settings.competition}: "
                                f"{getattr(response, 'message', '') or 'no submission reference came back'}")
    row = {"run": ctx.run.root.name, "git_sha": environment_record().get("git_sha") or "",
           "source": decision["source"], "kind": decision["kind"], "rule": decision["rule"],
           "metric": decision["metric"], "cv_score": decision["score"], "cv_candidates": decision["candidates"],
           "public_score": None, "status": "pending", "competition": settings.competition,
           "submission_ref": str(reference), "submission_sha256": digest, "message": message,
           "submitted_at": _now(clock), "scored_at": "", "error": ""}
    write_log_row(log_path, row)  # recorded at once: the submission counts even if the wait is cut short
    row.update(wait_for_score(client, settings.competition, str(reference), settings.wait_for_score_s,
                              settings.poll_s, clock, sleep))
    write_log_row(log_path, row)
    _report(log, row, log_path)
    return {"submission_ref": row["submission_ref"], "status": row["status"], "public_score": row["public_score"],
            "cv_score": row["cv_score"], "leaderboard_log": str(log_path)}


def check_submission(ctx, path: Path) -> None:
    """The validator's checks against this run's test ids and label map; any problem refuses."""
    if not path.is_file():
        raise KaggleSubmitError(f"{path} not found; run --stages submit first")
    manifest = read_manifest(ctx.run.manifest)
    test_ids = list(manifest.loc[manifest["split"] == "test", "imageId"])
    decision = ctx.config.decision
    problems = validate_submission(path, test_ids, ctx.label_space().label_ids, decision.min_labels,
                                   decision.max_labels)
    if problems:
        shown = "\n  ".join(problems[:PROBLEMS_SHOWN])
        more = f"\n  ... and {len(problems) - PROBLEMS_SHOWN} more" if len(problems) > PROBLEMS_SHOWN else ""
        raise KaggleSubmitError(f"{path} is not a valid submission, not submitted:\n  {shown}{more}\n"
                                "rerun with --redo submit")


def read_decision(decision_dir: Path) -> dict:
    """The chosen source and rule and their nested-CV score (decision/rule.json), and among how
    many (source, rule) pairs it was the best (decision/scores.csv): the CV score is a maximum."""
    rule_file, scores_file = decision_dir / "rule.json", decision_dir / "scores.csv"
    if not rule_file.is_file() or not scores_file.is_file():
        raise KaggleSubmitError(f"{decision_dir} has no rule.json / scores.csv; run --stages decide,submit first")
    try:
        record = atomic.read_json(rule_file)
        candidates = len(pd.read_csv(scores_file))
    except (OSError, ValueError) as err:
        raise KaggleSubmitError(f"cannot read the decision in {decision_dir} ({err}); rerun with --redo decide") from err
    missing = [key for key in ("source", "kind", "rule", "metric", "score") if key not in record]
    if missing:
        raise KaggleSubmitError(f"{rule_file} lacks {missing}; rerun with --redo decide")
    return {**record, "candidates": candidates}


def submission_message(template: str, run: str, decision: dict) -> str:
    try:
        return template.format(run=run, source=decision["source"], rule=decision["rule"],
                               metric=decision["metric"], cv_score=float(decision["score"]))
    except (KeyError, IndexError, ValueError) as err:
        raise KaggleSubmitError(f"kaggle.message {template!r} does not format ({err!r}); it may use "
                                "{run} {source} {rule} {metric} {cv_score}") from None


def wait_for_score(client, competition: str, reference: str, wait_s: float, poll_s: float,
                   clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep) -> dict:
    """Poll the competition's submissions until ours is scored or fails, or wait_s has passed:
    {"status": "complete" | "error" | "pending", "public_score": float or None, ...}."""
    deadline = clock() + wait_s
    while True:
        found = next((s for s in client.competition_submissions(competition) or []
                      if s is not None and str(getattr(s, "ref", "")) == reference), None)
        status = _status_name(getattr(found, "status", "pending")) if found is not None else "pending"
        if status == "complete":
            return {"status": status, "public_score": _score(getattr(found, "public_score", None)),
                    "scored_at": _now(clock)}
        if status == "error":
            return {"status": status, "error": str(getattr(found, "error_description", "") or "")}
        if clock() + poll_s > deadline:
            return {"status": "pending"}
        sleep(poll_s)


# ---- the leaderboard log -----------------------------------------------------------------------


def leaderboard_path(ctx) -> Path:
    path = Path(ctx.config.kaggle.leaderboard_log).expanduser()
    return path if path.is_absolute() else (ctx.run.root / path).resolve()


def read_leaderboard(path: Path) -> pd.DataFrame:
    """The log so far (empty when there is none yet); one that is not a log is an error, never overwritten."""
    if not path.exists():
        return pd.DataFrame(columns=LOG_COLUMNS)
    try:
        board = pd.read_csv(path, dtype={"submission_ref": str, "submission_sha256": str, "git_sha": str},
                            keep_default_na=False)
    except (OSError, ValueError) as err:
        raise KaggleSubmitError(f"leaderboard log {path} cannot be read ({err}); move it aside to start a new one") from err
    missing = [column for column in LOG_COLUMNS if column not in board.columns]
    if missing:
        raise KaggleSubmitError(f"leaderboard log {path} lacks the columns {missing}; it is not this "
                                "stage's log: set kaggle.leaderboard_log to another file or move it aside")
    return board


def write_log_row(path: Path, row: dict) -> None:
    """Add `row`, or replace the row of the same submission, and rewrite the log atomically."""
    board = read_leaderboard(path)
    board = board[board["submission_ref"].astype(str) != str(row["submission_ref"])]
    board = pd.concat([board, pd.DataFrame([row], columns=LOG_COLUMNS)], ignore_index=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_csv(path, board[LOG_COLUMNS], index=False)


def _status_name(status) -> str:
    # kagglesdk's SubmissionStatus enum (PENDING, COMPLETE, ERROR), or its name as text
    return str(getattr(status, "name", status)).split(".")[-1].lower()


def _score(value) -> Optional[float]:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _now(clock: Callable[[], float]) -> str:
    return datetime.fromtimestamp(clock(), timezone.utc).isoformat(timespec="seconds")


def _report(log, row: dict, log_path: Path) -> None:
    if row["status"] == "complete":
        log.info("%s: public score %s (CV %s-F1 %.4f, the best of %d source x rule pairs); logged in %s",
                 row["competition"], row["public_score"], row["metric"], row["cv_score"], row["cv_candidates"], log_path)
    elif row["status"] == "error":
        log.warning("%s: Kaggle could not score submission %s: %s", row["competition"], row["submission_ref"], row["error"])
    else:
        log.warning("%s: submission %s not scored yet; it is logged in %s as pending (see it with "
                    "`kaggle competitions submissions %s`)", row["competition"], row["submission_ref"], log_path,
                    row["competition"])
