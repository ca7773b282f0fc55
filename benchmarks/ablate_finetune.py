"""Input policy x size for a fine-tuned member, on the pipeline's own folds (issue 12).

    python -m benchmarks.ablate_finetune --config configs/ccp.yaml --data-dir ../shared/data/ccp \
        --run-dir <scratch>/ablate_finetune

Unlike the frozen ablation (benchmarks/ablate_heads.py, one trunk pass per input shared by every
head), a fine-tuned trunk changes with the input, so every row is a whole member: the config's
fine-tuned member (its head, schedule, learning rates, seed) copied once per policy:size, written
as an overlay config (`base:` the given config, members replaced by the grid) into the run
directory, and trained by the pipeline's own prepare, folds and members stages there. The folds are
the config's (same k, seed and pool), so the rows pair fold by fold with the shipped members; the
members stage's per-unit resume makes an interrupted grid continue where it stopped.

The table is benchmarks.compare_members over the grid: each fold's OOF micro-F1 (best global
threshold on that fold), the pooled OOF, and the fold-paired difference against the baseline row
(the config's own policy and size for that member), mean and a 95% t interval over the k folds.
Every other row is a candidate: the best row's margin is a maximum over them, so optimistic.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from benchmarks import compare_members
from benchmarks.ablate_heads import input_name, parse_inputs
from fashion_stack.core import atomic
from fashion_stack.core.config import config_path, read_config_file, upgrade_input_size

# Cheapest first, so an interrupted grid still holds whole sizes: 3 policies x 3 sizes.
DEFAULT_INPUTS = ("stretch:192,pad:192,crop:192,stretch:288x192,pad:288x192,crop:288x192,"
                  "stretch:320x224,pad:320x224,crop:320x224")


def grid_members(member: dict, inputs: list) -> list:
    """The member's settings copied once per (policy, width, height), each named by what it varies:
    mobilenetv2_finetune_pad_288x192 (height x width; one number when square)."""
    rows = []
    for policy, width, height in inputs:
        row = {**member, "name": f"{member['name']}_{policy}_{input_name(width, height)}",
               "resize": policy, "input_size": [width if height is None else height, width]}
        for old in ("image_size", "image_height"):  # the input's older spelling, if the config still has it
            row.pop(old, None)
        rows.append(row)
    return rows


def write_overlay(config: str, member_name: str, inputs: list, run_dir: Path, baseline_input: str = None) -> tuple:
    """<run_dir>/ablate_finetune.yaml: `config` with its members replaced by the member's grid
    (the baseline row first, so a short run still measures against it). The baseline is the member's
    own policy and size unless `baseline_input` ("policy:size") names another, e.g. an earlier default
    the table was first measured against. Returns (path, names, baseline)."""
    values = read_config_file(config_path(config))
    members = values.get("members") or []
    member = next((m for m in members if isinstance(m, dict) and m.get("name") == member_name), None)
    if member is None:
        raise SystemExit(f"{config}: no member {member_name!r} (members: {[m.get('name') for m in members]})")
    member = upgrade_input_size(member)
    if member.get("input_size") is None:
        raise SystemExit(f"{config}: member {member_name!r} has no input_size; the grid varies it from a set value")
    grid = grid_members(member, inputs)
    height, width = member["input_size"]
    own = (member.get("resize", "pad"), width, None if height == width else height)
    baseline_row = grid_members(member, parse_inputs(baseline_input) if baseline_input else [own])[0]
    baseline = baseline_row["name"]
    if baseline not in {m["name"] for m in grid}:
        grid.insert(0, baseline_row)
    grid.sort(key=lambda m: m["name"] != baseline)
    overlay = {"base": str(config_path(config).resolve()), "members": grid}
    path = Path(run_dir) / "ablate_finetune.yaml"
    atomic.write_text(path, "# written by benchmarks/ablate_finetune.py\n" + yaml.safe_dump(overlay, sort_keys=False))
    return path, [m["name"] for m in grid], baseline


def parse_recipe(words: list) -> tuple:
    """["lpft_all", "head_init=embeddings", "unfreeze=all"] -> ("lpft_all", {"head_init": "embeddings", ...});
    each value is read as YAML (numbers, lists, booleans)."""
    if not words or "=" in words[0]:
        raise SystemExit(f"--recipe {' '.join(words)}: start with the row's name, then key=value settings")
    settings = {}
    for word in words[1:]:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise SystemExit(f"--recipe {words[0]}: {word!r} is not key=value")
        settings[key] = yaml.safe_load(value)
    return words[0], settings


def write_recipe_overlay(config: str, member_name: str, recipes: list, run_dir: Path, against: str = None) -> tuple:
    """<run_dir>/ablate_finetune.yaml for the recipe ablation (issue 21): the member as configured,
    then one row per (name, settings) recipe, each the member with those settings over it, named
    <member>_<name>; with `against` (e.g. the config's frozen member on the same trunk), that member
    first, as the baseline every row is measured against. Returns (path, names, baseline)."""
    values = read_config_file(config_path(config))
    members = {m.get("name"): m for m in values.get("members") or [] if isinstance(m, dict)}
    for name in [member_name] + ([against] if against else []):
        if name not in members:
            raise SystemExit(f"{config}: no member {name!r} (members: {list(members)})")
    rows = ([members[against]] if against else []) + [members[member_name]]
    rows += [{**members[member_name], **settings, "name": f"{member_name}_{name}"} for name, settings in recipes]
    overlay = {"base": str(config_path(config).resolve()), "members": rows}
    path = Path(run_dir) / "ablate_finetune.yaml"
    atomic.write_text(path, "# written by benchmarks/ablate_finetune.py --recipe\n" + yaml.safe_dump(overlay, sort_keys=False))
    return path, [m["name"] for m in rows], rows[0]["name"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/ccp.yaml")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--run-dir", required=True, help="scratch run directory for the grid's members")
    parser.add_argument("--member", default="mobilenetv2_finetune", help="the config's fine-tuned member to vary")
    parser.add_argument("--inputs", default=DEFAULT_INPUTS, help="policy:size list; size is N (square) or HxW")
    parser.add_argument("--baseline", default=None,
                        help="policy:size of the row the others are measured against (default: the member's own)")
    parser.add_argument("--table-only", action="store_true", help="print the table of the rows already trained")
    parser.add_argument("--recipe", nargs="+", action="append", metavar="NAME KEY=VALUE",
                        help="a fine-tuning recipe row (repeatable): the member with these settings, e.g. "
                             "--recipe lpft_all head_init=embeddings unfreeze=all warmup_fraction=0.1; "
                             "with --recipe the input grid is not used")
    parser.add_argument("--against", help="with --recipe: a config member (the frozen one on the same trunk) "
                                          "trained too and used as the baseline")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.recipe:
        overlay, names, baseline = write_recipe_overlay(args.config, args.member,
                                                        [parse_recipe(words) for words in args.recipe], run_dir,
                                                        args.against)
    else:
        overlay, names, baseline = write_overlay(args.config, args.member, parse_inputs(args.inputs), run_dir,
                                                 args.baseline)
    if not args.table_only:
        from fashion_stack import pipeline as run_pipeline  # top floor: the pipeline's own stages train the grid
        status = run_pipeline.main(["--config", str(overlay), "--data-dir", args.data_dir, "--run-dir", str(run_dir),
                                    "--stages", "prepare,folds,members"])
        if status != 0:
            print(f"members stage exited {status}; the table shows the rows that finished", file=sys.stderr)
    done = [n for n in names if (run_dir / "members" / n / "scores.json").is_file()]
    missing = [n for n in names if n not in done]
    if baseline not in done:
        raise SystemExit(f"{run_dir}: the baseline row {baseline} has not finished; rerun to resume it")
    rows = "recipe" if args.recipe else "policy x size"
    print(f"\nfine-tuned {args.member} from {args.config}, {rows}; micro-F1 at the best global threshold")
    compare_members.main([f"{run_dir}:{n}" for n in done] + ["--baseline", f"{run_dir}:{baseline}",
                                                              "--plot", str(run_dir / "ablate_finetune.png")])
    if missing:
        print(f"not finished (rerun the same command to resume): {', '.join(missing)}")
    if len(done) > 2:
        print(f"the best row is a maximum over {len(done) - 1} candidates on these folds, so its margin is optimistic")
    return 0


if __name__ == "__main__":
    sys.exit(main())
