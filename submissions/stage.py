"""The submit stage: decision/test_labels.csv -> <run>/submission.csv, validated."""
from __future__ import annotations

import numpy as np

from fashion_stack.core.context import StageContext
from fashion_stack.core.metrics import MAX_LABELS
from fashion_stack.core.rundir import derived_stage
from fashion_stack.datasets.images import USABLE_STATUSES as USABLE
from fashion_stack.datasets.manifest import label_frequencies, labelled_usable, read_manifest
from fashion_stack.ensemble.decide_stage import read_label_sets
from fashion_stack.submissions.score import score_submission
from fashion_stack.submissions.writer import write_submission

SOLUTION_FILE = "test_solution.csv"


class SubmissionInputError(ValueError):
    """The decision's label sets do not cover the test images the submission needs."""


@derived_stage("submit", inputs=lambda ctx: [ctx.run.decision_dir / "test_labels.csv", ctx.run.manifest,
                                             ctx.data_dir / SOLUTION_FILE],
               outputs=lambda ctx: [ctx.run.submission], config_sections=("decision",),
               upstream=lambda ctx: [(ctx.run.decision_dir, "decide")])
def run_submit(ctx: StageContext) -> dict:
    log = ctx.logger("submit")
    manifest = read_manifest(ctx.run.manifest)
    label_space = ctx.label_space()
    decided = read_label_sets(ctx.run.decision_dir / "test_labels.csv")
    test_rows = manifest[manifest["split"] == "test"]  # the manifest keeps test.json's order
    usable = test_rows["status"].isin(USABLE)
    undecided = [i for i in test_rows.loc[usable, "imageId"] if i not in decided]
    if undecided:
        raise SubmissionInputError(
            f"{ctx.run.decision_dir / 'test_labels.csv'} has no labels for {len(undecided)} usable test "
            f"image(s), e.g. {undecided[:10]}; rerun with --redo decide")
    unusable = [i for i in test_rows.loc[~usable, "imageId"] if i not in decided]
    label_sets = dict(decided)
    fallback = []
    if unusable:
        fallback = fallback_labels(manifest, label_space, ctx.config.decision.min_labels,
                                   ctx.config.decision.max_labels)
        label_sets.update({image_id: fallback for image_id in unusable})
        log.warning("%d test image(s) missing or unreadable got the fallback labels %s: %s",
                    len(unusable), " ".join(fallback), ", ".join(unusable[:10]))
    path = write_submission(ctx.run.submission, list(test_rows["imageId"]), label_sets, label_space,
                            ctx.config.decision.min_labels, ctx.config.decision.max_labels)
    log.info("wrote %s (%d rows, valid)", path, len(test_rows))
    summary = {"rows": len(test_rows), "path": str(path), "fallback_rows": unusable, "fallback_labels": fallback}
    solution = ctx.data_dir / SOLUTION_FILE
    if solution.exists():  # the demo ships its hidden test labels: score like the leaderboard would
        scores = score_submission(path, solution)
        summary.update(test_micro_f1=scores["micro_f1"], test_samples_f1=scores["samples_f1"])
        log.info("scored against %s: micro-F1 %.4f, sample-F1 %.4f", solution, scores["micro_f1"], scores["samples_f1"])
    return summary


def fallback_labels(manifest, label_space, min_labels: int = 1, max_labels: int = MAX_LABELS) -> list:
    """The most frequent training labels, as many as the median training cardinality (rounded
    down): the best constant guess for an image we cannot see."""
    labelled = labelled_usable(manifest)
    if labelled.empty:
        raise SubmissionInputError("the manifest has no usable labelled image to derive fallback labels from")
    cardinality = int(np.floor(np.median(labelled["labels"].str.split().str.len())))
    k = min(max(cardinality, min_labels), max_labels)
    counts = label_frequencies(manifest, label_space)
    # stable sort: ties keep label-space order, so the fallback is deterministic
    ranked = counts.sort_values(ascending=False, kind="stable")
    return list(ranked.index[:k])
