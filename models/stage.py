"""The members stage: every selected member on every unit (fold), resumably, then the member's
out-of-fold table over exactly the pool, its test table (mean over the units' models) and scores.

Units, by config.data.pool:
  "train+validation" / "train" (regime a): fold<k> trains on the pool's other folds and predicts
  fold k and the test set.
  "validation" (regime b): one unit, fold_all, trains on every usable train image and predicts the
  whole pool (validation) and the test set; the stacker then runs k-fold over that pool.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core import atomic, predictions
from core.config import MemberConfig
from core.metrics import score_probabilities
from core.rundir import is_done, mark_done, read_done
from datasets.folds import read_folds
from datasets.manifest import POOLS, manifest_labels, pool_ids, read_manifest, test_ids, usable
from models import trainer
from models.embeddings import member_embeddings

STARTED = "STARTED.json"
MODES = ("finetune", "frozen")


class MembersError(RuntimeError):
    """Inputs the members stage cannot use (folds that do not match the pool, bad member config)."""


@dataclass(frozen=True)
class Unit:
    name: str  # "fold<k>" or "fold_all"
    fold: object  # int k, or "all"
    train_ids: tuple
    predict_ids: tuple
    train_side: str = "pool"  # "pool" (k-fold) or "train" (regime b); predictions are always "pool"


@dataclass
class StageData:
    """What every member's units read, loaded once."""
    manifest: pd.DataFrame
    label_space: object
    pool: list
    test: list
    units: list
    folds_hash: str
    path_of: dict  # side ("pool" | "train" | "test") -> imageId -> path; see _paths
    pool_splits: tuple = ("train", "validation")
    fold_of: object = None  # pd.Series: fold per pool imageId (folds.csv)

    def labels(self, image_ids, side: str = "pool") -> np.ndarray:
        splits = self.pool_splits if side == "pool" else ("train",)
        return manifest_labels(self.manifest, image_ids, self.label_space, splits=splits)


def run_members(ctx) -> dict:
    data = load_stage_data(ctx)
    summary = {}
    for member in ctx.selected_members():
        summary[member.name] = run_member(ctx, member, data)
    up_to_date = all(m["units_trained"] == 0 for m in summary.values())
    return {"members": summary, "units_per_member": len(data.units), "pool": len(data.pool), "test": len(data.test),
            "up_to_date": up_to_date}


def load_stage_data(ctx) -> StageData:
    cfg = ctx.config
    manifest = read_manifest(ctx.run.manifest)
    pool = pool_ids(manifest, cfg.data.pool)
    fold_of = read_folds(ctx.run.folds)
    if set(fold_of.index) != set(pool):
        extra, missing = sorted(set(fold_of.index) - set(pool)), sorted(set(pool) - set(fold_of.index))
        raise MembersError(f"{ctx.run.folds} does not cover the pool {cfg.data.pool!r} of {ctx.run.manifest} "
                           f"(ids only in folds.csv: {extra[:5]}, only in the pool: {missing[:5]}); "
                           "rerun with --redo folds")
    folds_hash = ctx.run.folds_hash()
    if folds_hash is None:
        raise MembersError(f"{ctx.run.folds}.sha256 is missing; rerun the folds stage (--redo folds)")
    rows = usable(manifest)
    train = list(rows.loc[rows["split"] == "train", "imageId"])
    units = plan_units(cfg.data.pool, pool, fold_of.reindex(pool).to_numpy(), train)
    return StageData(manifest, ctx.label_space(), pool, test_ids(manifest), units, folds_hash,
                     _paths(rows, POOLS[cfg.data.pool]), POOLS[cfg.data.pool], fold_of)


def plan_units(pool_name: str, pool: list, fold_of: np.ndarray, train_ids: list) -> list:
    """The (train ids, predicted ids) of every unit; predicted ids partition the pool."""
    if pool_name == "validation":
        if not train_ids:
            raise MembersError("data.pool is 'validation' but the manifest has no usable train images to train on")
        return [Unit("fold_all", "all", tuple(train_ids), tuple(pool), train_side="train")]
    pool_array = np.asarray(pool, dtype=object)
    return [Unit(f"fold{k}", int(k), tuple(pool_array[fold_of != k]), tuple(pool_array[fold_of == k]))
            for k in sorted(set(int(f) for f in fold_of))]


def _paths(rows: pd.DataFrame, pool_splits: tuple) -> dict:
    # the real competition reuses small integers as imageIds across train, validation and test:
    # look paths up per side (pool / train / test), never across them
    def side(splits):
        chosen = rows["split"].isin(splits)
        return dict(zip(rows.loc[chosen, "imageId"], rows.loc[chosen, "path"]))
    return {"pool": side(pool_splits), "train": side(("train",)), "test": side(("test",))}


def member_hash(member: MemberConfig, pool_name: str, label_ids) -> str:
    blob = {"member": dataclasses.asdict(member), "pool": pool_name, "labels": list(label_ids)}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---- one member ----------------------------------------------------------------------------


def run_member(ctx, member: MemberConfig, data: StageData, callbacks=()) -> dict:
    """Every unit of one member (finished ones skipped), then its member-level files.
    `callbacks` (Keras) join every fit: progress hooks, tests' interrupts."""
    if member.mode not in MODES:
        raise MembersError(f"member {member.name!r}: mode {member.mode!r}; use one of {MODES}")
    log = ctx.logger("members")
    started = time.perf_counter()
    config_hash = member_hash(member, ctx.config.data.pool, data.label_space.label_ids)
    redo = ctx.redo_stage("members")
    member_dir = ctx.run.member_dir(member.name)
    _discard_leftover_units(member_dir, data.units, log)
    member_files = [member_dir / name for name in ("oof.parquet", "test.parquet", "scores.json")]
    embeddings = None
    trained = 0
    for unit in data.units:
        unit_dir = member_dir / unit.name
        if is_done(unit_dir, config_hash, data.folds_hash, redo=redo):
            log.info("%s %s: done, skipped", member.name, unit.name)
            continue
        for path in member_files:  # stale the moment any unit retrains, even if this run dies
            path.unlink(missing_ok=True)
        _discard_foreign_partial(unit_dir, config_hash, data.folds_hash, redo, log)
        if member.mode == "frozen" and embeddings is None:
            embeddings = _embeddings(member, data, member_dir / "embeddings", redo)
        run_unit(member, unit, unit_dir, data, config_hash, embeddings, callbacks)
        trained += 1
    if trained == 0 and all(path.exists() for path in member_files):
        # nothing retrained: keep the member-level files (and their mtimes, which later stages
        # use to tell whether their inputs changed)
        scores = atomic.read_json(member_dir / "scores.json")
    else:
        scores = assemble_member(member, member_dir, data)
    return {"oof_micro_f1@best": scores["oof"]["micro_f1@best"], "seconds": time.perf_counter() - started,
            "units_trained": trained, "units_skipped": len(data.units) - trained}


def _fold_scores(unit_dirs: list, oof: pd.DataFrame, data: StageData) -> list:
    """Per-fold scores for the comparison. k-fold: each unit's own held-out scores. Regime b (one
    model predicts the whole pool): its pool predictions scored per folds.csv fold, so members
    still compare fold by fold on the folds the stacker uses."""
    if [unit.fold for unit in data.units] != ["all"]:
        return [read_done(d)["scores"] for d in unit_dirs]
    fold_of = data.fold_of.reindex(oof.index).to_numpy()
    truth = data.labels(list(oof.index))
    return [{"fold": int(k), **score_probabilities(truth[fold_of == k], oof.to_numpy()[fold_of == k])}
            for k in sorted(set(fold_of.tolist()))]


def _discard_leftover_units(member_dir: Path, units: list, log) -> None:
    """Unit folders of an earlier plan (more folds, another regime) would be read as this
    member's folds by later stages: remove them."""
    planned = {unit.name for unit in units}
    for folder in sorted(member_dir.glob("fold*")):
        if folder.is_dir() and folder.name not in planned:
            log.info("%s: removing %s, not a unit of the current folds", member_dir.name, folder.name)
            shutil.rmtree(folder)


def _discard_foreign_partial(unit_dir: Path, config_hash: str, folds_hash: str, redo: bool, log) -> None:
    """An unfinished unit resumes only if it was started under the same config and folds."""
    marker = unit_dir / STARTED
    if unit_dir.exists() and (redo or not marker.exists() or
                              atomic.read_json(marker) != {"config_hash": config_hash, "folds_hash": folds_hash}):
        log.info("%s: discarding an unfinished unit started under other settings", unit_dir)
        shutil.rmtree(unit_dir)
    atomic.write_json(marker, {"config_hash": config_hash, "folds_hash": folds_hash})


def _embeddings(member: MemberConfig, data: StageData, cache_dir: Path, redo: bool):
    needed = {(unit.train_side, i) for unit in data.units for i in unit.train_ids}
    needed |= {("pool", i) for unit in data.units for i in unit.predict_ids}
    ids = sorted(needed, key=str) + [("test", i) for i in data.test]
    keys = [f"{side}:{i}" for side, i in ids]
    paths = [data.path_of[side][i] for side, i in ids]
    return member_embeddings(member, keys, paths, cache_dir, redo=redo)


def run_unit(member: MemberConfig, unit: Unit, unit_dir: Path, data: StageData, config_hash: str,
             embeddings=None, callbacks=()) -> dict:
    """Train the unit's model (resuming), predict its held-out ids and the test set, write its
    files, and mark it done last."""
    started = time.perf_counter()
    where = f"{member.name} {unit.name}"
    seed = member.seed * 1000 + (unit.fold if isinstance(unit.fold, int) else 999)
    train_labels = data.labels(list(unit.train_ids), unit.train_side)
    if member.mode == "frozen":
        model = trainer.train_head(member, embeddings.rows([f"{unit.train_side}:{i}" for i in unit.train_ids]),
                                   train_labels, unit_dir, seed, where, callbacks)
        oof = _predict_frozen(model, member, embeddings, [f"pool:{i}" for i in unit.predict_ids])
        test = _predict_frozen(model, member, embeddings, [f"test:{i}" for i in data.test])
    else:
        model = trainer.train_finetune(member, [data.path_of[unit.train_side][i] for i in unit.train_ids],
                                       train_labels, unit_dir, seed, where, callbacks)
        oof = trainer.predict_images(model, member, [data.path_of["pool"][i] for i in unit.predict_ids],
                                     desc=f"{where} oof")
        test = trainer.predict_images(model, member, [data.path_of["test"][i] for i in data.test],
                                      desc=f"{where} test")
    trainer.save_model(model, unit_dir / trainer.MODEL_FILE)
    label_ids = data.label_space.label_ids
    predictions.write(unit_dir / "oof.parquet", predictions.make_table(unit.predict_ids, oof, label_ids))
    predictions.write(unit_dir / "test.parquet", predictions.make_table(data.test, test, label_ids))
    history = trainer.read_history(unit_dir / trainer.HISTORY)
    scores = {"fold": unit.fold, **score_probabilities(data.labels(list(unit.predict_ids)), oof),
              "seconds": time.perf_counter() - started, "train_images_per_s": trainer.training_rate(history)}
    shutil.rmtree(unit_dir / "phases", ignore_errors=True)  # model.keras now holds the final weights
    shutil.rmtree(unit_dir / "backup", ignore_errors=True)
    mark_done(unit_dir, config_hash, data.folds_hash, trained_ids=list(unit.train_ids),
              predicted_ids=list(unit.predict_ids), n_test=len(data.test), seconds=scores["seconds"], scores=scores)
    return scores


def _predict_frozen(model, member: MemberConfig, embeddings, keys: list) -> np.ndarray:
    mirrored = embeddings.rows(keys, mirrored=True) if member.tta_flip else None
    return trainer.predict_embeddings(model, embeddings.rows(keys), mirrored)


def assemble_member(member: MemberConfig, member_dir: Path, data: StageData) -> dict:
    """members/<m>/oof.parquet (the units' held-out tables: exactly the pool, each id once),
    test.parquet (mean of the units' test tables, joined by imageId) and scores.json."""
    label_ids = data.label_space.label_ids
    unit_dirs = [member_dir / unit.name for unit in data.units]
    oof = pd.concat([predictions.read(d / "oof.parquet", label_ids) for d in unit_dirs])
    duplicated = oof.index[oof.index.duplicated()].unique()
    if len(duplicated) or set(oof.index) != set(data.pool):
        raise MembersError(f"{member_dir}: the units' out-of-fold rows are not the pool, each once "
                           f"(duplicated {list(duplicated[:5])}); rerun with --redo members")
    oof = oof.loc[data.pool]
    tests = [predictions.read(d / "test.parquet", label_ids).loc[data.test] for d in unit_dirs]
    test = predictions.make_table(data.test, np.mean([t.to_numpy() for t in tests], axis=0), label_ids)
    predictions.write(member_dir / "oof.parquet", oof)
    predictions.write(member_dir / "test.parquet", test)
    scores = {"member": member.name,
              "folds": _fold_scores(unit_dirs, oof, data),
              "oof": score_probabilities(data.labels(data.pool), oof.to_numpy())}
    atomic.write_json(member_dir / "scores.json", scores)
    return scores
