"""Default-model quality on three kinds of generated images, against a plain SVM.

For each kind (``visionpipe sample-data --kind``): ingest, transform, then the default
tune + train (wall time of the two library calls, what the pipeline's tune and train
steps run) and its test accuracy; the same training with the former default
augmentation (flips both ways, rotation 0.1 turn) for comparison; and the plain
baseline, an RBF SVM on 16x16 grey pixels of the same splits.
"""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.trainer_bench import prepare

# Shapes are the sample dataset; glyphs and thumbnails were not used to choose defaults.
SPECS = {
    "shapes": dict(kind="shapes", classes=5, per_class=300, size=64, seed=0),
    "glyphs": dict(kind="glyphs", classes=8, per_class=200, size=64, seed=1),
    "thumbnails": dict(kind="thumbnails", classes=8, per_class=200, size=64, seed=2),
}
OLD_AUGMENTATION = ["trainer.flip=horizontal_and_vertical", "trainer.rotation=0.1"]


def bench_quality(work: Path, overrides: list[str]) -> list[tuple]:
    """Table rows (name, seconds, note) for every kind."""
    from pipelines.sample_data import SampleSpec, generate

    rows = []
    for kind, spec in SPECS.items():
        data = work / kind / "images"
        generate(data, SampleSpec(**spec))
        config, examples, graph = prepare(work / kind, str(data), overrides)
        seconds, accuracy, chosen = _tune_and_train(work / kind, config, examples)
        rows.append(
            (f"{kind}: default tune + train", seconds, f"test accuracy {accuracy:.3f}; {chosen}")
        )
        old = config.with_overrides([*OLD_AUGMENTATION, "tuner.max_trials=0"])
        seconds, accuracy, _ = _tune_and_train(work / kind / "old", old, examples, work / kind)
        rows.append(
            (
                f"{kind}: former augmentation (flips, rotation)",
                seconds,
                f"test accuracy {accuracy:.3f}",
            )
        )
        seconds, accuracy = _svm(examples, graph)
        rows.append(
            (f"{kind}: plain RBF SVM, 16x16 grey", seconds, f"test accuracy {accuracy:.3f}")
        )
    return rows


def _tune_and_train(out: Path, config, examples: str, graph_root: Path | None = None):
    from trainer.train import run_train
    from trainer.tune import run_tune

    graph_uri = str((graph_root or out) / "t" / "transform_graph")
    started = time.monotonic()
    tuned = run_tune(examples, graph_uri, str(out / "tune"), config)
    trained = run_train(examples, graph_uri, str(out / "tune"), str(out / "model"), config)
    seconds = time.monotonic() - started
    searched = {k: tuned.best_hyperparameters[k] for k in config.tuner.search_space}
    chosen = f"{tuned.trials} trials, chose {searched}" if tuned.trials else "no search"
    return seconds, trained.metrics["test_accuracy"], chosen


def _svm(examples: str, graph) -> tuple[float, float]:
    """RBF SVM on 16x16 grey pixels; seconds of fit + predict, test accuracy."""
    import numpy as np
    import tensorflow as tf
    from sklearn.svm import SVC

    from trainer.data import make_dataset

    def split(name):
        ds = make_dataset(examples, name, graph.image_shape, 256)
        xs, ys = [], []
        for images, labels in ds:
            grey = tf.image.resize(tf.image.rgb_to_grayscale(images), (16, 16), antialias=True)
            xs.append(grey.numpy().reshape(len(labels), -1) / 255.0)
            ys.append(labels.numpy())
        return np.concatenate(xs), np.concatenate(ys)

    (x_train, y_train), (x_test, y_test) = split("train"), split("test")
    started = time.monotonic()
    svm = SVC(kernel="rbf", C=10.0, gamma="scale").fit(x_train, y_train)
    accuracy = float((svm.predict(x_test) == y_test).mean())
    return time.monotonic() - started, accuracy
