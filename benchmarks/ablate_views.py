"""Views of the photo as stack members (issue 21): a probe on each frozen member's embeddings,
stacked, against the best single probe and against the plain probe on every view concatenated,
on the pipeline's own folds.

    python -m benchmarks.ablate_views --config configs/ccp.yaml --data-dir ../shared/data/ccp \
        --run-dir RUN [--views mobilenetv2_frozen,mobilenet_frozen,...] [--plain mobilenetv2_frozen,mobilenet_frozen]

Reads the frozen members' embedding caches of the run (computing those that are missing, as the
members stage does), so after a pipeline run it costs only the probes (seconds each). Rows:
- each view's probe (models.probe.fit_probe, the probe member's own fit, C by inner CV),
- the plain probe: one probe on the --plain views' embeddings concatenated (what a user writes
  first; by default the two whole-photo trunks),
- the views' probes stacked by the mean of their log-odds and by the linear stacker (5-fold
  second level inside each training part: nested, like the stack stage).
Scores: pooled micro-F1 with a global threshold chosen on the other folds (nested; the
project's threshold grid, core.metrics.best_global_threshold), and each
row's fold-paired difference against the plain probe (mean and 95% t interval over the k folds).
The stacked rows are two candidates: the better of them is a maximum over two.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from fashion_stack.core.metrics import best_global_threshold, logit, micro_f1
from fashion_stack.ensemble.comparison import fold_paired
from fashion_stack.ensemble.stackers.base import make_stacker
from fashion_stack.models.plan import resolve_plan
from fashion_stack.models.probe import fit_probe, probe_features
from fashion_stack.models.stage import _embeddings, load_stage_data

def nested_global(y: np.ndarray, probs: np.ndarray, fold: np.ndarray) -> tuple:
    """(pooled micro-F1, per-fold micro-F1s): each fold's threshold chosen on the other folds."""
    chosen = np.zeros(y.shape, bool)
    for k in np.unique(fold):
        train, held = fold != k, fold == k
        threshold, _ = best_global_threshold(y[train], probs[train])
        chosen[held] = probs[held] >= threshold
    return micro_f1(y, chosen), [micro_f1(y[fold == k], chosen[fold == k]) for k in np.unique(fold)]


def probe_oof(tables, ids, y, fold, member) -> np.ndarray:
    features = probe_features(tables, [f"pool:{i}" for i in ids])
    out = np.zeros(y.shape, np.float32)
    for k in np.unique(fold):
        train, held = fold != k, fold == k
        model = fit_probe(features[train], y[train], member.probe_c, member.probe_inner_folds, 0)
        out[held] = model.predict(features[held])
    return out


def stacked_oof(members: list, y, fold, stacker: str) -> np.ndarray:
    probs = np.stack(members, axis=1)
    out = np.zeros(y.shape, np.float32)
    for k in np.unique(fold):
        train, held = fold != k, fold == k
        out[held] = make_stacker(stacker).fit(probs[train], y[train]).predict_proba(probs[held])
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/ccp.yaml")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--views", default="", help="frozen members (default: every frozen member of the config)")
    parser.add_argument("--plain", default="mobilenetv2_frozen,mobilenet_frozen",
                        help="the views the plain probe concatenates")
    args = parser.parse_args(argv)

    from fashion_stack import pipeline as run_pipeline  # top floor: the pipeline's prepare and folds
    common = ["--config", args.config, "--data-dir", args.data_dir, "--run-dir", args.run_dir]
    if run_pipeline.main(common + ["--stages", "prepare,folds"]) != 0:
        return 2
    ctx = run_pipeline.build_context(run_pipeline.parse_args(common))
    data = load_stage_data(ctx)
    frozen = {m.name: m for m in ctx.config.members if m.mode == "frozen"}
    views = args.views.split(",") if args.views else list(frozen)
    plain = args.plain.split(",")
    unknown = sorted(set(views + plain) - set(frozen))
    if unknown:
        parser.error(f"{unknown} are not frozen members of {args.config}; frozen members: {sorted(frozen)}")
    probe_settings = next((m for m in ctx.config.members if m.mode == "probe"), None) or frozen[views[0]]
    ids = list(data.pool)
    y = data.labels(ids)
    fold = data.fold_of.reindex(ids).to_numpy().astype(int)
    tables = {name: _embeddings(resolve_plan(frozen[name], ctx.config), data,
                                ctx.run.member_dir(name) / "embeddings", redo=False) for name in set(views + plain)}
    rows = {}
    for name in views:
        start = time.perf_counter()
        rows[f"probe {name}"] = probe_oof([tables[name]], ids, y, fold, probe_settings)
        print(f"probe {name}: {time.perf_counter() - start:.1f} s", flush=True)
    rows[f"plain probe ({' + '.join(plain)})"] = probe_oof([tables[n] for n in plain], ids, y, fold, probe_settings)
    singles = [rows[f"probe {name}"] for name in views]
    logits = np.mean([logit(p) for p in singles], axis=0)
    rows["views stacked: mean"] = (1 / (1 + np.exp(-logits))).astype(np.float32)
    rows["views stacked: linear"] = stacked_oof(singles, y, fold, "linear")

    reference_name = f"plain probe ({' + '.join(plain)})"
    reference = nested_global(y, rows[reference_name], fold)
    best_single = max(views, key=lambda n: nested_global(y, rows[f"probe {n}"], fold)[0])
    print(f"\n{len(ids)} pool photos, {len(np.unique(fold))} folds; nested global threshold\n")
    print(f"{'row':58} {'micro-F1':>8}  {'folds':24} {'vs plain probe, fold-paired':>30}")
    for name, probs in rows.items():
        score, per_fold = nested_global(y, probs, fold)
        mean, low, high = fold_paired([a - b for a, b in zip(per_fold, reference[1])])
        versus = "" if name == reference_name else f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]"
        print(f"{name:58} {score:8.4f}  {' / '.join(f'{s:.4f}' for s in per_fold):24} {versus:>30}")
    best = nested_global(y, rows[f"probe {best_single}"], fold)
    for stacker in ("mean", "linear"):
        score, per_fold = nested_global(y, rows[f"views stacked: {stacker}"], fold)
        mean, low, high = fold_paired([a - b for a, b in zip(per_fold, best[1])])
        print(f"views stacked ({stacker}) vs the best view's probe ({best_single}): {mean:+.4f} [{low:+.4f}, {high:+.4f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
