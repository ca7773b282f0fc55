"""TensorBoard logs of member training, one folder per (member, unit), when the config's
tensorboard.enabled is on:

    runs/<run>/members/<member>/<unit>/tensorboard/train/events.out.tfevents...
    tensorboard --logdir runs/<run>

Scalars, in the "train" run of each folder: epoch_loss and every metric Keras reports, and
epoch_learning_rate (the optimizer's scheduled rate at the epoch's end); with
tensorboard.every_n_batches = N > 0, also batch_loss (Keras's running mean over the epoch so far)
and batch_learning_rate every N training batches. Validation metrics, if a fit has any, go to a
"validation" run under the same tags.

One x-axis per unit. A unit trains in phases (a Keras fit each: head, then top blocks) and can
resume in another process; keras.callbacks.TensorBoard numbers epochs and batches from zero in
every fit, so the phases would be drawn over each other. Here epochs and batches count on across
fits and resumes (the counts live beside the event files, in steps.json): step k of epoch_loss is
the unit's k-th epoch. The folder is inside the unit's folder, so it goes when the unit is retrained
from scratch. Written with tf.summary (TensorFlow is in requirements.txt on every backend).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import keras

from fashion_stack.core import atomic
from fashion_stack.core.log import get_logger
from fashion_stack.core.rundir import RunDir

LOG_FOLDER = "tensorboard"
STEPS_FILE = "steps.json"
log = get_logger("members")


def training_log_dir(run_root, member_name: str, unit_name: str) -> Path:
    return RunDir(run_root).member_dir(member_name) / unit_name / LOG_FOLDER


def training_log_callbacks(run_root, member_name: str, unit_name: str, config) -> list:
    """The callbacks that write this unit's TensorBoard logs (none when tensorboard.enabled is
    off). Pass the same list to every fit of the unit; a new list after a restart continues the
    axis where the folder's steps.json left it."""
    settings = config.tensorboard
    if not settings.enabled:
        return []
    if settings.every_n_batches < 0:
        raise ValueError(f"tensorboard.every_n_batches is {settings.every_n_batches}; use 0 (per epoch only) or N > 0")
    _summary_module()  # fail before training, not after its first epoch
    return [TrainingLog(training_log_dir(run_root, member_name, unit_name), settings.every_n_batches)]


def _summary_module():
    try:
        import tensorflow as tf
    except ImportError as err:
        raise RuntimeError(f"TensorBoard logs are written with TensorFlow's tf.summary, which does not import "
                           f"({err}); install requirements.txt or set tensorboard.enabled: false") from None
    return tf.summary


class TrainingLog(keras.callbacks.Callback):
    """Scalars of every fit it joins, on one epoch axis and one batch axis for its folder."""

    def __init__(self, log_dir, every_n_batches: int = 0):
        super().__init__()
        self.log_dir, self.every_n_batches = Path(log_dir), int(every_n_batches)
        self._counts: Optional[dict] = None
        self._writers: dict = {}
        self._epoch_first_batch = 0

    # -- the step counts, kept across fits and processes

    def _load_counts(self) -> dict:
        path = self.log_dir / STEPS_FILE
        if not path.exists():
            return {"epochs": 0, "batches": 0}
        try:
            counts = atomic.read_json(path)
            if all(isinstance(counts.get(k), int) and counts[k] >= 0 for k in ("epochs", "batches")):
                return {"epochs": counts["epochs"], "batches": counts["batches"]}
        except (OSError, ValueError, AttributeError):
            pass
        # a monitoring log must never stop training: say so and count again from zero
        log.warning("%s is unreadable; TensorBoard steps of this unit restart at 0 (old points stay in the folder)", path)
        return {"epochs": 0, "batches": 0}

    def _save_counts(self) -> None:
        atomic.write_json(self.log_dir / STEPS_FILE, self._counts)

    def _writer(self, run: str):
        if run not in self._writers:
            self._writers[run] = _summary_module().create_file_writer(str(self.log_dir / run))
        return self._writers[run]

    def _write(self, run: str, scalars: dict, step: int) -> None:
        summary = _summary_module()
        with self._writer(run).as_default():
            for tag, value in scalars.items():
                if value is not None and math.isfinite(value):
                    summary.scalar(tag, value, step=step)

    def _learning_rate(self) -> Optional[float]:
        optimizer = getattr(self.model, "optimizer", None)
        optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # mixed float16: LossScaleOptimizer
        try:
            return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        except (AttributeError, TypeError, ValueError):
            return None

    # -- Keras hooks

    def on_train_begin(self, logs=None):
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self._counts is None:
            self._counts = self._load_counts()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_first_batch = self._counts["batches"]

    def on_train_batch_end(self, batch, logs=None):
        # batch is the index within the epoch (it steps by steps_per_execution), so a resumed
        # epoch continues at its own position
        self._counts["batches"] = self._epoch_first_batch + int(batch) + 1
        n = self.every_n_batches
        if n and self._counts["batches"] % n == 0:
            scalars = {f"batch_{k}": _number(v) for k, v in (logs or {}).items()}
            self._write("train", {**scalars, "batch_learning_rate": self._learning_rate()}, self._counts["batches"])

    def on_epoch_end(self, epoch, logs=None):
        self._counts["epochs"] += 1
        step = self._counts["epochs"]
        logs = logs or {}
        train = {f"epoch_{k}": _number(v) for k, v in logs.items() if not k.startswith("val_")}
        self._write("train", {**train, "epoch_learning_rate": self._learning_rate()}, step)
        validation = {f"epoch_{k[4:]}": _number(v) for k, v in logs.items() if k.startswith("val_")}
        if validation:
            self._write("validation", validation, step)
        for writer in self._writers.values():
            writer.flush()
        self._save_counts()

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}
        if self._counts is not None:
            self._save_counts()


def _number(value) -> Optional[float]:
    try:
        return float(keras.ops.convert_to_numpy(value))
    except (TypeError, ValueError):
        return None
