"""The train step: fit the chosen hyperparameters under a tf.distribute strategy, then export.

Only model building and compiling happen inside the strategy scope; ``fit`` runs
outside with callbacks for early stopping and per-epoch MLflow metrics.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass

import keras
import keras_tuner as kt
import tensorflow as tf

from trainer.data import make_dataset
from trainer.export import export_serving_model
from trainer.model import build_model, model_inputs, served_part
from visionpipe import features as F
from visionpipe import storage
from visionpipe.config import Config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """What training produced."""

    model_uri: str
    hyperparameters: dict
    epochs_run: int
    metrics: dict[str, float]  # final train/valid and test metrics from the trainer's path


class MlflowEpochLogger(keras.callbacks.Callback):
    """Logs every epoch's metrics to the active MLflow run (step = epoch)."""

    def __init__(self, prefix: str = "") -> None:
        super().__init__()
        self._prefix = prefix

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Logs ``logs`` at step ``epoch`` if an MLflow run is active."""
        import mlflow

        if mlflow.active_run() and logs:
            mlflow.log_metrics(
                {f"{self._prefix}{k}": float(v) for k, v in logs.items()}, step=epoch
            )


def cosine_schedule(base_rate: float, epochs: int) -> keras.callbacks.Callback:
    """Cosine decay of the learning rate from ``base_rate`` towards 0 over ``epochs``."""
    return keras.callbacks.LearningRateScheduler(
        lambda epoch: base_rate * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
    )


def choose_strategy(name: str) -> tf.distribute.Strategy:
    """The distribution strategy: ``auto`` mirrors over several GPUs, else uses one device."""
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy()
    device = "/gpu:0" if gpus else "/cpu:0"
    return tf.distribute.OneDeviceStrategy(device)


def load_hyperparameters(uri: str | None) -> kt.HyperParameters:
    """Hyperparameters written by the tune step; empty (all defaults) when ``uri`` is None."""
    if not uri:
        return kt.HyperParameters()
    data = storage.read_json(storage.join(uri, F.HYPERPARAMETERS_FILE))
    return kt.HyperParameters.from_config(data["config"])


def run_train(
    examples_uri: str,
    transform_graph_uri: str,
    hyperparameters_uri: str | None,
    model_uri: str,
    config: Config,
) -> TrainResult:
    """Trains the model on the transformed train split, validates on valid, exports.

    Args:
        examples_uri: the transform step's examples.
        transform_graph_uri: the transform graph (embedded in the export).
        hyperparameters_uri: the tune step's output, or None for the configured defaults.
        model_uri: directory for the exported serving SavedModel.
        config: the validated configuration.

    Returns:
        Where the model went, the hyperparameters used and the final metrics.
    """
    from components.transform.transform import TransformGraph

    keras.utils.set_random_seed(config.trainer.seed)
    graph = TransformGraph.load(transform_graph_uri)
    labels = graph.labels
    hp = load_hyperparameters(hyperparameters_uri)
    strategy = choose_strategy(config.trainer.strategy)
    with strategy.scope():
        model = build_model(hp, **model_inputs(graph), trainer=config.trainer, tuner=config.tuner)
    batch_size = int(hp.get("batch_size"))
    shape = graph.image_shape
    train = make_dataset(
        examples_uri, "train", shape, batch_size, shuffle=True, seed=config.trainer.seed
    )
    valid = make_dataset(examples_uri, "valid", shape, batch_size)
    log.info("train: %d replicas, hyperparameters %s", strategy.num_replicas_in_sync, hp.values)
    history = model.fit(
        train,
        validation_data=valid,
        epochs=config.trainer.epochs,
        callbacks=[
            keras.callbacks.EarlyStopping(
                monitor="val_loss",
                patience=config.trainer.early_stopping_patience,
                restore_best_weights=True,
            ),
            cosine_schedule(float(hp.get("learning_rate")), config.trainer.epochs),
            MlflowEpochLogger(),
        ],
        verbose=2,
    )
    metrics = {k: float(v[-1]) for k, v in history.history.items()}
    test = model.evaluate(
        make_dataset(examples_uri, "test", shape, batch_size), return_dict=True, verbose=0
    )
    metrics.update({f"test_{k}": float(v) for k, v in test.items()})
    export_serving_model(served_part(model), graph, model_uri)
    storage.write_json(
        storage.join(model_uri, "assets.extra", "training.json"),
        {"hyperparameters": hp.values, "labels": labels, "metrics": metrics},
    )
    log.info("train: exported %s; metrics %s", model_uri, json.dumps(metrics))
    return TrainResult(model_uri, dict(hp.values), len(history.epoch), metrics)
