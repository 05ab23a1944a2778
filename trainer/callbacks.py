"""The Keras callbacks of training and tuning: metrics to a tracker, progress, backups, rates."""

from __future__ import annotations

import math

import keras

from visionpipe import storage
from visionpipe.config import TrainerConfig
from visionpipe.tracker import Tracker


class MetricsLogger(keras.callbacks.Callback):
    """Reports every epoch's metrics to a tracker (step = epoch)."""

    def __init__(self, tracker: Tracker) -> None:
        super().__init__()
        self._tracker = tracker

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Reports ``logs`` at step ``epoch``."""
        if logs:
            self._tracker.log_metrics({k: float(v) for k, v in logs.items()}, step=epoch)


class EpochProgress(keras.callbacks.Callback):
    """Reports each epoch of ``fit`` as progress of ``step``: epoch, validation, time left."""

    def __init__(self, step: str) -> None:
        super().__init__()
        self._step = step
        self._eta = None
        self._first = None  # the first epoch of this fit (after a resume: not 0)

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Starts the clock for the time left."""
        from visionpipe import progress

        self._eta = progress.Eta(self.params.get("epochs") or 1)
        self._first = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """``epoch i/n, val_accuracy x, ~s left``."""
        from visionpipe import progress

        total = self.params.get("epochs") or 1
        self._first = epoch if self._first is None else self._first
        left = self._eta.left(epoch + 1 - self._first)
        text = f"epoch {epoch + 1}/{total}"
        if logs and "val_accuracy" in logs:
            text += f", val_accuracy {float(logs['val_accuracy']):.3f}"
        if left is not None:
            text += f", ~{left:.0f} s left"
        progress.report(self._step, text, fraction=(epoch + 1) / total)


SAVED_FILE = "saved.json"  # in a backup directory: {"epochs": completed epochs saved}


class PeriodicBackup(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` that saves every ``every`` epochs rather than every epoch.

    A save of the default model costs ~0.13 s (weights and optimizer state to HDF5,
    the previous copy kept in case the process dies mid-save), ~5% of a sample-data
    epoch; a killed run resumes from the last save, losing fewer than ``every`` epochs.
    After each save, ``saved.json`` in the backup directory says how many epochs it
    holds (Keras's own metadata file is private to it).
    """

    def __init__(self, backup: str, every: int) -> None:
        super().__init__(backup, double_checkpoint=True)
        self._backup = backup
        self._every = every

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Saves after every ``every``-th epoch."""
        if (epoch + 1) % self._every == 0:
            super().on_epoch_end(epoch, logs)
            storage.write_json(storage.join(self._backup, SAVED_FILE), {"epochs": epoch + 1})


def cosine_schedule(base_rate: float, epochs: int) -> keras.callbacks.Callback:
    """Cosine decay of the learning rate from ``base_rate`` towards 0 over ``epochs``."""
    return keras.callbacks.LearningRateScheduler(
        lambda epoch: base_rate * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
    )


def learning_rate_schedule(trainer: TrainerConfig, rate: float, epochs: int):
    """The configured schedule as a callback (None for a constant rate)."""
    if trainer.lr_schedule == "cosine":
        return cosine_schedule(rate, epochs)
    if trainer.lr_schedule == "plateau":
        return keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss",
            factor=0.5,
            patience=max(2, trainer.early_stopping_patience // 3),
            min_lr=rate * 1e-3,
        )
    return None
