"""Training one fold of one member, resumably, and predicting with the result.

Fine-tuning runs in phases, each its own `fit` with its own Keras BackupAndRestore folder, so an
interrupted fold resumes inside the phase it was in, at the first unfinished epoch. A finished
phase leaves its weights in phases/<phase>.weights.h5; the next phase starts from them.
The schedule is fixed (epochs and a cosine learning rate per phase): nothing here looks at the
held-out fold, so its predictions are honest out-of-fold predictions.
"""
from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import keras
import numpy as np
import pandas as pd

from core import atomic
from core.config import MemberConfig
from core.log import get_logger, progress
from models.backbones import is_pretrained, resolve_size
from models.heads import build_head_model, build_member_model, set_trainable
from models.inputs import image_batches
from models.losses import get_loss

HISTORY = "history.csv"
MODEL_FILE = "model.keras"
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
    return [p for p in phases if p.epochs > 0]


# ---- callbacks -----------------------------------------------------------------------------


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
                "Lower learning_rate / finetune_learning_rate, or turn mixed_precision off; "
                "the fold was not marked done and will be retrained on the next run.")


class HistoryWriter(keras.callbacks.Callback):
    """history.csv, one row per (phase, epoch), rewritten atomically after every epoch. An
    epoch that reruns after an interrupt replaces its row, so each epoch appears once."""

    def __init__(self, path: Path, phase: str, where: str, n_images: int):
        super().__init__()
        self.path, self.phase, self.where, self.n_images = Path(path), phase, where, n_images
        self._started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._started
        row = {"phase": self.phase, "epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()},
               "learning_rate": _current_learning_rate(self.model), "seconds": seconds,
               "images_per_s": self.n_images / seconds if seconds else float("nan")}
        history = read_history(self.path)
        if len(history):
            history = history[~((history["phase"] == self.phase) & (history["epoch"] == epoch + 1))]
        history = pd.concat([history, pd.DataFrame([row])], ignore_index=True)
        atomic.write_csv(self.path, history)
        log.info("%s %s epoch %d: loss %.4f (%.0f s)", self.where, self.phase, epoch + 1, row.get("loss", float("nan")), seconds)


def read_history(path: Path) -> pd.DataFrame:
    path = Path(path)
    return pd.read_csv(path) if path.exists() else pd.DataFrame()


def _current_learning_rate(model) -> float:
    try:
        return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    except (AttributeError, TypeError, ValueError):
        return float("nan")


# ---- training ------------------------------------------------------------------------------


def _compile(model: keras.Model, member: MemberConfig, learning_rate: float, total_steps: int) -> None:
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(1, total_steps), alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=get_loss(member.loss),
                  jit_compile=bool(member.jit_compile))


def _fit_phase(model, fit_inputs: dict, phase: Phase, fold_dir: Path, where: str, n_images: int,
               callbacks: Sequence = ()) -> None:
    backup = fold_dir / "backup" / phase.name
    standard = [
        keras.callbacks.BackupAndRestore(str(backup), double_checkpoint=True, delete_checkpoint=False),
        StopOnNonFiniteLoss(where),
        HistoryWriter(fold_dir / HISTORY, phase.name, where, n_images),
    ]
    model.fit(**fit_inputs, epochs=phase.epochs, callbacks=standard + list(callbacks), verbose=0)


def _run_phases(model, member: MemberConfig, phases: list, fit_inputs: dict, steps_per_epoch: int,
                fold_dir: Path, where: str, n_images: int, callbacks: Sequence = (),
                has_trunk: bool = True) -> keras.Model:
    """Each phase: skip if its weights exist, else start from the previous phase's weights
    (BackupAndRestore then moves on to its own backup, if any) and train."""
    fold_dir.mkdir(parents=True, exist_ok=True)
    previous: Optional[Path] = None
    for phase in phases:
        finished = fold_dir / "phases" / f"{phase.name}.weights.h5"
        if not finished.exists():
            if previous is not None:
                model.load_weights(str(previous))
            if has_trunk:
                set_trainable(model, member.backbone, phase.name, pretrained=is_pretrained(member.weights))
            _compile(model, member, phase.learning_rate, phase.epochs * steps_per_epoch)
            _fit_phase(model, fit_inputs, phase, fold_dir, where, n_images, callbacks)
            save_weights(model, finished)
            shutil.rmtree(fold_dir / "backup" / phase.name, ignore_errors=True)
        previous = finished
    if previous is not None:
        model.load_weights(str(previous))
    return model


def train_finetune(member: MemberConfig, paths: Sequence[str], labels: np.ndarray, fold_dir: Path,
                   seed: int, where: str = "", callbacks: Sequence = ()) -> keras.Model:
    """Fine-tune the member's trunk + head on these images, resuming whatever fold_dir holds."""
    keras.utils.set_random_seed(seed)
    size = resolve_size(member.backbone, member.image_size)
    model = build_member_model(member, labels.shape[1])
    batches = image_batches(paths, labels, size, member.resize, member.batch_size, shuffle=True, seed=seed)
    steps = math.ceil(len(paths) / member.batch_size)
    return _run_phases(model, member, finetune_phases(member), {"x": batches, "shuffle": False}, steps, Path(fold_dir),
                       where, len(paths), callbacks)


def train_head(member: MemberConfig, embeddings: np.ndarray, labels: np.ndarray, fold_dir: Path,
               seed: int, where: str = "", callbacks: Sequence = ()) -> keras.Model:
    """Frozen-feature path: only the head trains, on cached trunk embeddings."""
    keras.utils.set_random_seed(seed)
    model = build_head_model(embeddings.shape[1], labels.shape[1], member)
    fit_inputs = {"x": np.asarray(embeddings, np.float32), "y": np.asarray(labels, np.float32),
                  "batch_size": member.batch_size, "shuffle": True}
    steps = math.ceil(len(embeddings) / member.batch_size)
    phase = Phase("head", member.frozen_epochs, member.learning_rate)
    return _run_phases(model, member, [phase], fit_inputs, steps, Path(fold_dir), where, len(embeddings),
                       callbacks, has_trunk=False)


# ---- prediction and files ------------------------------------------------------------------


def predict_images(model: keras.Model, member: MemberConfig, paths: Sequence[str], desc: str = "predict") -> np.ndarray:
    """Probabilities in `paths` order; with member.tta_flip, the mean over the image and its mirror."""
    if not len(paths):
        return np.zeros((0, model.output_shape[-1]), dtype=np.float32)
    size = resolve_size(member.backbone, member.image_size)
    batches = image_batches(paths, None, size, member.resize, member.batch_size, shuffle=False)
    out = []
    for images in progress(batches, desc=desc, total=math.ceil(len(paths) / member.batch_size), leave=False):
        images = np.asarray(images, dtype=np.float32)
        probs = np.asarray(model.predict_on_batch(images), dtype=np.float32)
        if member.tta_flip:
            mirrored = np.ascontiguousarray(images[:, :, ::-1])
            probs = (probs + np.asarray(model.predict_on_batch(mirrored), dtype=np.float32)) / 2
        out.append(probs)
    return np.concatenate(out)


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


def training_rate(history: pd.DataFrame) -> float:
    """Training images per second over the epochs in history.csv."""
    if not len(history) or "seconds" not in history:
        return float("nan")
    images = (history["images_per_s"] * history["seconds"]).sum()
    return float(images / history["seconds"].sum())
