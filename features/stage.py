"""The features stage: check that every member's OOF and test tables can be stacked (same ids,
labels and folds as the run) before any stacker fits. The stack stage loads its inputs through
load_member_stacks, so both stages apply the same checks."""
from __future__ import annotations

import numpy as np

from fashion_stack.core import atomic, predictions
from fashion_stack.core.context import StageContext
from fashion_stack.core.rundir import DONE, derived_stage, upstream_digest
from fashion_stack.datasets.folds import read_folds
from fashion_stack.datasets.manifest import POOLS, ManifestDigests, pool_ids, pool_labels, read_manifest, test_ids
from fashion_stack.features.stacker_inputs import StackerInputError, join_members

def member_prediction_files(ctx: StageContext) -> list:
    """Every configured member's oof.parquet and test.parquet: what stacking reads."""
    return [ctx.run.member_dir(m.name) / f"{kind}.parquet" for m in ctx.config.members for kind in ("oof", "test")]


def member_units(ctx: StageContext) -> list:
    """(member folder, "members") for every configured member: the upstream units stacking reads."""
    return [(ctx.run.member_dir(m.name), "members") for m in ctx.config.members]


def member_lineage(ctx: StageContext, manifest=None) -> dict:
    """What every stage above the members reads from them, as digests (core.lineage): each
    configured member's recorded hash (refused, naming it, while the member is unfinished or
    damaged) and the labels of the pool, the truth stackers and decision rules are fitted on."""
    inputs = {f"member {m.name}": upstream_digest(ctx.run.member_dir(m.name), "members") for m in ctx.config.members}
    inputs["pool labels"] = pool_labels_digest(ctx, manifest)
    return inputs


def pool_labels_digest(ctx: StageContext, manifest=None) -> str:
    """Digest of the labels of the pool's usable images (in pool order), from the run's manifest
    (`manifest`: the manifest table already read, else read here)."""
    manifest = read_manifest(ctx.run.manifest) if manifest is None else manifest
    pool = ctx.config.data.pool
    return ManifestDigests(manifest).labels(pool_ids(manifest, pool), POOLS[pool])


@derived_stage("features", inputs=lambda ctx: member_prediction_files(ctx) + [ctx.run.folds, ctx.run.manifest],
               outputs=lambda ctx: [], upstream=member_units)
def run_features(ctx: StageContext) -> dict:
    """Check that the members' predictions can be stacked; the counts are this stage's summary
    (stages/features/DONE.json). The features themselves are each stacker's own (its settings,
    e.g. n_context, choose them), built when it fits."""
    oof_stack, test_stack = load_member_stacks(ctx)
    ctx.logger("features").info("stacker inputs: %d members, %d pool rows, %d test rows",
                                len(oof_stack.member_names), len(oof_stack), len(test_stack))
    return {"members": len(oof_stack.member_names), "member_names": list(oof_stack.member_names),
            "oof_rows": len(oof_stack), "test_rows": len(test_stack)}


def load_member_stacks(ctx: StageContext, manifest=None) -> tuple:
    """(OOF stack over the pool in folds.csv order, test stack over the usable test ids), every
    configured member joined by imageId and checked against the run's ids and folds hash."""
    members = [m.name for m in ctx.config.members]
    if not members:
        raise StackerInputError("config has no members; the stacker needs at least one")
    label_space = ctx.label_space()
    hashes = {name: member_folds_hash(ctx, name) for name in members}
    stacks = []
    pool = read_folds(ctx.run.folds).index
    manifest = read_manifest(ctx.run.manifest) if manifest is None else manifest
    for kind, ids in (("oof", pool), ("test", test_ids(manifest))):
        tables = {name: predictions.read(ctx.run.member_dir(name) / f"{kind}.parquet") for name in members}
        stacks.append(join_members(tables, label_space.label_ids, hashes, expected_ids=list(ids),
                                   expected_folds_hash=ctx.run.folds_hash(),
                                   label_groups=label_space.groups))
    return tuple(stacks)


def member_folds_hash(ctx: StageContext, member: str):
    """The folds hash that the member's unit DONE.json files record (one, or an error)."""
    member_dir = ctx.run.member_dir(member)
    markers = sorted(member_dir.glob(f"fold*/{DONE}"))
    if not markers:
        raise StackerInputError(f"member {member!r} has no {DONE} under {member_dir}; run the members stage first")
    hashes = {atomic.read_json(marker).get("folds_hash") for marker in markers}
    if len(hashes) > 1:
        raise StackerInputError(f"member {member!r}: its folds were trained under different folds hashes "
                                f"{sorted(map(str, hashes))}; redo the members stage")
    return hashes.pop()


def pool_truth(ctx: StageContext, image_ids, manifest=None) -> np.ndarray:
    """Multi-hot truth (images, labels) uint8 for `image_ids`, from the run's manifest."""
    manifest = read_manifest(ctx.run.manifest) if manifest is None else manifest
    return pool_labels(manifest, list(image_ids), ctx.label_space(), ctx.config.data.pool)
