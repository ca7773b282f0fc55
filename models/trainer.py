"""Training one fold of one member, resumably within minutes, and predicting with the result.

Fine-tuning runs in phases ("head" on the frozen trunk, then "top" or "all"); a finished phase
leaves its weights in phases/<phase>.weights.h5 and the next phase starts from them.

Resume: every `checkpoint_steps` steps and every `checkpoint_minutes` (and at each epoch's end)
the trainer writes checkpoint/<phase>.npz: every model variable (weights, BatchNorm statistics,
the augmentation and dropout RNG states), every optimizer variable (its step count drives the
learning-rate schedule) and the position (epoch, step in epoch). Each epoch's image order is a
permutation fixed by (seed, epoch) (models.inputs.epoch_order), so a resumed epoch skips the
batches already trained, without decoding them, and carries on with the same batches an
uninterrupted run would see. Keras's BackupAndRestore restores only at epoch boundaries, which at
a million images is hours of lost work.

The schedule is fixed (epochs and a cosine learning rate per phase), or, with member
epoch_selection "inner_split", each phase keeps the epoch with the lowest loss on an inner split of
the training folds and stops `patience` epochs after it (epoch_selection.csv records every epoch's
inner scores; the chosen epoch is the phase's lowest-loss row). Nothing here looks at the held-out
fold, so its predictions are honest out-of-fold predictions.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import keras
import numpy as np
import pandas as pd

from fashion_stack.core import atomic
from fashion_stack.core.config import MemberConfig
from fashion_stack.core.log import format_seconds, get_logger, progress
from fashion_stack.models.backbones import InputSpec, input_spec_of, is_pretrained, resolve_input_spec
from fashion_stack.models.devices import Placement, placement_scope, resolve_placement, scaled_learning_rate
from fashion_stack.models.heads import build_head_model, build_member_model, set_trainable
from fashion_stack.models.inputs import epoch_order, prediction_batches, steps_per_epoch, training_batches
from fashion_stack.models.losses import member_loss
from fashion_stack.models.plan import accumulation_steps
from fashion_stack.core.metrics import score_probabilities

HISTORY = "history.csv"
SELECTION = "epoch_selection.csv"
STEPS = "steps.csv"
MODEL_FILE = "model.keras"
CHECKPOINTS = "checkpoint"
log = get_logger("members")


class NonFiniteLossError(RuntimeError):
    """Training diverged; the fold stops and is not marked done."""


@dataclass(frozen=True)
class Phase:
    name: str  # "head" | "top" | "all" (what trains)
    epochs: int
    learning_rate: float


def finetune_phases(member: MemberConfig) -> list:
    """Pretrained: head on the frozen trunk, then the top blocks (or all) at the lower rate.
    From scratch there is nothing to protect: one phase, everything trains, all epochs."""
    if member.unfreeze not in ("top", "all"):
        raise ValueError(f"member {member.name!r}: unfreeze {member.unfreeze!r}; use top or all")
    if not is_pretrained(member.weights):
        return [Phase("all", member.head_epochs + member.finetune_epochs, member.learning_rate)]
    phases = [Phase("head", member.head_epochs, member.learning_rate),
              Phase(member.unfreeze, member.finetune_epochs, member.finetune_learning_rate)]
    if member.head_init == "embeddings":  # the head was fitted on cached embeddings (fit_head_on_embeddings)
        phases = phases[1:]
    return [p for p in phases if p.epochs > 0]


# A phase's data: (epoch, batches to skip) -> something Model.fit takes, for one epoch.
EpochData = Callable[[int, int], object]


# ---- checkpoints ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Position:
    epoch: int  # epochs of the phase fully trained before this one
    step: int  # steps of `epoch` already trained


def _state_arrays(model: keras.Model) -> list:
    return [np.asarray(keras.ops.convert_to_numpy(v)) for v in list(model.variables) + list(model.optimizer.variables)]


def save_checkpoint(model: keras.Model, path: Path, phase: str, position: Position, step_rows: list) -> None:
    """One file, written atomically: a kill during the write leaves the previous checkpoint."""
    arrays = _state_arrays(model)
    meta = {"phase": phase, "epoch": position.epoch, "step": position.step, "n_arrays": len(arrays),
            "shapes": [list(a.shape) for a in arrays], "saved_at": time.time()}
    with atomic.atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, meta=np.array(json.dumps(meta)), steps=np.array(json.dumps(step_rows)),
                     **{f"v{i}": a for i, a in enumerate(arrays)})


def restore_checkpoint(model: keras.Model, path: Path, phase: str, where: str) -> Optional[tuple]:
    """(Position, step rows) from a checkpoint of this phase, its state loaded into `model`
    (compiled, optimizer built); None, with the reason logged, when there is none or it does
    not fit this model (then the phase starts over: nothing is trusted without a check)."""
    if not path.exists():
        return None
    try:
        with np.load(path) as saved:
            meta = json.loads(str(saved["meta"]))
            rows = json.loads(str(saved["steps"]))
            arrays = [saved[f"v{i}"] for i in range(meta["n_arrays"])]
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as err:
        log.warning("%s: checkpoint %s is unreadable (%s); phase %s starts over", where, path, err, phase)
        return None
    model.optimizer.build(model.trainable_variables)
    variables = list(model.variables) + list(model.optimizer.variables)
    shapes = [tuple(v.shape) for v in variables]
    if meta.get("phase") != phase or shapes != [tuple(a.shape) for a in arrays]:
        log.warning("%s: checkpoint %s does not fit this model (another phase or architecture); "
                    "phase %s starts over", where, path, phase)
        return None
    for variable, value in zip(variables, arrays):
        variable.assign(value)
    return Position(int(meta["epoch"]), int(meta["step"])), rows


class StepCheckpoint(keras.callbacks.Callback):
    """Records each step's loss; writes a checkpoint every `every_steps` steps or
    `every_minutes`, whichever comes first (0 turns either off), and at each epoch's end, with
    the epoch's history row. It runs before any other callback, so an exception raised by a
    later one at an epoch's end finds that epoch already saved."""

    def __init__(self, path: Path, fold_dir: Path, phase: str, steps_in_epoch: int, every_steps: int,
                 every_minutes: float, rows: list, where: str, images_per_epoch: int):
        super().__init__()
        self.path, self.fold_dir, self.phase, self.steps_in_epoch = Path(path), Path(fold_dir), phase, steps_in_epoch
        self.every_steps, self.every_seconds = int(every_steps), float(every_minutes) * 60
        self.rows, self.where, self.images_per_epoch = rows, where, images_per_epoch
        self.epoch, self.skip = 0, 0
        self._last_saved_step, self._last_saved_time, self._started = 0, time.monotonic(), time.monotonic()
        self._done_in_call, self._loss_sum = 0, 0.0

    def begin_epoch(self, epoch: int, skip: int) -> None:
        self.epoch, self.skip = epoch, skip
        self._done_in_call, self._loss_sum = 0, 0.0
        self._last_saved_step = skip
        self._last_saved_time = self._started = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        # Keras reports the epoch's running mean loss; with steps_per_execution > 1 it reports
        # once per execution (and `batch` may run past the last step): recover each chunk's mean
        done = min(batch + 1, self.steps_in_epoch - self.skip)
        mean = float((logs or {}).get("loss", float("nan")))
        chunk = done - self._done_in_call
        if chunk <= 0:
            return
        total = mean * done
        step = self.skip + done
        self.rows.append({"phase": self.phase, "epoch": self.epoch + 1, "step": step,
                          "loss": (total - self._loss_sum) / chunk})
        self._done_in_call, self._loss_sum = done, total
        due_steps = self.every_steps and step - self._last_saved_step >= self.every_steps
        due_time = self.every_seconds and time.monotonic() - self._last_saved_time >= self.every_seconds
        if (due_steps or due_time) and step < self.steps_in_epoch:
            self.save(Position(self.epoch, step))
            log.info("%s %s: checkpoint at epoch %d, step %d of %d", self.where, self.phase, self.epoch + 1,
                     step, self.steps_in_epoch)

    def end_epoch(self) -> None:
        """The epoch is trained: checkpoint at the next epoch's start, and its history row."""
        seconds = time.monotonic() - self._started
        self.save(Position(self.epoch + 1, 0))
        trained = self.images_per_epoch * (self.steps_in_epoch - self.skip) // max(1, self.steps_in_epoch)
        loss = write_history(self.fold_dir, self.phase, self.epoch, self.rows, seconds, trained,
                             _current_learning_rate(self.model))
        log.info("%s %s epoch %d: loss %.4f (%.0f s, %.0f img/s)", self.where, self.phase, self.epoch + 1, loss,
                 seconds, trained / seconds if seconds else float("nan"))

    def on_epoch_end(self, epoch, logs=None):
        self.end_epoch()

    def save(self, position: Position) -> None:
        save_checkpoint(self.model, self.path, self.phase, position, self.rows)
        self._last_saved_step, self._last_saved_time = position.step, time.monotonic()


class StepProgress(keras.callbacks.Callback):
    """Progress within an epoch, where an epoch at the competition's size is hours: every
    `interval_s` a log line "epoch k/N: step s/S, images/s, epoch ETA, phase ETA". Log lines, not a
    bar, so a log file (and a Ray worker's unit.log) reads cleanly."""

    interval_s = 30.0

    def __init__(self, where: str, phase: Phase, steps_in_epoch: int, batch_size: int, first_epoch: int = 0,
                 skip: int = 0):
        super().__init__()
        self.where, self.phase, self.steps, self.batch_size = where, phase, steps_in_epoch, batch_size
        self.epoch, self.skip, self._first_epoch = first_epoch, skip, first_epoch
        self._started = self._last = time.monotonic()
        self._epoch_seconds: list = []

    def on_epoch_begin(self, epoch, logs=None):
        if epoch != self.epoch:
            self.skip = 0  # only the resumed epoch starts part-way
        self.epoch = epoch
        self._epoch_started = self._last = time.monotonic()
        self._steps_at_start = self.skip

    def on_train_batch_end(self, batch, logs=None):
        now = time.monotonic()
        if now - self._last < self.interval_s:
            return
        self._last = now
        step = min(self.skip + batch + 1, self.steps)
        elapsed = now - self._epoch_started
        rate = (step - self._steps_at_start) / elapsed if elapsed > 0 else float("nan")
        epoch_left = (self.steps - step) / rate if rate > 0 else float("nan")
        phase_left = epoch_left + (self.phase.epochs - self.epoch - 1) * self.steps / rate if rate > 0 else float("nan")
        log.info("%s %s epoch %d/%d: step %d/%d, %.1f images/s, epoch ETA %s, phase ETA %s", self.where,
                 self.phase.name, self.epoch + 1, self.phase.epochs, step, self.steps, rate * self.batch_size,
                 format_seconds(epoch_left), format_seconds(phase_left))


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    def __init__(self, where: str):
        super().__init__()
        self.where = where
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = float((logs or {}).get("loss", 0.0))
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"{self.where}: training loss became {loss} in epoch {self.epoch + 1}, batch {batch + 1}. "
                "Lower learning_rate / finetune_learning_rate, or set mixed_precision: off; "
                "the fold was not marked done and will be retrained on the next run.")


def write_history(fold_dir: Path, phase: str, epoch: int, rows: list, seconds: float, images: int,
                  learning_rate: float) -> float:
    """history.csv, one row per (phase, epoch), and steps.csv, one row per step. The epoch's loss
    is the mean of its step losses, so an epoch resumed after a kill reports the whole epoch, not
    its remainder. Returns that loss."""
    path = Path(fold_dir) / HISTORY
    losses = [r["loss"] for r in rows if r["phase"] == phase and r["epoch"] == epoch + 1]
    loss = float(np.mean(losses)) if losses else float("nan")
    row = {"phase": phase, "epoch": epoch + 1, "loss": loss, "learning_rate": learning_rate, "seconds": seconds,
           "images_per_s": images / seconds if seconds else float("nan")}
    history = read_history(path)
    if len(history):
        history = history[~((history["phase"] == phase) & (history["epoch"] == epoch + 1))]
    atomic.write_csv(path, pd.concat([history, pd.DataFrame([row])], ignore_index=True))
    atomic.write_csv(Path(fold_dir) / STEPS, pd.DataFrame(rows, columns=["phase", "epoch", "step", "loss"]))
    return loss


def read_history(path: Path) -> pd.DataFrame:
    path = Path(path)
    return pd.read_csv(path) if path.exists() else pd.DataFrame()


def _current_learning_rate(model) -> float:
    try:
        return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    except (AttributeError, TypeError, ValueError):
        return float("nan")


# ---- epoch selection on the training folds --------------------------------------------------


def inner_split(n: int, fraction: float, seed: int) -> tuple:
    """(fit rows, inner rows) of a fold's n training rows: a seeded random `fraction` is held out
    for choosing the epoch. It is part of the training folds; the held-out fold is never seen."""
    n_inner = int(round(n * fraction))
    if n_inner < 1 or n - n_inner < 1:
        raise ValueError(f"an inner split of {fraction} of {n} training images leaves {n_inner} to score and "
                         f"{n - n_inner} to train on; change the member's inner_fraction or use epoch_selection fixed")
    order = np.random.default_rng([seed, 20210]).permutation(n)
    return np.sort(order[n_inner:]), np.sort(order[:n_inner])


class EpochSelector(keras.callbacks.Callback):
    """At each epoch's end: the inner split's loss and micro-F1 (best global threshold) into
    epoch_selection.csv, and the weights of the lowest-loss epoch so far into
    phases/<phase>.best.weights.h5. Everything it decides follows from that file, so a resumed
    phase stops where an uninterrupted one would."""

    def __init__(self, fold_dir: Path, phase: str, predict: Callable, labels: np.ndarray, patience: int, where: str):
        super().__init__()
        self.fold_dir, self.phase, self.predict = Path(fold_dir), phase, predict
        self.labels, self.patience, self.where = np.asarray(labels, np.float32), int(patience), where
        self.best_path = self.fold_dir / "phases" / f"{phase}.best.weights.h5"

    def _rows(self) -> pd.DataFrame:
        rows = read_history(self.fold_dir / SELECTION)
        return rows[rows["phase"] == self.phase] if len(rows) else rows

    def best_epoch(self) -> Optional[int]:
        rows = self._rows()
        return int(rows.sort_values(["inner_loss", "epoch"]).iloc[0]["epoch"]) if len(rows) else None

    def should_stop(self) -> bool:
        rows = self._rows()
        return bool(len(rows)) and int(rows["epoch"].max()) - self.best_epoch() >= self.patience

    def on_epoch_end(self, epoch, logs=None):
        scores = score_probabilities(self.labels, self.predict(self.model))
        best = self.best_epoch()
        previous = self._rows()
        best_loss = float(previous.loc[previous["epoch"] == best, "inner_loss"].iloc[0]) if best else float("inf")
        if scores["loss"] < best_loss or best == epoch + 1:
            save_weights(self.model, self.best_path)  # before the row: a kill between them rescores the epoch
        path = self.fold_dir / SELECTION
        rows = read_history(path)
        if len(rows):
            rows = rows[~((rows["phase"] == self.phase) & (rows["epoch"] == epoch + 1))]
        row = {"phase": self.phase, "epoch": epoch + 1, "inner_loss": scores["loss"],
               "inner_micro_f1": scores["micro_f1@best"], "inner_images": len(self.labels)}
        atomic.write_csv(path, pd.concat([rows, pd.DataFrame([row])], ignore_index=True))
        log.info("%s %s epoch %d: inner loss %.4f, micro-F1 %.4f (best epoch %d)", self.where, self.phase,
                 epoch + 1, scores["loss"], scores["micro_f1@best"], self.best_epoch())

    def restore_best(self, model) -> None:
        if self.best_path.exists():
            model.load_weights(str(self.best_path))


def chosen_epochs(fold_dir: Path) -> dict:
    """{phase: the epoch epoch selection kept}, from epoch_selection.csv ({} under a fixed schedule)."""
    rows = read_history(Path(fold_dir) / SELECTION)
    if not len(rows):
        return {}
    best = rows.sort_values(["inner_loss", "epoch"]).groupby("phase", sort=False).head(1)
    return {str(r.phase): int(r.epoch) for r in best.itertuples()}


# ---- training ------------------------------------------------------------------------------


def prediction_batch_size(member: MemberConfig) -> int:
    """Images per prediction batch: with micro-batches, no more than training held at once
    (BatchNorm infers per image, so the batch changes nothing but float order)."""
    return member.batch_size // accumulation_steps(member)


@keras.saving.register_keras_serializable(package="fashion")
class PerOptimizerStep(keras.optimizers.schedules.LearningRateSchedule):
    """A schedule over optimizer steps, for an optimizer that accumulates gradients: Keras reads a
    schedule at its count of micro-batches, this one at that count // `micro_batches`, so the rate
    of each optimizer step is the one the same schedule gives without accumulation."""

    def __init__(self, schedule, micro_batches: int):
        self.schedule, self.micro_batches = schedule, int(micro_batches)

    def __call__(self, step):
        return self.schedule(keras.ops.floor_divide(step, self.micro_batches))

    def get_config(self):
        return {"schedule": keras.optimizers.schedules.serialize(self.schedule), "micro_batches": self.micro_batches}

    @classmethod
    def from_config(cls, config):
        return cls(keras.optimizers.schedules.deserialize(config["schedule"]), config["micro_batches"])


@keras.saving.register_keras_serializable(package="fashion")
class LayerwiseAdam(keras.optimizers.Adam):
    """Adam whose step for each variable is scaled by a factor (layer-wise learning rates), and
    whose weight average (use_ema) is swapped into the model only when asked (swap_in_average):
    Keras swaps it in at the end of every fit, and the trainer fits one epoch at a time."""

    def __init__(self, *args, factors: Optional[dict] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.factors = dict(factors or {})  # variable path -> factor (1.0 when absent)

    def build(self, var_list):
        super().build(var_list)
        self._factor_of = [float(self.factors.get(v.path, 1.0)) for v in var_list]

    def update_step(self, gradient, variable, learning_rate):
        factor = self._factor_of[self._get_variable_index(variable)]
        super().update_step(gradient, variable, learning_rate if factor == 1.0 else learning_rate * factor)

    def finalize_variable_values(self, var_list):
        pass  # see swap_in_average

    def swap_in_average(self, var_list) -> None:
        if self.use_ema:
            self._overwrite_model_variables_with_average_value(var_list)


def layerwise_factors(model: keras.Model, floor: float) -> dict:
    """{variable path: learning-rate factor}: trunk layer at relative depth d (0 first, 1 last) gets
    floor ** (1 - d); everything outside the trunk (the head) 1.0."""
    if floor >= 1.0:
        return {}
    trunks = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if not trunks:
        return {}
    weighted = [layer for layer in trunks[0].layers if layer.weights]
    last = max(1, len(weighted) - 1)
    return {v.path: floor ** (1 - position / last) for position, layer in enumerate(weighted) for v in layer.weights}


def _compile(model: keras.Model, member: MemberConfig, learning_rate: float, total_steps: int,
             placement: Placement, phase: str = "head", micro_batches: int = 1) -> None:
    """`total_steps`: the phase's optimizer steps. `micro_batches` > 1: the optimizer accumulates
    that many micro-batches' gradients per step (Keras's gradient_accumulation_steps; Adam's bias
    correction already counts optimizer steps, the schedule is made to: PerOptimizerStep)."""
    total_steps = max(1, total_steps)
    tuning = phase in ("top", "all")  # the recipe's options apply to the phase that trains the trunk
    warmup = int(round(member.warmup_fraction * total_steps)) if tuning else 0
    if warmup:
        schedule = keras.optimizers.schedules.CosineDecay(0.0, decay_steps=max(1, total_steps - warmup), alpha=0.05,
                                                          warmup_target=learning_rate, warmup_steps=warmup)
    else:
        schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=total_steps, alpha=0.05)
    factors = layerwise_factors(model, member.trunk_lr_floor) if tuning else {}
    ema = tuning and member.ema_decay > 0
    accumulate = {}
    if micro_batches > 1:
        if ema:  # core.config refuses the pair; a member built in code meets it here
            raise ValueError(f"member {member.name!r}: hardware.micro_batch_size with ema_decay is not supported")
        schedule = PerOptimizerStep(schedule, micro_batches)
        accumulate = {"gradient_accumulation_steps": micro_batches}
    optimizer = LayerwiseAdam(schedule, factors=factors, use_ema=ema, ema_momentum=member.ema_decay if ema else 0.99,
                              **accumulate)
    # a mixed_float16 model gets Keras's loss-scaling optimizer from compile; bfloat16 needs none
    model.compile(optimizer=optimizer, loss=member_loss(member),
                  jit_compile=placement.jit_compile, steps_per_execution=placement.steps_per_execution)


def _swap_in_average(model: keras.Model) -> None:
    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)  # under loss scaling
    if isinstance(optimizer, LayerwiseAdam):
        optimizer.swap_in_average(model.trainable_variables)


def _fit_phase(model, member: MemberConfig, phase: Phase, epoch_data: EpochData, steps: int, fold_dir: Path,
               where: str, images_per_epoch: int, callbacks: Sequence = (), selector=None) -> None:
    """The phase's epochs, one `fit` each, from its checkpoint if there is one; with a selector
    (EpochSelector), until it says stop."""
    path = fold_dir / CHECKPOINTS / f"{phase.name}.npz"
    restored = restore_checkpoint(model, path, phase.name, where)
    position, rows = restored if restored else (Position(0, 0), [])
    if restored:
        log.info("%s %s: resuming at epoch %d, step %d of %d", where, phase.name, position.epoch + 1,
                 position.step, steps)
    checkpoint = StepCheckpoint(path, fold_dir, phase.name, steps, member.hardware.checkpoint_steps, member.hardware.checkpoint_minutes,
                                rows, where, images_per_epoch)
    # the selector scores an epoch before the checkpoint records it as trained: a kill between the
    # two retrains the epoch's tail and scores it again, never leaves a trained epoch unscored
    standard = ([selector] if selector else []) + [checkpoint, StopOnNonFiniteLoss(where)]
    standard.append(StepProgress(where, phase, steps, math.ceil(images_per_epoch / max(1, steps)), position.epoch, position.step))
    for epoch in range(position.epoch, phase.epochs):
        if selector is not None and selector.should_stop():
            log.info("%s %s: stopping after epoch %d, the inner split's best was epoch %d", where, phase.name,
                     epoch, selector.best_epoch())
            break
        skip = position.step if epoch == position.epoch else 0
        checkpoint.begin_epoch(epoch, skip)
        if skip < steps:
            model.fit(epoch_data(epoch, skip), initial_epoch=epoch, epochs=epoch + 1, shuffle=False,
                      callbacks=standard + list(callbacks), verbose=0)
        else:  # killed after the epoch's last step, before its end was recorded
            if selector is not None:
                selector.set_model(model)
                selector.on_epoch_end(epoch)
            checkpoint.set_model(model)
            checkpoint.end_epoch()
    if selector is not None:
        selector.restore_best(model)


def _run_phases(model, member: MemberConfig, phases: list, data_for_phase: Callable[[int], EpochData], steps: int,
                fold_dir: Path, where: str, images_per_epoch: int, placement: Placement, callbacks: Sequence = (),
                has_trunk: bool = True, selector_for: Optional[Callable] = None, micro_batches: int = 1) -> keras.Model:
    """Each phase: skip if its weights exist, else start from the previous phase's weights and
    train (from its checkpoint, if any). `steps`: fit's steps per epoch, micro-batches when
    `micro_batches` > 1 (then `steps` / micro_batches optimizer steps)."""
    fold_dir.mkdir(parents=True, exist_ok=True)
    previous: Optional[Path] = None
    for number, phase in enumerate(phases):
        finished = fold_dir / "phases" / f"{phase.name}.weights.h5"
        if not finished.exists():
            if previous is not None:
                model.load_weights(str(previous))
            if has_trunk:
                set_trainable(model, member.backbone, phase.name, pretrained=is_pretrained(member.weights))
            rate = scaled_learning_rate(phase.learning_rate, member.hardware.lr_scaling, placement.replicas)
            _compile(model, member, rate, phase.epochs * steps // micro_batches, placement, phase.name, micro_batches)
            _fit_phase(model, member, phase, data_for_phase(number), steps, fold_dir, where, images_per_epoch,
                       callbacks, selector_for(phase) if selector_for else None)
            _swap_in_average(model)  # with ema_decay, the phase's weight average becomes its result
            save_weights(model, finished)
            _release_traced_steps(model)
            (fold_dir / CHECKPOINTS / f"{phase.name}.npz").unlink(missing_ok=True)
        previous = finished
    if previous is not None:
        model.load_weights(str(previous))
    return model


def _release_traced_steps(model: keras.Model) -> None:
    """Drop the phase's traced train and test steps (for densenet201 about 0.75 GB of graph at
    96 px), so the next phase's trace or the prediction's does not sit beside them; compile and
    fit trace again when needed."""
    import gc
    for attribute in ("train_function", "test_function"):
        if getattr(model, attribute, None) is not None:
            setattr(model, attribute, None)
    gc.collect()


def _epoch_base(phases: list, number: int) -> int:
    # data orders never repeat across phases: phase 2's first epoch is the run's epoch head_epochs
    return sum(p.epochs for p in phases[:number])


def multi_hot_or_float(labels) -> np.ndarray:
    """Labels as uint8 when they are 0/1, else float32."""
    labels = np.asarray(labels)
    if labels.dtype == np.uint8 or labels.dtype == np.bool_:
        return labels.astype(np.uint8, copy=False)
    if labels.size and np.array_equal(labels, labels.astype(bool)):
        return labels.astype(np.uint8)
    return labels.astype(np.float32, copy=False)


def train_finetune(member: MemberConfig, paths: Sequence[str], labels: np.ndarray, fold_dir: Path,
                   seed: int, where: str = "", callbacks: Sequence = (), cache=None,
                   placement: Optional[Placement] = None, head_embeddings: Optional[np.ndarray] = None,
                   spec: Optional[InputSpec] = None) -> keras.Model:
    """Fine-tune the member's trunk + head on these images, on every device of `placement`,
    resuming whatever fold_dir holds. `cache`: a models.inputs image cache, or None.
    `head_embeddings` (member head_init "embeddings"): the trunk's embeddings of `paths`, in order;
    the head is first fitted on them (LP-FT), then the trunk fine-tunes under it. `spec`: the
    member's InputSpec as its plan resolved it (models.plan); None resolves it here."""
    if member.head_init == "embeddings" and head_embeddings is None:
        raise ValueError(f"member {member.name!r}: head_init 'embeddings' needs the training images' embeddings")
    keras.utils.set_random_seed(seed)
    placement = placement or resolve_placement(member)
    spec = spec or resolve_input_spec(member)
    global_batch = member.batch_size * placement.replicas
    drop_remainder = placement.replicas > 1  # every replica gets an equal share of each batch
    phases = finetune_phases(member)
    # multi-hot labels stay uint8 (0.23 GB at 1M images x 228 labels, float32 0.92 GB): the readers
    # cast each batch; soft targets (floats other than 0/1) stay float32
    labels = multi_hot_or_float(labels)
    paths = list(paths)
    selector_for = None
    if member.epoch_selection == "inner_split":
        fit, inner = inner_split(len(paths), member.inner_fraction, seed)
        inner_paths, inner_labels = [paths[i] for i in inner], labels[inner]
        paths, labels = [paths[i] for i in fit], labels[fit]

        def selector_for(phase: Phase) -> EpochSelector:
            def predict(model):
                return predict_images(model, inner_paths, prediction_batch_size(member), reader=member.hardware.reader,
                                      workers=member.hardware.reader_workers, desc=f"{where} inner", replicas=placement.replicas)
            return EpochSelector(fold_dir, phase.name, predict, inner_labels, member.patience, where)
    # gradient accumulation: fit's steps are micro-batches, micro_batches of them per optimizer step
    micro_batches = accumulation_steps(member)
    micro_batch = global_batch // micro_batches if micro_batches > 1 else None
    steps = steps_per_epoch(len(paths), global_batch, drop_remainder) * micro_batches

    def data_for_phase(number: int) -> EpochData:
        base = _epoch_base(phases, number)
        return lambda epoch, skip: training_batches(
            paths, labels, spec.size, spec.resize, global_batch, seed=seed, epoch=base + epoch, skip_batches=skip,
            drop_remainder=drop_remainder, cache=cache, reader=member.hardware.reader, workers=member.hardware.reader_workers,
            micro_batch_size=micro_batch)

    head = None
    if member.head_init == "embeddings":
        rows = np.asarray(fit) if member.epoch_selection == "inner_split" else slice(None)
        head = train_head(member, np.asarray(head_embeddings)[rows], labels, Path(fold_dir) / "head", seed,
                          f"{where} head")
        keras.utils.set_random_seed(seed)
    with placement_scope(placement):
        model = build_member_model(member, labels.shape[1], precision=placement.precision_policy, spec=spec)
        if head is not None:
            copy_head(head, model)
        return _run_phases(model, member, phases, data_for_phase, steps, Path(fold_dir), where, len(paths),
                           placement, callbacks, selector_for=selector_for, micro_batches=micro_batches)


def copy_head(head: keras.Model, model: keras.Model) -> None:
    """The head layers' weights (same names in build_head_model and build_member_model) into `model`."""
    for layer in head.layers:
        if layer.weights:
            model.get_layer(layer.name).set_weights(layer.get_weights())


def train_head(member: MemberConfig, embeddings: np.ndarray, labels: np.ndarray, fold_dir: Path,
               seed: int, where: str = "", callbacks: Sequence = ()) -> keras.Model:
    """Frozen-feature path: only the head trains, on cached trunk embeddings (seconds: one device)."""
    keras.utils.set_random_seed(seed)
    placement = resolve_placement(member)
    placement = Placement(placement.backend, placement.kind, placement.devices[:1], "float32",
                          placement.jit_compile, placement.steps_per_execution)
    # feature maps stay float16 (the model casts each batch); vectors are float32
    features = embeddings if embeddings.dtype == np.float16 else np.asarray(embeddings, np.float32)
    labels = np.asarray(labels, np.float32)
    selector_for = None
    if member.epoch_selection == "inner_split":
        fit, inner = inner_split(len(features), member.inner_fraction, seed)
        inner_features, inner_labels = features[inner], labels[inner]
        features, labels = features[fit], labels[fit]

        def selector_for(phase: Phase) -> EpochSelector:
            return EpochSelector(fold_dir, phase.name, lambda model: predict_embeddings(model, inner_features),
                                 inner_labels, member.patience, where)
    steps = steps_per_epoch(len(features), member.batch_size)
    phase = Phase("head", member.frozen_epochs, member.learning_rate)

    def epoch_data(epoch: int, skip: int):
        rows = epoch_order(len(features), seed, epoch)[skip * member.batch_size:]
        return ArrayBatches(features[rows], labels[rows], member.batch_size)

    model = build_head_model(features.shape[1:], labels.shape[1], member)
    return _run_phases(model, member, [phase], lambda number: epoch_data, steps, Path(fold_dir), where,
                       len(features), placement, callbacks, has_trunk=False, selector_for=selector_for)


class ArrayBatches(keras.utils.PyDataset):
    """In-memory (features, labels) in the given row order, as batches."""

    def __init__(self, features: np.ndarray, labels: np.ndarray, batch_size: int, **kwargs):
        super().__init__(**kwargs)
        self.features, self.labels, self.batch_size = features, labels, batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.features) / self.batch_size)

    def __getitem__(self, index: int):
        rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return self.features[rows], self.labels[rows]


# ---- prediction and files ------------------------------------------------------------------


def predict_images(model: keras.Model, paths: Sequence[str], batch_size: int, tta_flip: bool = False,
                   reader: str = "auto", workers: Optional[int] = None, desc: str = "predict",
                   replicas: int = 1, tta_scales: Sequence[float] = (1.0,)) -> np.ndarray:
    """Probabilities in `paths` order, the images made as the model's own InputSpec says; with
    tta_flip, the mean over the image and its mirror; with tta_scales, over centred zooms too
    (centre_zoom). Batches are padded to a multiple of the replicas (data parallel needs equal
    shares) and the padding dropped."""
    if not len(paths):
        return np.zeros((0, model.output_shape[-1]), dtype=np.float32)
    spec = input_spec_of(model)
    batches = prediction_batches(paths, spec.size, spec.resize, batch_size * replicas, reader=reader, workers=workers)
    out = []
    for images in progress(batches, desc=desc, total=len(batches), leave=False):
        out.append(predict_batch(model, np.asarray(images, dtype=np.float32), tta_flip, replicas, tta_scales))
    return np.concatenate(out)


def centre_zoom(images: np.ndarray, scale: float) -> np.ndarray:
    """The centred 1/scale of each side of (batch, height, width, channels) images, resized back
    (bilinear) to height x width: the zoom-in that training's augmentation also shows the model."""
    if scale == 1.0:
        return images
    height, width = images.shape[1:3]
    crop_h, crop_w = max(1, int(round(height / scale))), max(1, int(round(width / scale)))
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    crop = images[:, top:top + crop_h, left:left + crop_w]
    return np.asarray(keras.ops.convert_to_numpy(keras.ops.image.resize(crop, (height, width))), np.float32)


def predict_batch(model: keras.Model, images: np.ndarray, tta_flip: bool = False, replicas: int = 1,
                  tta_scales: Sequence[float] = (1.0,)) -> np.ndarray:
    n = len(images)
    short = (-n) % replicas
    if short:
        images = np.concatenate([images, np.repeat(images[-1:], short, axis=0)])
    views = []
    for scale in tta_scales or (1.0,):
        view = centre_zoom(images, float(scale))
        views.append(view)
        if tta_flip:
            views.append(np.ascontiguousarray(view[:, :, ::-1]))
    probs = np.mean([np.asarray(model.predict_on_batch(view), dtype=np.float32) for view in views], axis=0)
    return probs[:n]


def predict_embeddings(model: keras.Model, embeddings: np.ndarray, mirrored: Optional[np.ndarray] = None,
                       batch_size: int = 256) -> np.ndarray:
    """Head probabilities; with the mirrored images' embeddings, their mean (flip TTA)."""
    if not len(embeddings):
        return np.zeros((0, model.output_shape[-1]), dtype=np.float32)
    probs = np.asarray(model.predict(embeddings, batch_size=batch_size, verbose=0), dtype=np.float32)
    if mirrored is not None:
        probs = (probs + np.asarray(model.predict(mirrored, batch_size=batch_size, verbose=0), dtype=np.float32)) / 2
    return probs


def save_weights(model: keras.Model, path: Path) -> None:
    with atomic.atomic_path(path, suffix=".weights.h5") as tmp:
        model.save_weights(str(tmp))


def save_model(model: keras.Model, path: Path) -> None:
    with atomic.atomic_path(path, suffix=".keras") as tmp:
        model.save(str(tmp))


def load_model(path: Path) -> keras.Model:
    """A saved fold model, ready to predict (the optimizer state is not needed)."""
    return keras.saving.load_model(str(path), compile=False)


def remove_checkpoints(fold_dir: Path) -> None:
    """Once model.keras holds the final weights, the phase weights and checkpoints are spent."""
    for name in ("phases", CHECKPOINTS, "backup"):
        shutil.rmtree(Path(fold_dir) / name, ignore_errors=True)


def training_rate(history: pd.DataFrame) -> float:
    """Training images per second over the epochs in history.csv."""
    if not len(history) or "seconds" not in history:
        return float("nan")
    images = (history["images_per_s"] * history["seconds"]).sum()
    return float(images / history["seconds"].sum())
