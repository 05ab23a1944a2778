"""The distribution strategy, the chief, and mixed precision."""

from __future__ import annotations

import os

import tensorflow as tf

from trainer.roles import is_chief  # noqa: F401 - part of this module's API
from visionpipe.config import TrainerConfig


class MultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """``MultiWorkerMirroredStrategy`` whose ``reduce`` takes what Keras 3 asks of it.

    Keras 3's TensorFlow trainer (keras-team/keras#20585) reduces a whole first batch
    (a nested structure) before ``fit``, and every step's metrics with ``axis=0``
    although they are scalars; the collective reduce accepts neither. Here nested
    values are reduced one by one, and a scalar is averaged across replicas (axis None).
    """

    def reduce(self, reduce_op, value, axis):
        """Cross-replica reduction of each value in ``value``."""

        def one(v):
            local = self.experimental_local_results(v)[0]
            scalar = axis is not None and getattr(local, "shape", None) is not None
            scalar = scalar and local.shape.rank == 0
            return super(MultiWorkerStrategy, self).reduce(
                reduce_op, v, axis=None if scalar else axis
            )

        return tf.nest.map_structure(one, value)


def strategy_kind(name: str, gpus: int) -> str:
    """Which strategy ``trainer.strategy`` means with ``gpus`` GPUs on this machine.

    ``auto`` mirrors over several GPUs, else takes TensorFlow's default strategy (what a
    plain ``model.fit`` uses); ``one_device`` pins one device with ``OneDeviceStrategy``,
    which made CPU epochs 2-6x slower on the sample data.

    Returns:
        ``default``, ``mirrored``, ``one_device`` or ``multi_worker``.
    """
    if name in ("multi_worker", "mirrored", "one_device"):
        return name
    return "mirrored" if gpus > 1 else "default"


def choose_strategy(name: str) -> tf.distribute.Strategy:
    """The distribution strategy ``strategy_kind`` names, on this machine's devices.

    ``multi_worker`` reads the cluster from ``TF_CONFIG`` (``visionpipe train --workers
    N`` sets it locally).
    """
    if name == "multi_worker":  # before anything lists devices: that starts TF's context
        if "TF_CONFIG" not in os.environ:
            raise ValueError(
                "trainer.strategy=multi_worker needs TF_CONFIG (the cluster and this task); "
                "run `visionpipe train --workers N` locally, or set it on each worker"
            )
        return MultiWorkerStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    kind = strategy_kind(name, len(gpus))
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    if kind == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    return tf.distribute.get_strategy()


def use_mixed_precision(trainer: TrainerConfig) -> bool:
    """``mixed_float16`` when configured on, or on ``auto`` with a GPU."""
    if trainer.mixed_precision == "auto":
        return bool(tf.config.list_physical_devices("GPU"))
    return trainer.mixed_precision == "on"
