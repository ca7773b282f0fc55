#!/usr/bin/env python
"""One command from competition data to a validated submission and a report.

    python run_pipeline.py                      # the built-in demo, end to end, on CPU
    python run_pipeline.py --config configs/ccp.yaml --data-dir ../shared/data/ccp --run-dir runs/ccp
    python run_pipeline.py --stages prepare,folds --redo folds

Config = code defaults, then the YAML (--config), then --data-dir / --set overrides. The resolved
config is saved in the run directory with env.json. Each stage skips work that is already finished.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow's start-up notes would bury a one-line error

from fashion_stack.core import atomic  # noqa: E402 (after the environment it reads)
from fashion_stack.core.config import ConfigError, dump_config, load_config, overlay_values, parse_override
from fashion_stack.core.context import StageContext
from fashion_stack.core.log import setup_logging
from fashion_stack.core.process import child_peak_memory_mb, peak_memory_mb, reset_peak_memory
from fashion_stack.core.rundir import RunDir, RunDirError, StaleArtifactError, environment_record, run_lock, unwritable

# name -> (entry point, what it writes). Order is the order of the pipeline.
STAGES = {
    "download": ("fashion_stack.datasets.download:run_download", "fetch missing images to <data>/images/<imageId>.jpg; download_failures.csv"),
    "prepare": ("fashion_stack.datasets.prepare:run_prepare", "decode every image once: manifest.parquet, skipped_images.csv, repaired/"),
    "folds": ("fashion_stack.datasets.folds:run_folds", "multilabel-stratified folds over the pool: folds.csv (+ .sha256), fold_label_counts.csv"),
    "members": ("fashion_stack.models.stage:run_members", "k-fold CNNs: members/<m>/fold<k>/..., members/<m>/{oof,test}.parquet, scores.json"),
    "features": ("fashion_stack.features.stage:run_features", "check that the members' predictions can be stacked (same ids, labels, folds)"),
    "stack": ("fashion_stack.ensemble.stage:run_stack", "stackers with second-level OOF: ensemble/<s>/{oof,test}.parquet, model/, scores.json"),
    "decide": ("fashion_stack.ensemble.decide_stage:run_decide", "label-set rules chosen by nested CV: decision/{rule.json,scores.csv,test_labels.csv}"),
    "submit": ("fashion_stack.submissions.stage:run_submit", "submission.csv, validated"),
    "compare": ("fashion_stack.reports.compare:run_compare", "member x fold score table: report/fold_scores.{csv,md,png}"),
    "ablate": ("fashion_stack.reports.ablation:run_ablate", "leave-one-member-out and single-member refits: report/ablation.{csv,md,png}"),
    "report": ("fashion_stack.reports.html:run_report", "report/index.html with plots"),
    "kaggle_submit": ("fashion_stack.submissions.kaggle:run_kaggle_submit",
                      "opt-in, never in 'all': submit submission.csv to kaggle.competition, log the public score"),
}
OPT_IN = ("kaggle_submit",)  # run only when named in --stages


def stage_help() -> str:
    width = max(map(len, STAGES))
    return "stages, in order:\n" + "\n".join(f"  {name:<{width}}  {writes}" for name, (_, writes) in STAGES.items())


def parse_args(argv, prog=None):
    parser = argparse.ArgumentParser(
        prog=prog,
        description=__doc__, epilog=stage_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="YAML config, or a shipped config's name: demo, ccp, ... "
                        "(default: configs/demo.yaml)")
    parser.add_argument("--data-dir", type=Path, help="competition-layout data directory (overrides data.dir)")
    parser.add_argument("--run-dir", type=Path, help="run directory (default: runs/<config name>)")
    parser.add_argument("--stages", default="all", help="comma-separated stages to run (default: all, i.e. all but the opt-in kaggle_submit)")
    parser.add_argument("--members", help="comma-separated member names: restrict member training to these")
    parser.add_argument("--redo", default="", help="comma-separated stages to recompute even if finished, or 'all'")
    parser.add_argument("--engine", choices=["local", "ray"], default="local",
                        help="where units run: this process, in order (default), or as Ray tasks on a cluster")
    parser.add_argument("--ray-address", default=None,
                        help="with --engine ray: 'auto' (the cluster this machine joined), HOST:PORT, or unset "
                             "for a Ray started here")
    parser.add_argument("--ray-retries", type=int, default=2, help="retries of a unit whose Ray worker died")
    parser.add_argument("--overlay", dest="overlays", action="append", default=[], metavar="NAME",
                        help="a partial config merged over --config, before --set: a shipped overlay by name "
                             "(smoke: any config shrunk to a minutes-long rehearsal) or a YAML file (repeatable)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. --set folds.k=5, or one member by name: "
                             "--set members.densenet201.batch_size=16 (repeatable)")
    return parser.parse_args(argv)


def split_names(text: str, valid, what: str) -> list:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ConfigError(f"unknown {what} {unknown}; valid: {', '.join(valid)}")
    return names


def registered_choices(stages=None) -> dict:
    """The plug-in registries above core (backbones, heads, losses, stackers, decision rules),
    keyed by the config path that names them: the config check refuses a bad name, or a bad
    setting of a plug-in (its declared params), before any work. Only those the requested stages
    use (None: all of them). None of them imports Keras: their plug-ins build Keras objects when called."""
    wanted = set(STAGES) if stages is None else set(stages)
    choices = {}
    if wanted & {"members"}:
        from fashion_stack.core.config import BACKBONE_MIN_SIZES
        from fashion_stack.models.backbones import BACKBONES
        from fashion_stack.models.poolings import POOLINGS
        from fashion_stack.models.losses import LOSSES
        choices.update({"members.backbone": BACKBONES, "members.pooling": POOLINGS, "members.loss": LOSSES})
        choices[BACKBONE_MIN_SIZES] = {name: spec.min_size for name, spec in BACKBONES.items()}
    if wanted & {"features", "stack", "decide", "ablate", "report"}:
        from fashion_stack.ensemble.stackers import STACKERS
        choices["stack.stackers"] = STACKERS
        choices["ablation.stacker"] = sorted(STACKERS) + ["chosen"]
    if wanted & {"decide", "ablate", "report"}:
        from fashion_stack.ensemble.decision import RULES
        choices["decision.rules"] = RULES
    return choices


def chosen_stages(text: str) -> list:
    """--stages: "all" is every stage but the opt-in ones, which run only when named. Named stages
    run in pipeline order whatever order they are given in (each reads what the earlier ones make)."""
    if text.strip() == "all":
        return [s for s in STAGES if s not in OPT_IN]
    named = split_names(text, STAGES, "stage(s)")
    if not named:
        raise ConfigError(f"--stages {text!r} names no stage; give some of: all, {', '.join(STAGES)}")
    return [s for s in STAGES if s in named]


def build_context(args, stages=None) -> StageContext:
    overrides = [overlay_values(name) for name in args.overlays] + [parse_override(text) for text in args.overrides]
    if args.data_dir is not None:
        overrides.append({"data": {"dir": str(args.data_dir)}})
    config = load_config(args.config, overrides, choices=registered_choices(stages))
    if config.data.dir is None:
        from fashion_stack.datasets.demo import demo_cache_dir, generate_demo
        data_dir = generate_demo(demo_cache_dir(config.demo), config.demo)
    else:
        data_dir = Path(config.data.dir)
        if not data_dir.is_dir():
            raise ConfigError(f"data directory {data_dir} does not exist (set --data-dir or data.dir)")
    # absolute: units record their artifacts relative to their own folder, and a relative run
    # directory (the default runs/<name>) would be joined on twice
    run = RunDir(Path(args.run_dir or Path("runs") / config.name).absolute())
    redo = set(split_names(args.redo, list(STAGES) + ["all"], "--redo stage(s)"))
    members = args.members.split(",") if args.members else None
    executor = None
    if args.engine != "local":  # Ray is imported only when asked for
        from fashion_stack.core.executor import make_executor
        executor = make_executor(args.engine, run.root, address=args.ray_address, max_retries=args.ray_retries)
    return StageContext(config=config, run=run, data_dir=data_dir, redo=redo, only_members=members,
                        executor=executor)


# each stage's latest wall time and peak memory, for the report's summary. peak_memory_mb: this
# process's high-water mark during the stage, plus the largest peak of a child process that ran
# units of it (the local engine's isolated members, one child at a time: an upper bound of what
# was resident at once); process_peak_memory_mb and child_peak_memory_mb (null: no child) its parts
STAGE_TIMES = "stage_times.json"


def run_stage(name: str, ctx: StageContext, log) -> dict:
    module_name, function_name = STAGES[name][0].split(":")
    entry = getattr(importlib.import_module(module_name), function_name)
    started = time.time()
    log.info("stage %s: starting", name)
    reset_peak_memory()
    summary = entry(ctx) or {}
    summary["seconds"] = round(time.time() - started, 1)
    own, child = peak_memory_mb(), child_peak_memory_mb()
    peak = None if own is None else own + (child or 0)
    parts = f" (this process {own} MB + largest child process {child} MB)" if child is not None else ""
    log.info("stage %s: done in %.1f s%s", name, summary["seconds"],
             f", peak memory {peak:.0f} MB{parts}" if peak is not None else "")
    _record_stage(ctx, name, summary["seconds"], peak, own, child)
    return summary


def _record_stage(ctx: StageContext, name: str, seconds: float, peak_mb, own_mb=None, child_mb=None) -> None:
    path = ctx.run.root / STAGE_TIMES
    try:
        record = atomic.read_json(path) if path.exists() else {}
    except (OSError, ValueError):
        record = {}
    rounded = [None if mb is None else round(mb) for mb in (peak_mb, own_mb, child_mb)]
    record[name] = {"seconds": seconds, "peak_memory_mb": rounded[0], "process_peak_memory_mb": rounded[1],
                    "child_peak_memory_mb": rounded[2], "finished_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    atomic.write_json(path, record)


def main(argv=None, prog=None) -> int:
    args = parse_args(argv, prog)
    log = setup_logging()
    try:
        stages = chosen_stages(args.stages)
        ctx = build_context(args, stages)
        with run_lock(ctx.run.root):  # held for the whole run: one run per run directory
            return run_stages(ctx, stages, log)
    except (ConfigError, ValueError, RunDirError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def run_stages(ctx: StageContext, stages: list, log) -> int:
    try:
        atomic.write_text(ctx.run.root / "config.yaml", dump_config(ctx.config))
        atomic.write_json(ctx.run.root / "env.json", {**environment_record(), "data_dir": str(ctx.data_dir)})
    except OSError as err:
        raise unwritable(ctx.run.root, err) from None
    removed = atomic.remove_leftovers(ctx.run.root)
    if removed:
        log.warning("removed %d temporary file(s) left by interrupted writes: %s", len(removed),
                    ", ".join(os.path.relpath(path, ctx.run.root) for path in removed[:10])
                    + (f" (and {len(removed) - 10} more)" if len(removed) > 10 else ""))
    log.info("run directory %s, data %s, stages %s (in pipeline order)", ctx.run.root, ctx.data_dir, ",".join(stages))
    summaries = {}
    for name in stages:
        try:
            summaries[name] = run_stage(name, ctx, log)
        except StaleArtifactError as err:
            print(f"error in stage {name}: {err}", file=sys.stderr)
            return 3
        except (ValueError, RuntimeError, OSError) as err:
            # the pipeline's own errors name the file or ids and the fix: show the message, not a
            # traceback (finished units stay on disk; rerun continues from them)
            print(f"error in stage {name}: {type(err).__name__}: {err}", file=sys.stderr)
            return 1
    if "report" not in stages and (ctx.run.report_dir / "index.html").exists():
        # a report left from an earlier run would silently show what these stages just replaced:
        # the report stage rebuilds it when its inputs changed and skips otherwise
        try:
            if not run_stage("report", ctx, log).get("up_to_date"):
                log.info("report: rebuilt, since what it shows changed")
        except (ValueError, RuntimeError, OSError) as err:
            log.warning("report: could not be rebuilt (%s); %s may be stale", err, ctx.run.report_dir / "index.html")
    from fashion_stack.reports.summary import final_screen
    print(final_screen(ctx, summaries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
