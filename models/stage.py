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
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from fashion_stack.core import atomic, predictions
from fashion_stack.core.config import MemberConfig
from fashion_stack.core.executor import Resources, Task
from fashion_stack.core.lineage import digest
from fashion_stack.core.log import get_logger
from fashion_stack.core.process import peak_memory_mb, resident_memory_mb
from fashion_stack.core.metrics import score_probabilities
from fashion_stack.core.registry import ProcessCache, Registry
from fashion_stack.core.rundir import DONE, is_done, mark_done, read_done, upstream_digest
from fashion_stack.datasets.folds import read_folds
from fashion_stack.datasets.manifest import POOLS, ManifestDigests, manifest_labels, pool_ids, read_manifest, test_ids, usable
from fashion_stack.models.embeddings import HASHED_WHEN_SET, embedding_hash, member_embeddings
from fashion_stack.models.image_cache import image_cache
from fashion_stack.models.probe import LinearProbe, fit_probe, probe_features
from fashion_stack.models import probe as probe_model
from fashion_stack.models.plan import STRATEGY_NAMES, MemberPlan, PlanError, accumulation_steps, resolve_plan
# Keras (models.trainer, .devices, .tensorboard_logs) is imported inside the functions that train or
# predict, which run in a member's child process: the pipeline's own process plans the units and
# gathers their files without it (about 0.6 GB of TensorFlow it would otherwise hold beside a
# training child; tests/test_isolation.py checks it).

STARTED = "STARTED.json"
MODES = STRATEGY_NAMES  # the member config's `mode`: the name of its plan's strategy (STRATEGIES below)


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
    ctx.plan_units("members", len(ctx.selected_members()) * len(data.units))  # progress across members
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


# The member's hardware section changes how fast it trains, or where, but not what it learns:
# changing it under finished folds is not a reason to retrain (data_parallel does change the global
# batch, and so the learning rate; a fold finished on 8 GPUs is still a finished fold on 1). Two of
# its settings do change the numbers (float precision, the learning rate's scaling with replicas):
# they stay in the hash, at the top level where they were before the section existed, so runs
# finished before it keep their hashes.
HASHED_HARDWARE_FIELDS = ("mixed_precision", "lr_scaling")


def member_hash(member: MemberConfig, pool_name: str, label_ids, probed: list = ()) -> str:
    settings = {k: v for k, v in dataclasses.asdict(member).items()
                if k != "hardware" and not (k in HASHED_WHEN_SET and v is None)}
    settings.update({k: getattr(member.hardware, k) for k in HASHED_HARDWARE_FIELDS})
    # newer than the runs above, and it changes the numbers only when it splits a batch: hashed
    # then, so a member without accumulation (or with micro_batch_size = batch_size) keeps its hash
    if accumulation_steps(member) > 1:
        settings["micro_batch_size"] = member.hardware.micro_batch_size
    blob = {"member": settings, "pool": pool_name, "labels": list(label_ids)}
    if probed:  # a probe's inputs are other members' embeddings: their trunk settings are its settings
        blob["probed"] = [embedding_hash(m) for m in probed]
    return digest(blob)


# ---- one member ----------------------------------------------------------------------------


def run_member(ctx, member: MemberConfig, data: StageData, callbacks=()) -> dict:
    """Every unit of one member (finished ones skipped), then its member-level files.
    `callbacks` (Keras) join every fit: progress hooks, tests' interrupts."""
    try:
        plan = resolve_plan(member, ctx.config)  # once per member: every unit gets this plan
    except PlanError as err:
        raise MembersError(str(err)) from None
    strategy = STRATEGIES.get_entry(plan.strategy)
    log = ctx.logger("members")
    started = time.perf_counter()
    config_hash = member_hash(member, ctx.config.data.pool, data.label_space.label_ids,
                              probed_members(ctx.config, member))
    digests = ManifestDigests(data.manifest)
    redo = ctx.redo_stage("members")
    member_dir = ctx.run.member_dir(member.name)
    _discard_leftover_units(member_dir, data.units, log)
    member_files = [member_dir / name for name in ("oof.parquet", "test.parquet", "scores.json")]
    jobs = []
    for unit in data.units:
        unit_dir = member_dir / unit.name
        lineage = unit_lineage(digests, data, unit)
        if is_done(unit_dir, config_hash, data.folds_hash, redo=redo, inputs_hash=lineage):
            log.info("%s %s: done, skipped", member.name, unit.name)
            ctx.unit_skipped("members")
            continue
        for path in member_files + [member_dir / DONE]:  # stale the moment any unit retrains, even if this run dies
            path.unlink(missing_ok=True)
        _discard_foreign_partial(unit_dir, config_hash, data.folds_hash, redo, log, lineage)
        jobs.append(UnitJob(plan, unit, unit_dir, data, config_hash, lineage, ctx.run.root, ctx.config,
                            tuple(callbacks)))
    shared = strategy.shared_tasks(ctx, plan, data, member_dir, redo) if jobs else []
    if shared:  # what every unit reads (embeddings), made before the units
        ctx.plan_more_units("members", len(shared))
        ctx.run_units(shared)
    ctx.run_units([Task("members", f"{member.name}/{job.unit.name}", train_unit, (job,), plan.resources,
                        job.unit_dir / "unit.log", child=plan.child) for job in jobs])
    trained = len(jobs)
    # the member-level files follow from the units' recorded outputs and the pool's labels (scores)
    member_inputs = {"units": {unit.name: upstream_digest(member_dir / unit.name, "members") for unit in data.units},
                     "pool labels": digests.labels(data.pool, data.pool_splits)}
    if is_done(member_dir, config_hash, data.folds_hash, redo=redo, inputs_hash=member_inputs):
        # nothing they follow from changed: keep them (later stages follow their recorded hashes)
        scores = atomic.read_json(member_dir / "scores.json")
    else:
        scores = assemble_member(member, member_dir, data)
        mark_done(member_dir, config_hash, data.folds_hash, inputs_hash=member_inputs, artifacts=member_files)
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


def _discard_foreign_partial(unit_dir: Path, config_hash: str, folds_hash: str, redo: bool, log,
                             lineage: dict = None) -> None:
    """An unfinished unit resumes only if it was started under the same config, folds and inputs
    (lineage). A unit that has a DONE.json but is being rebuilt (its inputs changed, or an artifact
    failed its check) starts afresh: its checkpoints belong to the old inputs."""
    marker = unit_dir / STARTED
    started = {"config_hash": config_hash, "folds_hash": folds_hash, "inputs_hash": lineage}
    if unit_dir.exists() and (redo or (unit_dir / DONE).exists() or not marker.exists() or
                              _read_started(marker) != started):
        log.info("%s: discarding an unfinished unit started under other settings or inputs", unit_dir)
        shutil.rmtree(unit_dir)
    atomic.write_json(marker, started)


def _read_started(marker: Path):
    try:
        return atomic.read_json(marker)
    except (OSError, ValueError):  # a marker cut short by a kill: the partial unit is not trusted
        return None


def unit_lineage(digests: ManifestDigests, data: StageData, unit: Unit) -> dict:
    """What the unit reads (core.lineage): the labels of the ids it trains on and the image files
    it decodes (training, held-out and test ids). k-fold units also record their held-out ids'
    labels, since their DONE scores are the member's fold scores; regime b's one unit does not (the
    member scores its pool predictions at assembly), so a validation label edit re-scores the
    member without retraining a model on the 1M training images."""
    train_splits = data.pool_splits if unit.train_side == "pool" else ("train",)
    train_labels, train_images = digests.labels_and_images(unit.train_ids, train_splits)
    held_out_labels, held_out_images = digests.labels_and_images(unit.predict_ids, data.pool_splits)
    record = {"train labels": train_labels, "train images": train_images, "held-out images": held_out_images,
              "test images": digests.images(data.test, ("test",))}
    if unit.train_side == "pool":
        record["held-out labels"] = held_out_labels
    return record


def _embeddings(plan: MemberPlan, data: StageData, cache_dir: Path, redo: bool):
    needed = {(unit.train_side, i) for unit in data.units for i in unit.train_ids}
    needed |= {("pool", i) for unit in data.units for i in unit.predict_ids}
    ids = sorted(needed, key=str) + [("test", i) for i in data.test]
    keys = [f"{side}:{i}" for side, i in ids]
    paths = [data.path_of[side][i] for side, i in ids]
    # keyed by the images' content (the manifest's hashes), not their paths: a moved data dir keeps it
    digests, splits = ManifestDigests(data.manifest), {"pool": data.pool_splits, "train": ("train",), "test": ("test",)}
    content = digest([digests.images([i for s, i in ids if s == side], splits[side]) for side in ("pool", "train", "test")])
    return member_embeddings(plan.member, keys, paths, cache_dir, redo=redo, content=content, spec=plan.input)


@dataclass
class UnitJob:
    """Everything one (member, unit) needs, picklable, so any executor can run it anywhere that
    sees the run directory: the member's plan, not its config to re-derive it from."""
    plan: MemberPlan
    unit: Unit
    unit_dir: Path
    data: StageData
    config_hash: str
    lineage: dict
    run_root: Path
    config: object  # the PipelineConfig (TensorBoard settings)
    callbacks: tuple = ()

    @property
    def member(self) -> MemberConfig:
        return self.plan.member


def unit_resources(member: MemberConfig) -> Resources:
    """What a unit asks an executor for (Ray places it where these are free); a plan carries it."""
    return Resources(cpus=member.hardware.unit_cpus, gpus=member.hardware.unit_gpus)


def compute_embeddings_unit(plan: MemberPlan, data: StageData, cache_dir: Path, redo: bool) -> int:
    return len(_embeddings(plan, data, cache_dir, redo).image_ids)


HEAD_EMBEDDINGS = "head_embeddings"


def _head_embeddings(plan: MemberPlan, data: StageData, cache_dir: Path, redo: bool):
    """A fine-tuned member's pretrained-trunk embeddings of every image some unit trains on (not
    mirrored: the head fits on the images as they are), for head_init "embeddings"."""
    ids = sorted({(unit.train_side, i) for unit in data.units for i in unit.train_ids}, key=str)
    return member_embeddings(dataclasses.replace(plan.member, tta_flip=False), [f"{side}:{i}" for side, i in ids],
                             [data.path_of[side][i] for side, i in ids], cache_dir, redo=redo, spec=plan.input)


def compute_head_embeddings_unit(plan: MemberPlan, data: StageData, cache_dir: Path, redo: bool) -> int:
    return len(_head_embeddings(plan, data, cache_dir, redo).image_ids)


def probed_members(config, member: MemberConfig) -> list:
    """The members whose embeddings a probe member reads (config.validate checked the names)."""
    return [config.member(name) for name in member.probe_of] if member.mode == "probe" else []


def train_unit(job: UnitJob) -> dict:
    """One (member, unit), wherever an executor placed it: its devices are resolved there."""
    from fashion_stack.models.tensorboard_logs import training_log_callbacks
    plan = job.plan
    inputs = STRATEGIES.get_entry(plan.strategy).unit_inputs(job)
    callbacks = list(job.callbacks) + training_log_callbacks(job.run_root, plan.name, job.unit.name, job.config)
    try:
        return run_unit(plan, job.unit, job.unit_dir, job.data, job.config_hash, inputs, callbacks,
                        lineage=job.lineage)
    finally:
        release_models()


def release_models() -> None:
    """Drop what Keras keeps of a finished unit's model (its traced graphs and global state). Without
    it each unit's model stayed in the process: the four-member config's members stage grew by
    every backbone in turn (docs/RESULTS.md, issue 23: peak memory per stage)."""
    import ctypes
    import gc

    import keras
    keras.backend.clear_session()
    gc.collect()
    try:  # hand the freed heap back to the system (glibc keeps it otherwise; the next backbone's
        # allocations, of other sizes, then land beside it instead of in it)
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
    get_logger("members").info("unit's model released: resident memory %s MB (peak so far %s MB)",
                               resident_memory_mb(), peak_memory_mb())


_RESOURCES = ProcessCache("member resources", "the current member's placement and image cache, shared by its units")


def _resources_for(plan: MemberPlan, data: StageData, cache_root: Path, config_hash: str):
    # one placement and one image cache per member per process: the local loop's units share
    # them, and so do the units a Ray worker process runs one after another
    key = (plan.name, config_hash, str(cache_root))
    if key not in _RESOURCES:
        _RESOURCES.clear()  # the previous member's cache is not needed any more
        _RESOURCES[key] = member_resources(plan, data, cache_root)
    return _RESOURCES[key]


@dataclass
class MemberResources:
    """What every fine-tuning unit of a member shares: where it trains and its image cache."""
    placement: object  # models.devices.Placement
    cache: object  # a models.inputs image cache, or None


def member_resources(plan: MemberPlan, data: StageData, cache_root: Path) -> MemberResources:
    """Resolved once per member. The cache covers every image any unit trains on (all folds), so
    it is filled once and reused by every epoch and every fold; prediction is never cached."""
    from fashion_stack.models.devices import resolve_placement
    member, spec = plan.member, plan.input
    placement = resolve_placement(member)
    universe = sorted({data.path_of[unit.train_side][i] for unit in data.units for i in unit.train_ids})
    rows = usable(data.manifest)
    content_of = dict(zip(rows["path"], rows["sha256"]))  # the disk cache is named by its rows' contents
    cache = image_cache(member.hardware.cache, cache_root, universe, spec.size, spec.resize,
                        int(member.hardware.cache_budget_gb * 2**30),
                        contents=[content_of.get(path) or path for path in universe])
    get_logger("members").info(
        "%s trains on %d x %s (%s, XLA %s, %d step(s) per execution); image cache: %s", member.name,
        placement.replicas, placement.kind, placement.precision_policy, "on" if placement.jit_compile else "off",
        placement.steps_per_execution, cache if cache is not None else "none")
    return MemberResources(placement, cache)


def run_unit(plan: MemberPlan, unit: Unit, unit_dir: Path, data: StageData, config_hash: str,
             inputs=None, callbacks=(), lineage: dict = None) -> dict:
    """Train the unit's model (resuming) by the plan's strategy, predict its held-out ids and the
    test set, write its files, and mark it done last. `inputs`: what the strategy's unit_inputs
    gave (embeddings, or the member's placement and image cache)."""
    from fashion_stack.models import trainer
    started = time.perf_counter()
    member = plan.member
    where = f"{member.name} {unit.name}"
    seed = member.seed * 1000 + (unit.fold if isinstance(unit.fold, int) else 999)
    train_labels = data.labels(list(unit.train_ids), unit.train_side)
    strategy = STRATEGIES.get_entry(plan.strategy)
    fitted = strategy.fit_predict(plan, unit, unit_dir, data, train_labels, seed, where, inputs, callbacks)
    model_file = fitted.model_file or trainer.MODEL_FILE
    if isinstance(fitted.model, LinearProbe):
        fitted.model.save(unit_dir / model_file)
    else:
        trainer.save_model(fitted.model, unit_dir / model_file)
    label_ids = data.label_space.label_ids
    predictions.write(unit_dir / "oof.parquet", predictions.make_table(unit.predict_ids, fitted.oof, label_ids))
    predictions.write(unit_dir / "test.parquet", predictions.make_table(data.test, fitted.test, label_ids))
    history = trainer.read_history(unit_dir / trainer.HISTORY)
    scores = {"fold": unit.fold, **score_probabilities(data.labels(list(unit.predict_ids)), fitted.oof),
              "seconds": time.perf_counter() - started, "train_images_per_s": trainer.training_rate(history),
              **fitted.scores}
    trainer.remove_checkpoints(unit_dir)  # model.keras now holds the final weights
    mark_done(unit_dir, config_hash, data.folds_hash, inputs_hash=lineage,
              artifacts=["oof.parquet", "test.parquet", model_file], trained_ids=list(unit.train_ids),
              predicted_ids=list(unit.predict_ids), n_test=len(data.test), seconds=scores["seconds"], scores=scores,
              placement=fitted.placed)
    return scores


# ---- strategies: how a member's units learn (its plan's `strategy`, the config's `mode`) ------


@dataclass
class Fitted:
    """A unit's fitted model and its predictions, as a strategy returns them."""
    model: object
    oof: np.ndarray
    test: np.ndarray
    placed: dict  # where it trained (DONE.json's placement)
    model_file: Optional[str] = None  # None: a Keras model's (models.trainer.MODEL_FILE)
    scores: dict = dataclasses.field(default_factory=dict)  # the strategy's own entries in the unit's scores


EMBEDDINGS_PLACED = {"devices": 1, "kind": "embeddings", "precision": "float32"}


class Strategy:
    """The three steps of a member's run that depend on how it learns: what is computed once for
    all its units (shared_tasks, on the driver's executor), what a unit loads where it runs
    (unit_inputs), and the unit's fit and predictions (fit_predict)."""

    def shared_tasks(self, ctx, plan: MemberPlan, data: StageData, member_dir: Path, redo: bool) -> list:
        return []

    def unit_inputs(self, job: UnitJob):
        return None

    def fit_predict(self, plan: MemberPlan, unit: Unit, unit_dir: Path, data: StageData, train_labels, seed: int,
                    where: str, inputs, callbacks) -> Fitted:
        raise NotImplementedError


STRATEGIES = Registry("member strategy", name_attribute=None)  # plan.strategy -> Strategy


class FineTune(Strategy):
    """Trunk + head on images (models.trainer.train_finetune), on the member's placement."""

    def shared_tasks(self, ctx, plan, data, member_dir, redo):
        if plan.member.head_init != "embeddings":
            return []
        # LP-FT: one pass through the pretrained trunk for every unit's head
        return [Task("members", f"{plan.name}/head_embeddings", compute_head_embeddings_unit,
                     (plan, data, member_dir / HEAD_EMBEDDINGS, redo), plan.resources,
                     member_dir / "head_embeddings.log", child=plan.child)]

    def unit_inputs(self, job):
        from fashion_stack.models.devices import share_gpu
        share_gpu(job.plan.resources.gpus)
        return _resources_for(job.plan, job.data, job.run_root / "cache" / "images", job.config_hash)

    def fit_predict(self, plan, unit, unit_dir, data, train_labels, seed, where, inputs, callbacks):
        from fashion_stack.models import trainer
        member = plan.member
        resources = inputs or member_resources(plan, data, unit_dir / "cache")
        placement = resources.placement
        placed = {"devices": placement.replicas, "kind": placement.kind, "precision": placement.precision_policy,
                  "jit_compile": placement.jit_compile, "global_batch": member.batch_size * placement.replicas}
        head_embeddings = None
        if member.head_init == "embeddings":  # the members stage has made them: this reads the cache
            table = _head_embeddings(plan, data, unit_dir.parent / HEAD_EMBEDDINGS, redo=False)
            head_embeddings = table.rows([f"{unit.train_side}:{i}" for i in unit.train_ids])
        model = trainer.train_finetune(member, [data.path_of[unit.train_side][i] for i in unit.train_ids],
                                       train_labels, unit_dir, seed, where, callbacks, cache=resources.cache,
                                       placement=placement, head_embeddings=head_embeddings, spec=plan.input)
        predict = dict(batch_size=trainer.prediction_batch_size(member), tta_flip=member.tta_flip, reader=member.hardware.reader,
                       workers=member.hardware.reader_workers, replicas=placement.replicas, tta_scales=member.tta_scales)
        oof = trainer.predict_images(model, [data.path_of["pool"][i] for i in unit.predict_ids],
                                     desc=f"{where} oof", **predict)
        test = trainer.predict_images(model, [data.path_of["test"][i] for i in data.test],
                                      desc=f"{where} test", **predict)
        return Fitted(model, oof, test, placed, scores=_epoch_scores(member, unit_dir))


class Frozen(Strategy):
    """The trunk's embeddings once for every unit, then a head per unit on them."""

    def shared_tasks(self, ctx, plan, data, member_dir, redo):
        return [Task("members", f"{plan.name}/embeddings", compute_embeddings_unit,
                     (plan, data, member_dir / "embeddings", redo), plan.resources, member_dir / "embeddings.log",
                     child=plan.child)]

    def unit_inputs(self, job):  # the embeddings unit has made them: this reads the cache
        return _embeddings(job.plan, job.data, job.unit_dir.parent / "embeddings", redo=False)

    def fit_predict(self, plan, unit, unit_dir, data, train_labels, seed, where, inputs, callbacks):
        from fashion_stack.models import trainer
        member, embeddings = plan.member, inputs
        model = trainer.train_head(member, embeddings.rows([f"{unit.train_side}:{i}" for i in unit.train_ids]),
                                   train_labels, unit_dir, seed, where, callbacks)
        oof = _predict_frozen(model, member, embeddings, [f"pool:{i}" for i in unit.predict_ids])
        test = _predict_frozen(model, member, embeddings, [f"test:{i}" for i in data.test])
        return Fitted(model, oof, test, dict(EMBEDDINGS_PLACED), scores=_epoch_scores(member, unit_dir))


class Probe(Strategy):
    """A logistic regression per label on the probed frozen members' embeddings (models.probe)."""

    def shared_tasks(self, ctx, plan, data, member_dir, redo):
        # the probed members' caches (made already when they ran first)
        return [Task("members", f"{plan.name}/embeddings of {other.name}", compute_embeddings_unit,
                     (other, data, ctx.run.member_dir(other.name) / "embeddings", False),
                     other.resources, member_dir / f"embeddings_{other.name}.log", child=plan.child)
                for other in plan.probed]

    def unit_inputs(self, job):  # the probed members' caches, made before the units
        members_dir = job.unit_dir.parent.parent
        return [_embeddings(other, job.data, members_dir / other.name / "embeddings", redo=False)
                for other in job.plan.probed]

    def fit_predict(self, plan, unit, unit_dir, data, train_labels, seed, where, inputs, callbacks):
        member, embeddings = plan.member, inputs
        model = fit_probe(probe_features(embeddings, [f"{unit.train_side}:{i}" for i in unit.train_ids]),
                          train_labels, member.probe_c, member.probe_inner_folds, seed)
        oof = model.predict(probe_features(embeddings, [f"pool:{i}" for i in unit.predict_ids]))
        test = model.predict(probe_features(embeddings, [f"test:{i}" for i in data.test]))
        get_logger("members").info("%s: C %g chosen by the inner CV (mean log loss %s)", where, model.c,
                                   {c: round(v, 5) for c, v in model.inner_log_loss.items()})
        return Fitted(model, oof, test, {**EMBEDDINGS_PLACED, "kind": "probe (scikit-learn)"},
                      model_file=probe_model.MODEL_FILE, scores={"chosen_c": model.c})


def _epoch_scores(member: MemberConfig, unit_dir: Path) -> dict:
    """The epoch the inner split of the training folds chose, per phase (epoch_selection inner_split)."""
    from fashion_stack.models import trainer
    return {"chosen_epochs": trainer.chosen_epochs(unit_dir)} if member.epoch_selection != "fixed" else {}


STRATEGIES.add("finetune", FineTune())
STRATEGIES.add("frozen", Frozen())
STRATEGIES.add("probe", Probe())


def _predict_frozen(model, member: MemberConfig, embeddings, keys: list) -> np.ndarray:
    from fashion_stack.models import trainer
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
