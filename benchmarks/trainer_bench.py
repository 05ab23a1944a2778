"""Trainer benchmarks: the input pipeline against training, and 1 against 2 workers.

Input pipeline alone: steps per second of ``fit`` with a model that does nothing (one
trainable scalar), on the same tf.data pipeline as training; against training steps
per second of the default model. Then training images per second with one process and
with two local workers (``visionpipe train --workers 2``), from the epochs' wall time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

EPOCHS = 4


class _StepTimer:
    """Seconds of each epoch after the first (which includes tracing and cache filling)."""

    def __init__(self):
        import keras

        class Timer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.times = []

            def on_epoch_begin(self, epoch, logs=None):
                self._start = time.monotonic()

            def on_epoch_end(self, epoch, logs=None):
                self.times.append(time.monotonic() - self._start)

        self.callback = Timer()

    def steady(self) -> float:
        times = self.callback.times[1:] or self.callback.times
        return sum(times) / len(times)


def bench_trainer(work: Path, data: str, overrides: list[str]) -> list[tuple]:
    """Table rows (name, seconds, note)."""
    import keras
    import keras_tuner as kt
    import numpy as np

    from components.ingest.ingest import run_ingest
    from components.transform.transform import TransformGraph, run_transform
    from trainer.data import make_dataset
    from trainer.model import build_model, model_inputs
    from visionpipe.config import load_config

    config = load_config(overrides=overrides)
    ingested = run_ingest(data, str(work / "raw"), config)
    run_transform(
        ingested.output_uri,
        str(work / "t" / "examples"),
        str(work / "t" / "transform_graph"),
        config,
    )
    graph = TransformGraph.load(str(work / "t" / "transform_graph"))
    batch = config.trainer.batch_size
    n = graph.statistics["examples"]["train"]
    steps = int(np.ceil(n / batch))

    def dataset():
        return make_dataset(
            str(work / "t" / "examples"),
            "train",
            graph.image_shape,
            batch,
            shuffle=True,
            examples=n,
        )

    inputs = keras.Input(graph.image_shape)
    scale = keras.layers.Dense(1, use_bias=False)  # one weight: the step costs ~nothing
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    idle = keras.Model(inputs, scale(pooled))
    idle.compile(optimizer="sgd", loss=keras.losses.MeanSquaredError())
    timer = _StepTimer()
    ds = dataset().map(lambda x, y: (x, keras.ops.cast(y, "float32")))
    idle.fit(ds, epochs=EPOCHS, callbacks=[timer.callback], verbose=0)
    pipeline_rate = steps / timer.steady()

    model = build_model(
        kt.HyperParameters(), **model_inputs(graph), trainer=config.trainer, tuner=config.tuner
    )
    timer = _StepTimer()
    model.fit(dataset(), epochs=EPOCHS, callbacks=[timer.callback], verbose=0)
    train_rate = steps / timer.steady()
    rows = [
        (
            f"input pipeline alone, batch {batch}",
            steps / pipeline_rate,
            f"{pipeline_rate:.0f} steps/s",
        ),
        (
            "training steps, default model",
            steps / train_rate,
            f"{train_rate:.0f} steps/s; pipeline = {pipeline_rate / train_rate:.1f}x training",
        ),
    ]
    for workers in (1, 2):
        seconds = _train_cli(work, workers, overrides)
        rows.append(
            (
                f"train {EPOCHS} epochs, {workers} worker(s)",
                seconds,
                f"{EPOCHS * n / seconds:.0f} images/s",
            )
        )
    return rows


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
