"""Heads x input policy x size for a frozen trunk, on the pipeline's own folds (issue 12).

    python -m benchmarks.ablate_heads --config configs/ccp.yaml --data-dir ../shared/data/ccp \
        --run-dir <scratch>/ablation

Cheap by construction: each (policy, size) passes the pool's images through the trunk once and
caches the feature map (float16); every head trains on that one pass (avg / max / bands are the
member's own pooling layers applied to the cached map, CSRA reads the map). Each head trains per
fold with the members stage's model, optimizer, cosine schedule, epochs and seed per fold, in one
`fit` (--stage-trainer: through models.trainer.train_head itself, with its per-epoch checkpoints,
about 4x slower here), and is scored out-of-fold: micro-F1 at the best global threshold per fold, the
pooled OOF micro-F1, and the fold-paired difference against the baseline row (avg, stretch, 224:
today's frozen member), mean and a 95% t interval over the k folds (k - 1 degrees of freedom).

Every row is a candidate: the best row of the table is a maximum over candidates chosen on these
same folds, so its margin over the baseline is optimistic by the selection.
Results are cached per row (<run-dir>/ablation/rows/*.json): a rerun prints the table at once.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import keras
import numpy as np

from benchmarks import compare_members
from fashion_stack.core import atomic
from fashion_stack.core.metrics import score_probabilities
from fashion_stack.ensemble.comparison import fold_paired
from fashion_stack.models import trainer
from fashion_stack.models.backbones import InputSpec
from fashion_stack.models.devices import Placement, resolve_placement
from fashion_stack.models.embeddings import member_embeddings, pool_cached_maps
from fashion_stack.models.heads import build_head_model
from fashion_stack.models.inputs import steps_per_epoch
from fashion_stack.models.stage import load_stage_data

BASELINE = ("avg", "stretch", "224")


def parse_inputs(text: str) -> list:
    """"stretch:224,pad:320x224" -> [("stretch", 224, None), ("pad", 224, 320)] (policy, width, height)."""
    out = []
    for item in text.split(","):
        policy, size = item.split(":")
        if "x" in size:
            height, width = size.split("x")
            out.append((policy, int(width), int(height)))
        else:
            out.append((policy, int(size), None))
    return out


def input_name(width: int, height) -> str:
    """How rows, files and grid members name a size: the member's own InputSpec.size_name."""
    return InputSpec(height or width, width, "", "").size_name


def fit_head(member, features: np.ndarray, labels: np.ndarray, seed: int):
    """The frozen member's head, optimizer and schedule (models.trainer), trained in one fit."""
    keras.utils.set_random_seed(seed)
    model = build_head_model(features.shape[1:], labels.shape[1], member)
    steps = steps_per_epoch(len(features), member.batch_size)
    placement = resolve_placement(member)
    placement = Placement(placement.backend, placement.kind, placement.devices[:1], "float32", False, 1)
    trainer._compile(model, member, member.learning_rate, member.frozen_epochs * steps, placement)
    model.fit(features, labels, batch_size=member.batch_size, epochs=member.frozen_epochs, shuffle=True, verbose=0)
    return model


def run_row(base, head: str, maps: np.ndarray, row_of: dict, data, work: Path, stage_trainer: bool) -> dict:
    member = dataclasses.replace(base, pooling=head, tta_flip=False)
    features = pool_cached_maps(maps, member)
    pool_probs, fold_scores, started = {}, [], time.perf_counter()
    for unit in data.units:
        seed = member.seed * 1000 + unit.fold  # as models.stage.run_unit seeds a unit
        fold_dir = work / f"{head}_{unit.name}"
        shutil.rmtree(fold_dir, ignore_errors=True)
        train_rows = [row_of[i] for i in unit.train_ids]
        train_labels = data.labels(list(unit.train_ids))
        if stage_trainer:
            model = trainer.train_head(member, features[train_rows], train_labels, fold_dir, seed)
        else:
            model = fit_head(member, features[train_rows], train_labels, seed)
        probs = trainer.predict_embeddings(model, features[[row_of[i] for i in unit.predict_ids]])
        fold_scores.append(score_probabilities(data.labels(list(unit.predict_ids)), probs)["micro_f1@best"])
        pool_probs.update(zip(unit.predict_ids, probs))
        shutil.rmtree(fold_dir, ignore_errors=True)
    oof = np.stack([pool_probs[i] for i in data.pool])
    return {"folds": fold_scores, "oof": score_probabilities(data.labels(data.pool), oof)["micro_f1@best"],
            "head_seconds": time.perf_counter() - started}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/ccp.yaml")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--run-dir", required=True, help="scratch run directory (prepare + folds run there)")
    parser.add_argument("--member", default="mobilenetv2_frozen", help="the config's frozen member to vary")
    parser.add_argument("--inputs", default="stretch:224,stretch:320x224,pad:224,crop:224,pad:320x224,"
                                            "crop:320x224,stretch:160,pad:160,crop:160",
                        help="policy:size list; size is N (square) or HxW")
    parser.add_argument("--heads", default="avg,bands,csra")
    parser.add_argument("--stage-trainer", action="store_true",
                        help="train heads through models.trainer.train_head (per-epoch fits and checkpoints)")
    parser.add_argument("--table-only", action="store_true", help="print the table of the rows already measured")
    args = parser.parse_args(argv)
    if args.table_only:
        root = Path(args.run_dir) / "ablation"
        results = {tuple(path.stem.split("_", 2)): atomic.read_json(path) for path in sorted((root / "rows").glob("*.json"))
                   if not path.stem.startswith("embed_")}
        from fashion_stack.core.config import load_config
        base = next(m for m in load_config(args.config).members if m.name == args.member)
        print_table(results, root, base)
        return 0

    from fashion_stack import pipeline as run_pipeline  # top floor: the pipeline's own prepare and folds stages make the folds
    common = ["--config", args.config, "--data-dir", args.data_dir, "--run-dir", args.run_dir]
    if run_pipeline.main(common + ["--stages", "prepare,folds"]) != 0:
        return 2
    ctx = run_pipeline.build_context(run_pipeline.parse_args(common))
    data = load_stage_data(ctx)
    base = next((m for m in ctx.config.members if m.name == args.member), None)
    if base is None:
        parser.error(f"no member {args.member!r} in {args.config}")
    root = Path(args.run_dir) / "ablation"
    row_of = {image_id: n for n, image_id in enumerate(data.pool)}
    heads = args.heads.split(",")
    results = {}
    for policy, width, height in parse_inputs(args.inputs):
        size = input_name(width, height)
        pending = [h for h in heads if not (root / "rows" / f"{h}_{policy}_{size}.json").exists()]
        timing = root / "rows" / f"embed_{policy}_{size}.json"
        if pending:
            mapper = dataclasses.replace(base, resize=policy, input_size=(width if height is None else height, width),
                                         pooling="csra",
                                         tta_flip=False)
            started = time.perf_counter()
            maps = member_embeddings(mapper, [f"pool:{i}" for i in data.pool],
                                     [data.path_of["pool"][i] for i in data.pool],
                                     root / "maps" / f"{policy}_{size}").features
            if not timing.exists():
                atomic.write_json(timing, {"seconds": time.perf_counter() - started, "shape": list(maps.shape[1:])})
            for head in pending:
                row = run_row(base, head, maps, row_of, data, root / "work", args.stage_trainer)
                atomic.write_json(root / "rows" / f"{head}_{policy}_{size}.json", row)
                print(f"{head:6s} {policy:8s} {size:8s} OOF {row['oof']:.4f} folds "
                      f"{' '.join(f'{f:.4f}' for f in row['folds'])} ({row['head_seconds']:.0f} s)", flush=True)
            del maps
        for head in heads:
            results[(head, policy, size)] = atomic.read_json(root / "rows" / f"{head}_{policy}_{size}.json")
    print_table(results, root, base)
    return 0


def print_table(results: dict, root: Path, base) -> None:
    baseline = results.get(BASELINE)
    print(f"\nfrozen {base.backbone}, {base.frozen_epochs} head epochs, lr {base.learning_rate}; "
          f"{len(next(iter(results.values()))['folds'])} folds; micro-F1 at the best global threshold")
    print("| head | policy | size | fold micro-F1 | mean of folds | OOF | vs avg/stretch/224: mean [95% CI] |"
          " embed s |")
    print("|---|---|---|---|---|---|---|---|")
    differences = {}  # "head/policy/size" -> (mean, low, high) for the chart, baseline left out, table order
    for (head, policy, size), row in sorted(results.items(), key=lambda kv: -kv[1]["oof"]):
        if baseline is not None:
            mean, low, high = fold_paired(np.subtract(row["folds"], baseline["folds"]))
            paired = f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]"
            if (head, policy, size) != BASELINE:
                differences[f"{head}/{policy}/{size}"] = (mean, low, high)
        else:
            paired = "-"
        timing = root / "rows" / f"embed_{policy}_{size}.json"
        seconds = f"{atomic.read_json(timing)['seconds']:.0f}" if timing.exists() else "-"
        print(f"| {head} | {policy} | {size} | {' '.join(f'{f:.4f}' for f in row['folds'])} | "
              f"{np.mean(row['folds']):.4f} | {row['oof']:.4f} | {paired} | {seconds} |")
    if differences:
        print(f"plot: {compare_members.plot_differences(root / 'vs_baseline.png', differences, '/'.join(BASELINE))}")
    best = max(results.items(), key=lambda kv: kv[1]["oof"])
    print(f"\nbest row (a maximum over {len(results)} candidates on these folds, so optimistic): "
          f"{' / '.join(best[0])}, OOF {best[1]['oof']:.4f}")


if __name__ == "__main__":
    sys.exit(main())
