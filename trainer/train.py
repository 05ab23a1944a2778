"""The train step: fit the chosen hyperparameters under a tf.distribute strategy, then export.

Only model building and compiling happen inside the strategy scope; ``fit`` runs
outside with callbacks for backup and restore (a killed run continues from its last
completed epoch), early stopping, the learning-rate schedule and per-epoch MLflow
metrics. Under ``multi_worker`` only the chief exports and writes artifacts.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass

import keras
import keras_tuner as kt
import tensorflow as tf

from trainer.data import make_dataset
from trainer.export import export_serving_model
from trainer.model import (
    build_model,
    compile_model,
    is_transfer,
    model_inputs,
    served_part,
    unfreeze_top,
)
from visionpipe import features as F
from visionpipe import storage
from visionpipe.config import Config, TrainerConfig

log = logging.getLogger(__name__)

BACKUP_SUFFIX = ".backup"


@dataclass(frozen=True)
class TrainResult:
    """What training produced."""

    model_uri: str
    hyperparameters: dict
    epochs_run: int  # epochs run by this call (after a resume: the remaining ones)
    metrics: dict[str, float]  # final train/valid and test metrics from the trainer's path
    resumed_from_epoch: int = 0  # the first epoch this call ran (0: a fresh start)
    replicas: int = 1
    chief: bool = True
    history: dict[str, list[float]] | None = None


class MlflowEpochLogger(keras.callbacks.Callback):
    """Logs every epoch's metrics to an MLflow run (step = epoch).

    The run is ``run_id``, or the active run; without either, nothing is logged.
    """

    def __init__(self, prefix: str = "", run_id: str = "") -> None:
        super().__init__()
        self._prefix = prefix
        self._run_id = run_id

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Logs ``logs`` at step ``epoch``."""
        import time

        import mlflow
        from mlflow.entities import Metric

        from visionpipe import tracking

        active = mlflow.active_run()
        run_id = self._run_id or (active.info.run_id if active else "")
        if not run_id or not logs:
            return
        now = int(time.time() * 1000)
        metrics = [Metric(f"{self._prefix}{k}", float(v), now, epoch) for k, v in logs.items()]
        tracking.retrying(mlflow.MlflowClient().log_batch, run_id, metrics=metrics)


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


def cosine_schedule(base_rate: float, epochs: int) -> keras.callbacks.Callback:
    """Cosine decay of the learning rate from ``base_rate`` towards 0 over ``epochs``."""
    return keras.callbacks.LearningRateScheduler(
        lambda epoch: base_rate * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
    )


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


def choose_strategy(name: str) -> tf.distribute.Strategy:
    """The distribution strategy.

    ``auto`` mirrors over several GPUs, else uses TensorFlow's default strategy (what a
    plain ``model.fit`` uses); ``one_device`` pins one device with ``OneDeviceStrategy``,
    which made CPU epochs 2-6x slower on the sample data; ``multi_worker`` reads the
    cluster from ``TF_CONFIG`` (``visionpipe train --workers N`` sets it locally).
    """
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError(
                "trainer.strategy=multi_worker needs TF_CONFIG (the cluster and this task); "
                "run `visionpipe train --workers N` locally, or set it on each worker"
            )
        return MultiWorkerStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    return tf.distribute.get_strategy()


def is_chief() -> bool:
    """Whether this process exports and logs: the chief, or worker 0 without a chief."""
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = config.get("task") or {}
    if not task:
        return True
    if task.get("type") == "chief":
        return True
    has_chief = bool((config.get("cluster") or {}).get("chief"))
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0 and not has_chief


def use_mixed_precision(trainer: TrainerConfig) -> bool:
    """``mixed_float16`` when configured on, or on ``auto`` with a GPU."""
    if trainer.mixed_precision == "auto":
        return bool(tf.config.list_physical_devices("GPU"))
    return trainer.mixed_precision == "on"


def class_weights(labels: list[str], counts: dict[str, int], mode: str) -> dict[int, float] | None:
    """Balanced class weights ``n / (k * n_c)``, or None.

    ``auto`` weights only when the largest class has at least 1.5x the examples of the
    smallest; ``balanced`` always; ``none`` never.
    """
    n = [max(int(counts.get(label, 0)), 1) for label in labels]
    if mode == "none" or (mode == "auto" and max(n) < 1.5 * min(n)):
        return None
    total = sum(n)
    return {i: total / (len(n) * c) for i, c in enumerate(n)}


def planned_epochs(trainer: TrainerConfig, examples: int, batch_size: int) -> int:
    """``trainer.epochs``, or more when that makes fewer than ``trainer.min_steps`` steps.

    What a model learns depends on its optimizer steps more than on its epochs: on
    generated glyphs, 4 classes x 150 images, 20 epochs (300 steps) reached 0.39 test
    accuracy and 50 epochs (750 steps) 1.0. The default, 750, is about what 20 epochs
    make on the 1,222 training images of the sample data.
    """
    steps_per_epoch = max(1, math.ceil(examples / batch_size)) if examples else 1
    return max(trainer.epochs, math.ceil(trainer.min_steps / steps_per_epoch))


def load_hyperparameters(uri: str | None) -> kt.HyperParameters:
    """Hyperparameters written by the tune step; empty (all defaults) when ``uri`` is None."""
    if not uri:
        return kt.HyperParameters()
    data = storage.read_json(storage.join(uri, F.HYPERPARAMETERS_FILE))
    return kt.HyperParameters.from_config(data["config"])


def backup_dir(model_uri: str) -> str:
    """Where an unfinished training keeps its per-epoch state (removed when it completes)."""
    return model_uri.rstrip("/") + BACKUP_SUFFIX


def run_train(
    examples_uri: str,
    transform_graph_uri: str,
    hyperparameters_uri: str | None,
    model_uri: str,
    config: Config,
    artifacts_dir: str | None = None,
    callbacks: list[keras.callbacks.Callback] | None = None,
) -> TrainResult:
    """Trains the model on the transformed train split, validates on valid, exports.

    Rerun with the same arguments after a crash, it continues from the last completed
    epoch (the state is kept in ``<model_uri>.backup`` until training completes).

    Args:
        examples_uri: the transform step's examples.
        transform_graph_uri: the transform graph (embedded in the export).
        hyperparameters_uri: the tune step's output, or None for the configured defaults.
        model_uri: directory for the exported serving SavedModel.
        config: the validated configuration.
        artifacts_dir: if given (and this is the chief), the model summary, training
            curves (PNG), history and TensorBoard logs are written there.
        callbacks: more Keras callbacks for every ``fit`` phase (progress, timing),
            called after the trainer's own.

    Returns:
        Where the model went, the hyperparameters used and the final metrics.

    Raises:
        ValueError: the batch size is smaller than the number of replicas, or the
            multi-worker cluster is not configured; before training starts.
        WeightsError: the configured backbone weights cannot be loaded.
    """
    from components.transform.transform import TransformGraph

    trainer = config.trainer
    keras.utils.set_random_seed(trainer.seed)
    graph = TransformGraph.load(transform_graph_uri)
    hp = load_hyperparameters(hyperparameters_uri)
    strategy = choose_strategy(trainer.strategy)
    replicas = strategy.num_replicas_in_sync
    chief = is_chief()
    mixed = use_mixed_precision(trainer)
    previous_policy = keras.mixed_precision.global_policy()
    if mixed:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        with strategy.scope():
            model = build_model(
                hp, **model_inputs(graph), trainer=trainer, tuner=config.tuner, replicas=replicas
            )
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    batch_size = int(hp.get("batch_size"))
    if batch_size < replicas:
        raise ValueError(
            f"batch size {batch_size} is smaller than the {replicas} replicas: each replica "
            "needs at least one example (the batch size is global)"
        )
    counts = graph.statistics.get("examples", {})
    multi_worker = isinstance(strategy, MultiWorkerStrategy)
    data = {
        "image_shape": graph.image_shape,
        "num_classes": len(graph.labels) if trainer.mix != "none" else 0,
        "cache_max_mb": trainer.cache_max_mb,
        # Multi-worker: whole batches only (an empty replica batch breaks the step) and
        # a fixed number of training steps per epoch on every worker.
        "drop_remainder": multi_worker,
    }
    train = make_dataset(
        examples_uri,
        "train",
        batch_size=batch_size,
        shuffle=True,
        seed=trainer.seed,
        mix=trainer.mix,
        mix_alpha=trainer.mix_alpha,
        examples=counts.get("train"),
        repeat=multi_worker,
        **data,
    )
    steps = max(1, counts.get("train", 0) // batch_size) if multi_worker else None

    def eval_data(split: str):
        """The split, and under multi-worker the steps that cover it in whole batches.

        Multi-worker evaluation repeats the split and runs ceil(n / batch) whole
        batches: the last one wraps around to the first examples (fewer than a batch
        counted twice) rather than leaving a replica an empty batch.
        """
        n = counts.get(split, 0)
        ds = make_dataset(
            examples_uri,
            split,
            batch_size=batch_size,
            examples=n or None,
            repeat=multi_worker,
            **data,
        )
        return ds, (max(1, math.ceil(n / batch_size)) if multi_worker else None)

    valid = eval_data("valid")
    weights = class_weights(graph.labels, graph.statistics["label_counts"], trainer.class_weights)
    rate = float(hp.get("learning_rate")) * (replicas if trainer.scale_learning_rate else 1)
    log.info(
        "train: %s, %d replicas, batch %d, rate %g, mixed precision %s, class weights %s, "
        "hyperparameters %s",
        trainer.model,
        replicas,
        batch_size,
        rate,
        mixed,
        weights,
        hp.values,
    )
    backup = backup_dir(model_uri) if chief else tempfile.mkdtemp(prefix="visionpipe-backup-")
    tensorboard_dir = tempfile.mkdtemp(prefix="visionpipe-tb-") if trainer.tensorboard else None
    fit = _Fit(model, train, valid, weights, trainer, chief, tensorboard_dir, steps, callbacks)
    epochs = planned_epochs(trainer, counts.get("train", 0), batch_size)
    history, first_epoch = fit.run(storage.join(backup, "head"), 0, epochs, rate)
    if is_transfer(trainer) and trainer.fine_tune_epochs:
        unfrozen = unfreeze_top(model, trainer.fine_tune_layers)
        compile_model(model, rate * trainer.fine_tune_learning_rate_factor, trainer)
        log.info("train: fine-tuning the top %d backbone layers", unfrozen)
        tuned, first = fit.run(
            storage.join(backup, "fine_tune"),
            epochs,
            epochs + trainer.fine_tune_epochs,
            rate * trainer.fine_tune_learning_rate_factor,
        )
        for key, values in tuned.items():
            history.setdefault(key, []).extend(values)
        first_epoch = first_epoch if history.get("loss") else first
    epochs_run = len(next(iter(history.values()), []))
    metrics = {k: float(v[-1]) for k, v in history.items() if v}
    test_data, test_steps = eval_data("test")
    test = model.evaluate(test_data, steps=test_steps, return_dict=True, verbose=0)
    metrics.update({f"test_{k}": float(v) for k, v in test.items()})
    if chief:
        export_serving_model(served_part(model), graph, model_uri)
        storage.write_json(
            storage.join(model_uri, F.TRAINING_RECORD),
            {"hyperparameters": hp.values, "labels": graph.labels, "metrics": metrics},
        )
        if artifacts_dir:
            write_artifacts(model, history, tensorboard_dir, artifacts_dir)
        storage.remove(backup)
        log.info("train: exported %s; metrics %s", model_uri, json.dumps(metrics))
    else:
        shutil.rmtree(backup, ignore_errors=True)
    if tensorboard_dir:
        shutil.rmtree(tensorboard_dir, ignore_errors=True)
    return TrainResult(
        model_uri,
        dict(hp.values),
        epochs_run,
        metrics,
        resumed_from_epoch=first_epoch,
        replicas=replicas,
        chief=chief,
        history=history,
    )


class _Fit:
    """One ``fit`` phase with this run's callbacks; a finished phase is not run again."""

    def __init__(
        self, model, train, valid, weights, trainer: TrainerConfig, chief, tb_dir, steps, extra
    ):
        self._steps = steps
        self._model = model
        self._train = train
        self._valid = valid
        self._weights = weights
        self._trainer = trainer
        self._chief = chief
        self._tb_dir = tb_dir
        self._extra = list(extra or [])

    def run(self, backup: str, first: int, last: int, rate: float):
        """Fits epochs ``first`` to ``last``; returns the history and the first epoch run."""
        done = storage.join(backup, "done.json")
        if storage.exists(done):  # completed before a crash in a later phase
            self._model.load_weights(storage.join(backup, "done.weights.h5"))
            log.info("train: phase in %s already completed; its weights are restored", backup)
            return {}, last
        callbacks = [
            PeriodicBackup(backup, self._trainer.checkpoint_every),
            keras.callbacks.EarlyStopping(
                monitor="val_loss",
                patience=self._trainer.early_stopping_patience,
                restore_best_weights=True,
            ),
        ]
        schedule = learning_rate_schedule(self._trainer, rate, last)
        if schedule is not None:
            callbacks.append(schedule)
        if self._chief:
            callbacks.append(MlflowEpochLogger())
            if self._tb_dir:
                callbacks.append(
                    keras.callbacks.TensorBoard(self._tb_dir, histogram_freq=0, write_graph=False)
                )
        callbacks += self._extra
        history = self._model.fit(
            self._train,
            validation_data=self._valid[0],
            validation_steps=self._valid[1],
            initial_epoch=first,
            epochs=last,
            steps_per_epoch=self._steps,
            class_weight=self._weights,
            callbacks=callbacks,
            shuffle=False,  # the dataset shuffles itself; fit's flag does nothing on one
            verbose=2,
        )
        if self._chief:
            storage.makedirs(backup)
            self._model.save_weights(storage.join(backup, "done.weights.h5"))
            storage.write_json(done, {"epochs": last})
        started = history.epoch[0] if history.epoch else last
        return {k: [float(v) for v in vs] for k, vs in history.history.items()}, started


class PeriodicBackup(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` that saves every ``every`` epochs rather than every epoch.

    A save of the default model costs ~0.13 s (weights and optimizer state to HDF5,
    the previous copy kept in case the process dies mid-save), ~5% of a sample-data
    epoch; a killed run resumes from the last save, losing fewer than ``every`` epochs.
    """

    def __init__(self, backup: str, every: int) -> None:
        super().__init__(backup, double_checkpoint=True)
        self._every = every

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Saves after every ``every``-th epoch."""
        if (epoch + 1) % self._every == 0:
            super().on_epoch_end(epoch, logs)


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


def write_artifacts(model, history: dict, tensorboard_dir: str | None, out: str) -> None:
    """Model summary, training curves (PNG), history and TensorBoard logs under ``out``."""
    os.makedirs(out, exist_ok=True)
    lines: list[str] = []
    model.summary(print_fn=lambda line, **_: lines.append(line), expand_nested=True)
    with open(os.path.join(out, "model_summary.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out, "history.json"), "w") as f:
        json.dump(history, f, indent=1)
    plot_curves(history, os.path.join(out, "training_curves.png"))
    if tensorboard_dir and os.path.isdir(tensorboard_dir):
        shutil.copytree(tensorboard_dir, os.path.join(out, "tensorboard"), dirs_exist_ok=True)


def plot_curves(history: dict, path: str) -> None:
    """Loss and accuracy per epoch, training and validation, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for key, style in ((metric, "-"), (f"val_{metric}", "--")):
            if history.get(key):
                ax.plot(range(1, len(history[key]) + 1), history[key], style, label=key)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    with open(path, "wb") as f:
        f.write(buf.getvalue())
