"""The stackers' 5-fold cost and quality against the naive per-label recipe, same run: the
averages, linear, per-label XGBoost (with and without label context), the long-format XGBoost
(each image's top-48 rows, and every image x label row) and the Keras grid stacker.

    python -m benchmarks.bench_stacker [--rows 10000] [--members 4] [--folds 5] [--naive-labels 12]
                                       [--variants xgboost,xgboost_long,grid_cnn,naive]

Data: synthetic but shaped like the real thing. Label sets are drawn from the real iMaterialist 2018
validation statistics embedded in datasets/resources/label_stats.json (a category by its real
frequency, then each group's label count and labels from their real frequencies given that
category), so labels are correlated as in the competition. Members are noisy views of the truth of
different quality, with errors partly shared between members (they see the same images) and a pull
towards each label's prior.

Each variant runs 5-fold second-level OOF in its own process, which reports its wall time and
peak resident memory (ru_maxrss, whole process). The naive recipe (one XGBoost per label on all
labels x members columns, the same rounds, depth and rate as XGBoostStacker, no early stopping, default 256 bins) is timed on --naive-labels labels spread
over the frequency range and extrapolated linearly to every label; its F1 is compared with the
others' on those same labels.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fashion_stack.core.labels import LabelSpace
from fashion_stack.core.metrics import best_global_threshold, micro_f1
from fashion_stack.datasets.derive_label_stats import LABEL_MAP, LABEL_STATS
from fashion_stack.datasets.folds import assign_folds

MEMBER_QUALITY = (1.0, 1.4, 1.8, 2.2)  # logit separation of positives from negatives, per member
SHARED_ERROR = 0.5  # share of a member's noise variance common to all members
NOISE = 1.3
PRIOR_PULL = 0.7  # members lean towards each label's base rate
VARIANTS = {
    "mean": ("mean", {}),
    "weighted": ("weighted", {}),
    "linear": ("linear", {}),
    "xgboost, no label context": ("xgboost", {"n_context": 0}),
    "xgboost (fast, default)": ("xgboost", {}),
    "xgboost_long (one model, each image's top-48 rows, default)": ("xgboost_long", {}),
    "xgboost_long (one model, all image x label rows)": ("xgboost_long", {"candidates": 0}),
    "grid_cnn (Keras, members x labels grid)": ("grid_cnn", {}),
}
NAIVE = "naive: xgboost on all columns"


def sample_truth(n: int, rng: np.random.Generator) -> tuple:
    """(multi-hot (n, 228) uint8, LabelSpace) drawn from the real per-category label statistics."""
    space = LabelSpace.from_csv(LABEL_MAP)
    stats = json.loads(LABEL_STATS.read_text())
    overall = np.array([stats["label_counts"].get(lid, 0) for lid in space.label_ids], dtype=float)
    categories = [c for c in stats["by_category"] if stats["by_category"][c]["n_images"] > 0]
    weights = np.array([stats["by_category"][c]["n_images"] for c in categories], dtype=float)
    groups = np.array(space.groups)
    y = np.zeros((n, len(space)), dtype=np.uint8)
    for i, category in enumerate(rng.choice(categories, size=n, p=weights / weights.sum())):
        cat_stats = stats["by_category"][category]
        counts = np.array([cat_stats["label_counts"].get(lid, 0) for lid in space.label_ids], dtype=float)
        label_probs = counts + 5.0 * overall / overall.sum()  # smoothed towards the overall rates
        for group in space.group_names():
            hist = np.array(cat_stats["group_count_histograms"].get(group, [1]), dtype=float)
            cols = np.flatnonzero(groups == group)
            count = min(rng.choice(len(hist), p=hist / hist.sum()), len(cols))
            if group == "category":
                y[i, space.index_of(category)] = 1
            elif count:
                p = label_probs[cols] / label_probs[cols].sum()
                y[i, rng.choice(cols, size=count, replace=False, p=p)] = 1
    return y, space


def member_probs(y: np.ndarray, n_members: int, rng: np.random.Generator) -> np.ndarray:
    prior = np.clip(y.mean(axis=0), 1e-4, 1 - 1e-4)
    prior_logit = np.log(prior / (1 - prior))
    shared = rng.normal(size=y.shape)
    signs = 2.0 * y - 1.0
    probs = np.empty((y.shape[0], n_members, y.shape[1]), dtype=np.float32)
    for m in range(n_members):
        own = rng.normal(size=y.shape)
        noise = NOISE * (np.sqrt(SHARED_ERROR) * shared + np.sqrt(1 - SHARED_ERROR) * own)
        quality = MEMBER_QUALITY[m % len(MEMBER_QUALITY)] * (1 + 0.1 * (m // len(MEMBER_QUALITY)))
        probs[:, m, :] = 1 / (1 + np.exp(-(quality * signs + PRIOR_PULL * prior_logit + noise)))
    return probs


def naive_labels(y: np.ndarray, count: int) -> np.ndarray:
    """`count` labels evenly spaced over the frequency ranking of labels that occur."""
    present = np.flatnonzero(y.sum(axis=0) > 0)
    ranked = present[np.argsort(-y[:, present].sum(axis=0), kind="stable")]
    return np.sort(ranked[np.linspace(0, ranked.size - 1, count).round().astype(int)])


# --- children: one variant per process, so each peak-memory figure is its own -------------------

def run_variant(data_path: Path, variant: str, out_path: Path) -> dict:
    data = np.load(data_path)
    probs, y, folds, subset = data["probs"], data["y"], data["folds"], data["subset"]
    started = time.perf_counter()
    if variant == NAIVE:
        oof, fallbacks = naive_oof(probs, y, folds, subset), []
    else:
        from fashion_stack.ensemble.stacking import second_level_oof
        from fashion_stack.features.stacker_inputs import MemberStack
        name, params = VARIANTS[variant]
        stack = MemberStack(tuple(map(str, range(len(y)))), tuple(f"m{k}" for k in range(probs.shape[1])),
                            tuple(map(str, range(y.shape[1]))), probs)
        records = []
        oof = second_level_oof(name, params, stack, y, folds, records)
        fallbacks = records[-1]["fallback_labels"]
    seconds = time.perf_counter() - started
    np.save(out_path, oof)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    # CPU seconds next to the wall time: on a shared machine the wall time also counts the others' load
    return {"seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "peak_rss_mb": usage.ru_maxrss / 1024, "fallback_labels": len(fallbacks)}


def naive_oof(probs: np.ndarray, y: np.ndarray, folds: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """One XGBoost per label on every label x member column; only `labels` are fitted. Parallel
    the same way as the fast stacker (n_jobs labels at a time, one thread each), so the ratio
    measures the recipe, not thread contention."""
    from concurrent.futures import ThreadPoolExecutor

    from fashion_stack.ensemble.stackers import XGBoostStacker
    cfg = XGBoostStacker()
    X = probs.reshape(len(probs), -1)
    oof = np.zeros(y.shape, dtype=np.float32)
    for fold in np.unique(folds):
        train = folds != fold
        chunks = [labels[k::cfg.n_jobs] for k in range(cfg.n_jobs)]
        with ThreadPoolExecutor(cfg.n_jobs) as pool:
            for chunk, predicted in zip(chunks, pool.map(
                    lambda chunk: _naive_fits(X[train], y[train], X[~train], chunk, cfg), chunks)):
                oof[np.ix_(~train, chunk)] = predicted
    return oof


def _naive_fits(X_train, y_train, X_test, labels, cfg) -> np.ndarray:
    import xgboost as xgb
    params = {"objective": "binary:logistic", "tree_method": "hist", "max_depth": cfg.max_depth,
              "eta": cfg.learning_rate, "subsample": cfg.subsample, "colsample_bytree": cfg.colsample_bytree,
              "nthread": 1, "verbosity": 0}
    dtrain = xgb.QuantileDMatrix(X_train, y_train[:, labels[0]], nthread=1)  # binned once, relabelled
    out = np.empty((len(X_test), len(labels)), dtype=np.float32)
    for k, j in enumerate(labels):
        dtrain.set_label(y_train[:, j])
        out[:, k] = xgb.train(params, dtrain, num_boost_round=cfg.n_estimators).inplace_predict(X_test)
    return out


# --- parent -----------------------------------------------------------------------------------

def measure(data_path: Path, variant: str, workdir: Path) -> tuple:
    out_path = workdir / f"oof_{abs(hash(variant))}.npy"
    done = subprocess.run([sys.executable, "-m", "benchmarks.bench_stacker", "--child", variant,
                           "--data-file", str(data_path), "--out-file", str(out_path)],
                          capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"variant {variant!r} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), np.load(out_path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--naive-labels", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", help="comma-separated stacker names to run (default: all); "
                        "the naive recipe runs only when 'naive' is listed or no list is given")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--data-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_variant(args.data_file, args.child, args.out_file)))
        return 0
    rng = np.random.default_rng(args.seed)
    y, space = sample_truth(args.rows, rng)
    probs = member_probs(y, args.members, rng)
    folds = assign_folds(y, args.folds, args.seed, stratified=False)
    subset = naive_labels(y, args.naive_labels)
    print(f"{args.rows} rows x {args.members} members x {y.shape[1]} labels, {args.folds}-fold; "
          f"labels per image {y.sum(1).mean():.2f}; naive timed on {subset.size} labels "
          f"(positives {int(y[:, subset].sum(0).min())}..{int(y[:, subset].sum(0).max())})", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        data_path = Path(workdir) / "data.npz"
        np.savez(data_path, probs=probs, y=y, folds=folds, subset=subset)
        for variant in chosen_variants(args.variants):
            results[variant] = measure(data_path, variant, Path(workdir))
            print(f"  measured {variant}: {results[variant][0]['seconds']:.1f} s", flush=True)
    print_table(results, y, subset, args.folds)
    print_gain_over_mean(results, y, folds)
    return 0


def print_gain_over_mean(results: dict, y: np.ndarray, folds: np.ndarray, n_bootstrap: int = 1000) -> None:
    """Each variant's micro-F1 change against the mean with a 95% fold-paired bootstrap interval,
    on label sets thresholded honestly (each fold's global threshold chosen on the other folds)."""
    from fashion_stack.ensemble.comparison import paired_bootstrap_interval
    mean_variant = next((v for v in results if VARIANTS.get(v, ("",))[0] == "mean"), None)
    if mean_variant is None:
        return
    label_sets = {v: cv_threshold_labels(y, oof, folds) for v, (_, oof) in results.items() if v != NAIVE}
    reference = label_sets[mean_variant]
    print(f"\nmicro-F1 with each fold's threshold chosen on the other folds, change vs the mean, "
          f"95% fold-paired bootstrap ({n_bootstrap} resamples of images within folds)")
    print("| stacker | micro-F1 (CV threshold) | change vs mean | 95% interval | excludes 0 |")
    print("|---|---|---|---|---|")
    for variant, labels in label_sets.items():
        low, high = paired_bootstrap_interval(y, labels, reference, folds, "micro", n_bootstrap, seed=0)
        delta = micro_f1(y, labels) - micro_f1(y, reference)
        print(f"| {variant} | {micro_f1(y, labels):.4f} | {delta:+.4f} | [{low:+.4f}, {high:+.4f}] | "
              f"{'yes' if low > 0 or high < 0 else 'no'} |")


def cv_threshold_labels(y: np.ndarray, oof: np.ndarray, folds: np.ndarray) -> np.ndarray:
    predicted = np.zeros(y.shape, dtype=bool)
    for fold in np.unique(folds):
        held_out = folds == fold
        threshold, _ = best_global_threshold(y[~held_out], oof[~held_out])
        predicted[held_out] = oof[held_out] >= threshold
    return predicted


def chosen_variants(names) -> list:
    """Variants whose stacker name is listed ("naive" for the naive recipe); all without a list."""
    if not names:
        return [*VARIANTS, NAIVE]
    wanted = {name.strip() for name in names.split(",")}
    known = {stacker for stacker, _ in VARIANTS.values()} | {"naive"}
    if wanted - known:
        raise SystemExit(f"--variants: unknown {sorted(wanted - known)}; choose from {sorted(known)}")
    return [v for v, (stacker, _) in VARIANTS.items() if stacker in wanted] + ([NAIVE] if "naive" in wanted else [])


def print_table(results: dict, y: np.ndarray, subset: np.ndarray, n_folds: int) -> None:
    scale = y.shape[1] / subset.size
    naive_seconds = results[NAIVE][0]["seconds"] * scale if NAIVE in results else float("nan")
    # "@best": the one threshold best for the OOF rows scored, the same for every variant (in-sample,
    # so optimistic by the same small amount for all; the ranking between variants is what it shows)
    print(f"\n| stacker | {n_folds}-fold s | CPU s (process) | x faster than naive | peak RSS MB | micro-F1@best all labels | "
          f"micro-F1@best on the {subset.size} naive labels | fallback labels (last fold) |")
    print("|---|---|---|---|---|---|---|---|")
    for variant, (info, oof) in results.items():
        is_naive = variant == NAIVE
        seconds = naive_seconds if is_naive else info["seconds"]
        f1_all = "n/a (subset only)" if is_naive else f"{best_global_threshold(y, oof)[1]:.4f}"
        f1_subset = best_global_threshold(y[:, subset], oof[:, subset])[1]
        label = (f"{variant} (extrapolated x{scale:.1f} from {info['seconds']:.1f} s on {subset.size} labels)"
                 if is_naive else variant)
        cpu = info.get("cpu_seconds", float("nan")) * (scale if is_naive else 1.0)
        print(f"| {label} | {seconds:.1f} | {cpu:.0f} | {naive_seconds / seconds:.1f} | {info['peak_rss_mb']:.0f} | "
              f"{f1_all} | {f1_subset:.4f} | {info['fallback_labels']} |")


if __name__ == "__main__":
    sys.exit(main())
