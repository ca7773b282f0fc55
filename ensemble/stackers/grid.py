"""The grid stacker: a small Keras network over each image's (members x labels) matrix of
log-odds, as the 2nd-place 2018 team (cybercore) stacked: one combination of the members shared by
every label (a convolution along the member axis), then dense layers over all labels at once, one
sigmoid per label. It learns label correlation from the whole grid, which per-label models cannot.

Keras is imported when a grid stacker is built or loaded, not with this package: TensorFlow takes
seconds to import, and runs that do not list the grid stacker should not pay for it.
"""
from __future__ import annotations

import copy
import threading
from pathlib import Path
from typing import Annotated

import numpy as np
from annotated_types import Ge, Interval

from fashion_stack.core import atomic
from fashion_stack.core.registry import ProcessCache
from fashion_stack.ensemble.stackers.base import Stacker, log, logit, register_stacker, stacker_settings

MODEL_FILE = "grid.keras"
# compiled networks reused across fits, one per architecture (GridStacker._trainer); a lock keeps
# two fits in threads from sharing one at the same time
_TRAINERS = ProcessCache("grid stacker networks", "compiled networks per architecture: tracing one costs ~3 s")
_TRAINERS_LOCK = threading.Lock()


@register_stacker("grid_cnn")
@stacker_settings
class GridStacker(Stacker):
    """Log-odds of the members' probabilities, (members, labels) per image, through:

    - a shared member mix: one weight per member, the same for every label, started at 1/members,
      so the untrained network predicts the mean of the members' log-odds;
    - `filters` ReLU combinations of the members per label (a 1-wide convolution along the member
      axis, shared across labels), flattened over all labels, then `hidden_units` ReLU units with
      dropout, then one output per label, started at zero: a correction to the mix that can use
      every label's evidence.

    Trained with Adam on binary cross-entropy; the epoch is chosen by early stopping on
    `inner_fraction` of the training images (never the rows it will predict), restoring the best
    epoch's weights. Seeded (`seed`): the inner split, the initial weights and dropout."""

    # member combinations per label (a 1-wide convolution along the member axis) and the dense
    # layer over all labels. 4 x 128 has 3.6 times fewer multiply-adds than 8 x 256; on the demo
    # it gave the same OOF (0.5938 vs 0.5940) for 37 instead of 45 CPU-seconds (Keras' per-epoch
    # overhead is the rest)
    filters: Annotated[int, Ge(1)] = 4
    hidden_units: Annotated[int, Ge(1)] = 128
    dropout: Annotated[float, Interval(ge=0, lt=1)] = 0.3
    epochs: Annotated[int, Ge(1)] = 60  # at most; early stopping on the inner images picks the epoch
    patience: Annotated[int, Ge(1)] = 6
    batch_size: Annotated[int, Ge(1)] = 128
    learning_rate: Annotated[float, Ge(0)] = 1e-3
    inner_fraction: Annotated[float, Interval(gt=0, lt=1)] = 0.2
    seed: int = 0

    def _fit(self, stack, y):
        import keras
        order = np.random.default_rng(self.seed).permutation(len(stack))
        n_stop = max(1, int(round(self.inner_fraction * len(stack))))
        stop_rows, fit_rows = order[:n_stop], order[n_stop:]
        grid = _grid(stack)
        y = y.astype(np.float32)
        stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=self.patience,
                                                restore_best_weights=True)
        with _TRAINERS_LOCK:
            trainer = self._trainer(stack.n_members, stack.n_labels)
            keras.utils.set_random_seed(self.seed)  # the shuffles
            history = trainer.fit(grid[fit_rows], y[fit_rows], validation_data=(grid[stop_rows], y[stop_rows]),
                                  epochs=self.epochs, batch_size=self.batch_size, shuffle=True,
                                  callbacks=[stopper], verbose=0)
            self.model_ = self._build(stack.n_members, stack.n_labels)  # this fit's own copy
            self.model_.set_weights(trainer.get_weights())
        losses = history.history["val_loss"]
        self.best_epoch_ = int(np.argmin(losses)) + 1
        self.inner_loss_ = float(min(losses))
        log.info("grid_cnn stacker: best epoch %d of %d, inner log-loss %.4f", self.best_epoch_,
                 len(losses), self.inner_loss_)

    def _trainer(self, n_members: int, n_labels: int):
        """A compiled network for this architecture, reset to this fit's start: the seeded initial
        weights and dropout seeds of a freshly built network, the optimizer's state as built.

        Keras traces a network's training step once per network object (about 3 CPU-seconds here,
        as much as ten epochs on the demo), so the folds of a second-level OOF, the full-pool fit
        and the ablation's refits share one network per architecture instead of tracing their own;
        after the reset a fit is the same as on a new network (tests/test_stackers.py checks it)."""
        import keras
        key = (n_members, n_labels, self.filters, self.hidden_units, self.dropout, self.learning_rate, self.seed)
        if key not in _TRAINERS:
            trainer = self._build(n_members, n_labels)
            trainer.compile(optimizer=keras.optimizers.Adam(self.learning_rate),
                            loss=keras.losses.BinaryCrossentropy(from_logits=True))
            trainer.optimizer.build(trainer.trainable_variables)
            _TRAINERS[key] = (trainer, [variable.numpy() for variable in trainer.optimizer.variables])
        trainer, optimizer_start = _TRAINERS[key]
        keras.utils.set_random_seed(self.seed)
        fresh = self._build(n_members, n_labels)
        for variable, start in zip(trainer.variables, fresh.variables):  # weights and dropout seed states
            variable.assign(start)
        for variable, start in zip(trainer.optimizer.variables, optimizer_start):
            variable.assign(start)
        return trainer

    def _build(self, n_members: int, n_labels: int):
        import keras
        from keras import layers
        grid = keras.Input((n_members, n_labels), name="member_label_logits")
        per_label = layers.Permute((2, 1))(grid)  # (labels, members): Dense acts along the member axis
        mix = layers.Dense(1, use_bias=False, kernel_initializer=keras.initializers.Constant(1.0 / n_members),
                           name="member_mix")(per_label)
        features = layers.Dense(self.filters, activation="relu", name="member_conv")(per_label)
        hidden = layers.Dropout(self.dropout, seed=self.seed)(layers.Flatten()(features))
        hidden = layers.Dense(self.hidden_units, activation="relu", name="all_labels")(hidden)
        hidden = layers.Dropout(self.dropout, seed=self.seed + 1)(hidden)
        correction = layers.Dense(n_labels, kernel_initializer="zeros", name="correction")(hidden)
        log_odds = layers.Add(name="log_odds")([layers.Flatten()(mix), correction])
        return keras.Model(grid, log_odds, name="grid_stacker")

    def _predict(self, stack):
        log_odds = self.model_.predict(_grid(stack), batch_size=max(self.batch_size, 1024), verbose=0)
        return 1.0 / (1.0 + np.exp(-np.asarray(log_odds, dtype=np.float64)))

    def save(self, directory: str | Path) -> None:
        """The network in Keras' own format (grid.keras); the rest joblib."""
        directory = Path(directory)
        with atomic.atomic_path(directory / MODEL_FILE, suffix=".keras") as tmp:
            self.model_.save(tmp)
        shell = copy.copy(self)
        shell.model_ = None
        Stacker.save(shell, directory)

    @classmethod
    def load(cls, directory: str | Path) -> "GridStacker":
        import keras
        stacker = super().load(directory)
        stacker.model_ = keras.saving.load_model(Path(directory) / MODEL_FILE, compile=False)
        return stacker


def _grid(stack) -> np.ndarray:
    """(images, members, labels) float32 log-odds."""
    return logit(stack.probs).astype(np.float32)
