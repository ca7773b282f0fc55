"""Keras callbacks for the executor tests. They live in their own module so Ray workers can
import them (a callback travels to a worker pickled by reference)."""
from __future__ import annotations

import os
from pathlib import Path

import keras


class KillWorkerOnce(keras.callbacks.Callback):
    """Kills its own process (as a node losing a worker would) at the `at_step`-th training step,
    the first time only: a marker file remembers that it happened."""

    def __init__(self, marker: str, at_step: int):
        super().__init__()
        self.marker, self.at_step, self.steps = marker, at_step, 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.steps == self.at_step:
            try:  # O_EXCL: of two units reaching the step at once, only one dies
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
            os._exit(1)


class StepCounter(keras.callbacks.Callback):
    """Appends a line per training step to a file (across processes and retries)."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def on_train_batch_end(self, batch, logs=None):
        with open(self.path, "a") as handle:
            handle.write("1\n")


def unit_that_finishes(value, folder: str):
    """A unit that writes its artifact and returns."""
    Path(folder, f"{value}.done").write_text(str(os.getpid()))
    return value


def unit_whose_worker_always_dies():
    os._exit(1)


class FailOnFit(keras.callbacks.Callback):
    """Raises at the start of the `at`-th fit, counted in a file (across processes)."""

    def __init__(self, path: str, at: int):
        super().__init__()
        self.path, self.at = path, at

    def on_train_begin(self, logs=None):
        with open(self.path, "a") as handle:
            handle.write("1\n")
        if len(Path(self.path).read_text().splitlines()) == self.at:
            raise RuntimeError(f"fit {self.at} refused")
