"""Trainer benchmarks: ``visionpipe train`` and a tuning trial against a plain ``model.fit``.

The baselines are what a competent engineer writes first: the same model
(``build_model`` with the default hyperparameters) fitted with no strategy object and
no callbacks, once on the whole training split as in-memory arrays and once on the
project's tf.data pipeline. Against them, in the same process and run:

- ``run_train`` (what ``visionpipe train`` calls): its steady epochs, timed from one
  epoch's end to the next, so validation, checkpoints, early stopping, the schedule and
  the MLflow logger are all inside the figure;
- ``run_tune`` with one trial of the same epochs, wall time against the plain fit's
  (model building and first-epoch tracing included on both sides);
- the input pipeline alone (``fit`` of a one-weight model), and one against two local
  workers (``visionpipe train --workers N``, start-up included).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

EPOCHS = 6


class EpochEnds:
    """A Keras callback factory recording when each epoch ends (all callbacks before it done)."""

    def __init__(self):
        import keras

        ends = self.ends = []

        class Timer(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                ends.append(time.monotonic())

            def on_epoch_end(self, epoch, logs=None):
                ends.append(time.monotonic())

        self.callback = Timer()

    def steady(self) -> float:
        """Median seconds of the epochs after the first (tracing and cache filling)."""
        gaps = [b - a for a, b in zip(self.ends[1:], self.ends[2:], strict=False)]
        return statistics.median(gaps or [self.ends[-1] - self.ends[0]])


def prepare(work: Path, data: str, overrides: list[str]):
    """Ingest and transform ``data`` under ``work``; returns (config, examples dir, graph)."""
    from components.ingest.ingest import run_ingest
    from components.transform.transform import run_transform
    from visionpipe.config import load_config
    from visionpipe.transform_graph import TransformGraph

    config = load_config(overrides=overrides)
    ingested = run_ingest(data, str(work / "raw"), config)
    run_transform(
        ingested.output_uri,
        str(work / "t" / "examples"),
        str(work / "t" / "transform_graph"),
        config,
    )
    return (
        config,
        str(work / "t" / "examples"),
        TransformGraph.load(str(work / "t" / "transform_graph")),
    )


def bench_trainer(work: Path, data: str, overrides: list[str]) -> list[tuple]:
    """Table rows (name, seconds, note)."""
    config, examples, graph = prepare(work, data, overrides)
    n = graph.statistics["examples"]["train"]
    rows = []
    arrays_rate, arrays_wall = _plain_fit(config, examples, graph, arrays=True)
    dataset_rate, dataset_wall = _plain_fit(config, examples, graph, arrays=False)
    rows.append(
        (
            f"plain fit, arrays ({n} images, {EPOCHS} epochs)",
            arrays_wall,
            f"{arrays_rate:.0f} images/s steady",
        )
    )
    rows.append(("plain fit, project tf.data", dataset_wall, f"{dataset_rate:.0f} images/s steady"))
    train_rate, train_wall = _run_train(work, config, examples, graph)
    rows.append(
        (
            "run_train (visionpipe train), default config",
            train_wall,
            f"{train_rate:.0f} images/s steady = {train_rate / dataset_rate:.2f}x plain "
            f"tf.data fit, {train_rate / arrays_rate:.2f}x plain arrays fit (target >= 0.8)",
        )
    )
    tune_wall = _run_tune(work, config, examples, graph)
    rows.append(
        (
            f"run_tune, 1 trial of {EPOCHS} epochs",
            tune_wall,
            f"plain fit {dataset_wall:.1f} s = {dataset_wall / tune_wall:.2f}x the trial's speed",
        )
    )
    rows.append(_input_pipeline_alone(config, examples, graph, dataset_rate))
    for workers in (1, 2):
        seconds = _train_cli(work, workers, overrides)
        rows.append(
            (
                f"train {EPOCHS} epochs, {workers} worker(s), CLI",
                seconds,
                f"{EPOCHS * n / seconds:.0f} images/s (start-up included)",
            )
        )
    return rows


def _model(config, graph):
    import keras_tuner as kt

    from trainer.model import build_model, model_inputs

    return build_model(
        kt.HyperParameters(), **model_inputs(graph), trainer=config.trainer, tuner=config.tuner
    )


def _plain_fit(config, examples, graph, arrays: bool) -> tuple[float, float]:
    """The baseline: build, then ``fit`` with no strategy and no callbacks but a timer."""
    import keras
    import numpy as np

    from trainer.data import make_dataset

    keras.utils.set_random_seed(config.trainer.seed)
    n = graph.statistics["examples"]["train"]
    batch = config.trainer.batch_size
    ds = make_dataset(examples, "train", graph.image_shape, batch, shuffle=True, examples=n)
    if arrays:  # loading the arrays is not timed: it is not the baseline's training
        batches = [(a.numpy(), b.numpy()) for a, b in ds]
        x = np.concatenate([a for a, _ in batches])
        y = np.concatenate([b for _, b in batches])
    timer = EpochEnds()
    started = time.monotonic()
    model = _model(config, graph)
    if arrays:
        model.fit(x, y, batch_size=batch, epochs=EPOCHS, callbacks=[timer.callback], verbose=0)
    else:
        model.fit(ds, epochs=EPOCHS, callbacks=[timer.callback], verbose=0, shuffle=False)
    return n / timer.steady(), time.monotonic() - started


def _run_train(work: Path, config, examples, graph) -> tuple[float, float]:
    from trainer.train import run_train

    settings = config.with_overrides(
        [f"trainer.epochs={EPOCHS}", "trainer.early_stopping_patience=100", "trainer.min_steps=0"]
    )
    timer = EpochEnds()
    started = time.monotonic()
    run_train(
        examples,
        str(work / "t" / "transform_graph"),
        None,
        str(work / "model-bench"),
        settings,
        callbacks=[timer.callback],
    )
    return graph.statistics["examples"]["train"] / timer.steady(), time.monotonic() - started


def _run_tune(work: Path, config, examples, graph) -> float:
    from trainer.tune import run_tune

    settings = config.with_overrides(
        [f"tuner.epochs={EPOCHS}", "tuner.max_trials=1", "tuner.algorithm=random"]
    )
    started = time.monotonic()
    run_tune(examples, str(work / "t" / "transform_graph"), str(work / "tune-bench"), settings)
    return time.monotonic() - started


def _input_pipeline_alone(config, examples, graph, train_rate: float) -> tuple:
    import keras

    from trainer.data import make_dataset

    n = graph.statistics["examples"]["train"]
    batch = config.trainer.batch_size
    inputs = keras.Input(graph.image_shape)
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    idle = keras.Model(inputs, keras.layers.Dense(1, use_bias=False)(pooled))
    idle.compile(optimizer="sgd", loss=keras.losses.MeanSquaredError())
    ds = make_dataset(examples, "train", graph.image_shape, batch, shuffle=True, examples=n)
    ds = ds.map(lambda x, y: (x, keras.ops.cast(y, "float32")))
    timer = EpochEnds()
    idle.fit(ds, epochs=EPOCHS, callbacks=[timer.callback], verbose=0, shuffle=False)
    rate = n / timer.steady()
    return (
        f"input pipeline alone, batch {batch}",
        timer.steady(),
        f"{rate:.0f} images/s = {rate / train_rate:.1f}x the training step",
    )


def _train_cli(work: Path, workers: int, overrides: list[str]) -> float:
    """Wall time of ``visionpipe train --workers N`` (start-up included)."""
    out = work / f"model-{workers}"
    args = [
        sys.executable,
        "-m",
        "pipelines.cli",
        "train",
        "--transformed",
        str(work / "t"),
        "--out",
        str(out),
        "--workers",
        str(workers),
        "--set",
        f"trainer.epochs={EPOCHS}",
        "--set",
        "trainer.early_stopping_patience=100",
        "--set",
        "trainer.min_steps=0",
    ]
    for item in overrides:
        args += ["--set", item]
    env = {**os.environ, "VISIONPIPE_HOME": str(work / "home"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    started = time.monotonic()
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"train --workers {workers} failed: {done.stderr[-2000:]}")
    json.loads(done.stdout.strip().splitlines()[-1])
    return time.monotonic() - started
