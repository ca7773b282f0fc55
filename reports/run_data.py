"""Readers for the run artifacts that the submit, compare, ablate and report stages share:
manifest, folds, label-set CSVs (decision/*_labels.csv) and true label matrices, all joined by
imageId, never by row position. Manifest and folds are read by the datasets floor's own readers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fashion_stack.core.labels import LabelSpace
from fashion_stack.core.rundir import RunDir
from fashion_stack.datasets import folds as folds_io
from fashion_stack.datasets import manifest as manifest_io
from fashion_stack.datasets.images import USABLE_STATUSES as USABLE
from fashion_stack.datasets.manifest import label_frequencies  # noqa: F401  (re-exported for the report sections)
from fashion_stack.ensemble.comparison import BEST_MEMBER_RULE, best_member, member_scores  # noqa: F401  (one definition)
from fashion_stack.ensemble.decide_stage import read_label_sets  # noqa: F401  (re-exported for the report sections)


class RunDataError(ValueError):
    """A run artifact that is missing or does not match the others; the message names the file."""


def read_manifest(run: RunDir) -> pd.DataFrame:
    return manifest_io.read_manifest(run.manifest)


def read_folds(run: RunDir) -> pd.Series:
    """fold (int) indexed by imageId (str), checked against folds.csv.sha256."""
    return folds_io.read_folds(run.folds)


def true_labels(manifest: pd.DataFrame, image_ids, label_space: LabelSpace, pool: str) -> np.ndarray:
    """Multi-hot truth of stacking-pool ids in `image_ids` order, from the manifest's labels column."""
    return manifest_io.pool_labels(manifest, list(image_ids), label_space, pool)



# ---- the run's headline figures, one definition each, shared by the last screen, compare, ablate
# and the report ---------------------------------------------------------------------------------

def floor_check(run: RunDir, metric: str = "micro", among=None) -> list:
    """Warnings (one line each) when the run does not beat the frequency floor
    (report/frequency_floor.json, written by compare): the honest headline (or, when the outer loop
    did not run, the chosen candidate's nested-CV score), then each member that scores below it."""
    from fashion_stack.core import atomic
    floor_path = run.report_dir / "frequency_floor.json"
    if not floor_path.exists():
        return []
    floor = float(atomic.read_json(floor_path)["oof"])
    warnings = []
    headline = headline_score(run)
    if headline is not None and headline[0] <= floor:
        warnings.append(f"WARNING: the {headline[1]} {metric}-F1 {headline[0]:.4f} does not clear the frequency "
                        f"floor {floor:.4f} (margin {headline[0] - floor:+.4f}): the ensemble does no better than "
                        "giving every image the most frequent labels")
    for name, score in member_scores(run, metric, among).items():
        if score <= floor:
            warnings.append(f"WARNING: member {name} scores {metric}-F1 {score:.4f} even at its best threshold, "
                            f"below the frequency floor {floor:.4f} (margin {score - floor:+.4f}); it has not "
                            "learnt (more epochs, a larger image size or pretrained weights)")
    return warnings


def headline_score(run: RunDir):
    """(score, what it is) of the run's headline: the outer loop's honest score of the chosen
    (source, rule) in the decision metric, else the chosen candidate's nested-CV score; None
    before the decide stage."""
    from fashion_stack.core import atomic
    path = run.decision_dir / "rule.json"
    if not path.exists():
        return None
    rule = atomic.read_json(path)
    metric = rule.get("metric", "micro")
    honest = rule.get("honest") or {}
    if honest.get("method") is not None and honest.get(f"{metric}_f1") is not None:
        return float(honest[f"{metric}_f1"]), "honest headline"
    if rule.get("score") is not None:
        return float(rule["score"]), "chosen candidate's nested-CV (optimistic: the outer loop did not run)"
    return None


def floor_margin(run: RunDir):
    """(floor, headline - floor) or None: what the summary states whether or not it warns."""
    from fashion_stack.core import atomic
    floor_path = run.report_dir / "frequency_floor.json"
    headline = headline_score(run)
    if not floor_path.exists() or headline is None:
        return None
    floor = float(atomic.read_json(floor_path)["oof"])
    return floor, headline[0] - floor
