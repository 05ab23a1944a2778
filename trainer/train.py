"""The train step: fit the chosen hyperparameters under a tf.distribute strategy, then export.

``run_train`` reads in order: the plan (``trainer.plan``: every number decided before
TensorFlow runs), the model built inside the strategy scope, the datasets
(``trainer.data``), the fit phases (head, then fine-tuning for a pretrained backbone),
the test evaluation and the export. ``fit`` runs outside the scope with callbacks
(``trainer.callbacks``) for backup and restore (a killed run continues from its last
saved epoch), early stopping, the learning-rate schedule and per-epoch metrics to the
given tracker. Under ``multi_worker`` only the chief exports and writes artifacts.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass

import keras
import keras_tuner as kt

from trainer.artifacts import write_artifacts
from trainer.callbacks import MetricsLogger, PeriodicBackup, learning_rate_schedule
from trainer.data import split_datasets
from trainer.distribute import choose_strategy, is_chief, use_mixed_precision
from trainer.export import export_serving_model, preprocessing_contract, save_classifier
from trainer.model import build_model, compile_model, model_inputs, served_part, unfreeze_top
from trainer.plan import TrainPlan, plan_training
from visionpipe import features as F
from visionpipe import storage
from visionpipe.config import Config, TrainerConfig
from visionpipe.tracker import NullTracker, Tracker
from visionpipe.transform_graph import TransformGraph

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
    epochs_planned: int = 0  # over all phases; early stopping may end sooner
    epochs_reason: str = ""  # trainer.epochs, auto, or auto raised to make min_steps
    replicas: int = 1
    chief: bool = True


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
    tracker: Tracker | None = None,
) -> TrainResult:
    """Trains the model on the transformed train split, validates on valid, exports.

    Rerun with the same arguments after a crash, it continues from the last saved
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
        tracker: receives every epoch's metrics (on the chief); nothing by default.

    Returns:
        Where the model went, the hyperparameters used and the final metrics.

    Raises:
        ValueError: the batch size is smaller than the number of replicas, or the
            multi-worker cluster is not configured; before training starts.
        WeightsError: the configured backbone weights cannot be loaded.
    """
    trainer = config.trainer
    keras.utils.set_random_seed(trainer.seed)
    graph = TransformGraph.load(transform_graph_uri)
    hp = load_hyperparameters(hyperparameters_uri)
    strategy = choose_strategy(trainer.strategy)
    mixed = use_mixed_precision(trainer)
    model = _build(hp, graph, config, strategy, mixed)  # registers the defaults in hp
    plan = plan_training(
        trainer,
        graph.statistics,
        hp.values,
        strategy.num_replicas_in_sync,
        multi_worker=trainer.strategy == "multi_worker",
    )
    log.info("%s; hyperparameters %s", plan.describe(trainer.model, mixed), hp.values)
    data = split_datasets(examples_uri, graph, plan.batch_size, trainer, plan.multi_worker)
    chief = is_chief()
    extra = [MetricsLogger(tracker or NullTracker()), *(callbacks or [])] if chief else callbacks
    with _Workspace(model_uri, chief, trainer.tensorboard) as space:
        fit = _Fit(model, data, plan, trainer, chief, space.tensorboard, extra)
        history, first_epoch = fit.phases(space.backup)
        metrics = {k: float(v[-1]) for k, v in history.items() if v}
        test = model.evaluate(
            data["test"], steps=plan.eval_steps.get("test"), return_dict=True, verbose=0
        )
        metrics.update({f"test_{k}": float(v) for k, v in test.items()})
        if chief:
            _export(model, graph, hp.values, metrics, model_uri, config)
            if artifacts_dir:
                write_artifacts(model, history, space.tensorboard, artifacts_dir)
            space.completed = True
    return TrainResult(
        model_uri,
        dict(hp.values),
        len(next(iter(history.values()), [])),
        metrics,
        resumed_from_epoch=first_epoch,
        replicas=plan.replicas,
        chief=chief,
        epochs_planned=plan.epochs,
        epochs_reason=plan.epochs_reason,
    )


def _build(hp, graph: TransformGraph, config: Config, strategy, mixed: bool) -> keras.Model:
    """The compiled model, built in the strategy's scope (under mixed precision if asked)."""
    previous_policy = keras.mixed_precision.global_policy()
    if mixed:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        with strategy.scope():
            return build_model(
                hp,
                **model_inputs(graph),
                trainer=config.trainer,
                tuner=config.tuner,
                replicas=strategy.num_replicas_in_sync,
            )
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _export(
    model, graph: TransformGraph, hyperparameters, metrics, model_uri: str, config: Config
) -> None:
    """The serving SavedModel, with the training record (labels, metrics) inside it."""
    classifier = served_part(model)
    max_pixels = config.ingest.max_pixels
    limits = {
        "max_rows": config.predict.max_request_images,
        "max_request_bytes": config.predict.max_request_bytes,
    }
    export_serving_model(classifier, graph, model_uri, max_pixels)
    save_classifier(classifier, storage.join(model_uri, F.CLASSIFIER_FILE))
    storage.write_json(
        storage.join(model_uri, F.TRAINING_RECORD),
        {
            "hyperparameters": hyperparameters,
            "labels": graph.labels,
            "metrics": metrics,
            "preprocessing": preprocessing_contract(graph, max_pixels, limits),
        },
    )
    log.info("train: exported %s; metrics %s", model_uri, json.dumps(metrics))


class _Workspace:
    """The backup and TensorBoard directories of one run, and their cleanup.

    The chief's backup is ``<model_uri>.backup``, kept after a failure (a rerun
    resumes from it) and removed once the model is exported; other workers back up to
    a temporary directory of their own.
    """

    def __init__(self, model_uri: str, chief: bool, tensorboard: bool) -> None:
        self.chief = chief
        self.backup = backup_dir(model_uri) if chief else tempfile.mkdtemp(prefix="vp-backup-")
        self.tensorboard = tempfile.mkdtemp(prefix="visionpipe-tb-") if tensorboard else None
        self.completed = False

    def __enter__(self) -> _Workspace:
        return self

    def __exit__(self, *exc) -> None:
        if not self.chief:
            shutil.rmtree(self.backup, ignore_errors=True)
        elif self.completed:
            storage.remove(self.backup)
        if self.tensorboard:
            shutil.rmtree(self.tensorboard, ignore_errors=True)


class _Fit:
    """The plan's ``fit`` phases with this run's callbacks; a finished phase is not run again."""

    def __init__(
        self, model, data: dict, plan: TrainPlan, trainer: TrainerConfig, chief, tb, extra
    ):
        self._model = model
        self._chief = chief
        self._data = data
        self._plan = plan
        self._trainer = trainer
        self._tb_dir = tb if chief else None
        self._extra = list(extra or [])

    def phases(self, backup: str) -> tuple[dict[str, list[float]], int]:
        """Runs every phase; returns the joined history and the first epoch this call ran."""
        history: dict[str, list[float]] = {}
        first_run = None
        for index, phase in enumerate(self._plan.phases):
            if index:  # fine-tuning: the top of the backbone trains too, at a lower rate
                unfrozen = unfreeze_top(self._model, self._trainer.fine_tune_layers)
                compile_model(self._model, phase.rate, self._trainer)
                log.info("train: fine-tuning the top %d backbone layers", unfrozen)
            part, started = self.run(
                storage.join(backup, phase.name), phase.first, phase.last, phase.rate
            )
            if part and first_run is None:
                first_run = started
            for key, values in part.items():
                history.setdefault(key, []).extend(values)
        return history, self._plan.phases[-1].last if first_run is None else first_run

    def run(self, backup: str, first: int, last: int, rate: float):
        """Fits epochs ``first`` to ``last``; returns the history and the first epoch run."""
        done = storage.join(backup, "done.json")
        if storage.exists(done):  # completed before a crash in a later phase
            self._model.load_weights(storage.join(backup, "done.weights.h5"))
            log.info("train: phase in %s already completed; its weights are restored", backup)
            return {}, last
        history = self._model.fit(
            self._data["train"],
            validation_data=self._data["valid"],
            validation_steps=self._plan.eval_steps.get("valid"),
            initial_epoch=first,
            epochs=last,
            steps_per_epoch=self._plan.train_steps,
            class_weight=self._plan.class_weights,
            callbacks=self._callbacks(backup, rate, last),
            shuffle=False,  # the dataset shuffles itself; fit's flag does nothing on one
            verbose=2,
        )
        if self._chief:
            storage.makedirs(backup)
            self._model.save_weights(storage.join(backup, "done.weights.h5"))
            storage.write_json(done, {"epochs": last})
        started = history.epoch[0] if history.epoch else last
        return {k: [float(v) for v in vs] for k, vs in history.history.items()}, started

    def _callbacks(self, backup: str, rate: float, last: int) -> list:
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
        if self._tb_dir:
            callbacks.append(
                keras.callbacks.TensorBoard(self._tb_dir, histogram_freq=0, write_graph=False)
            )
        return callbacks + self._extra
