"""Transform and serving benchmarks.

Transform: images per second through the tf.Transform step, next to ingest's on the
same data. Serving: the exported model on a batch of 64 raw encoded images (decode,
resize and normalise inside the graph) against the bare Keras classifier on the same
64 images already decoded and resized, both as compiled graphs on CPU.
"""

from __future__ import annotations

import time
from pathlib import Path

BATCH = 64


CALLS = 30


def _rate(fn, arg, calls: int = CALLS) -> float:
    """Images per second of ``fn(arg)`` on a batch, after warm-up calls."""
    for _ in range(3):
        fn(arg)
    started = time.monotonic()
    for _ in range(calls):
        fn(arg)
    return calls * BATCH / (time.monotonic() - started)


def bench_transform_and_serving(work: Path, data: str, overrides: list[str]) -> list[tuple]:
    """Table rows (name, seconds, note)."""
    import keras_tuner as kt
    import numpy as np
    import tensorflow as tf

    from components.ingest.ingest import run_ingest
    from components.transform.transform import run_transform
    from trainer.export import export_serving_model
    from trainer.model import build_model, model_inputs, served_part
    from visionpipe import features as F
    from visionpipe.config import load_config
    from visionpipe.transform_graph import TransformGraph, load_raw_split

    config = load_config(overrides=overrides)
    started = time.monotonic()
    ingested = run_ingest(data, str(work / "raw"), config)
    ingest_s = time.monotonic() - started
    images = ingested.stats["written"]
    started = time.monotonic()
    transformed = run_transform(
        ingested.output_uri, str(work / "examples"), str(work / "graph"), config
    )
    transform_s = time.monotonic() - started
    size = config.transform.image_size
    rows = [
        (f"ingest, {images} sample images", ingest_s, f"{images / ingest_s:.0f} images/s"),
        (
            f"transform, {images} images to {size}x{size}",
            transform_s,
            f"{images / transform_s:.0f} images/s",
        ),
    ]
    per_example = _bytes_per_example(transformed.examples_uri)
    rows.append(
        (
            "bytes per transformed example",
            per_example,
            f"{per_example / (size * size * 3):.3f}x height*width*3 ({size * size * 3})",
        )
    )

    graph = TransformGraph.load(transformed.transform_graph_uri)
    model = build_model(
        kt.HyperParameters(), **model_inputs(graph), trainer=config.trainer, tuner=config.tuner
    )
    classifier = served_part(model)
    export_serving_model(classifier, graph, str(work / "served"), 40_000_000)
    serve = tf.saved_model.load(str(work / "served")).signatures[F.SERVING_SIGNATURE]
    raw = load_raw_split(ingested.output_uri, "test").images
    raw = tf.constant((raw * (BATCH // len(raw) + 1))[:BATCH])
    layer = graph.output.transform_features_layer()
    decoded = tf.cast(layer({F.IMAGE_ENCODED: raw})[F.TRANSFORMED_IMAGE], tf.uint8)
    bare = tf.function(lambda x: classifier(tf.cast(x, tf.float32), training=False))
    np.testing.assert_allclose(  # the same answers, or the comparison means nothing
        serve(**{F.SERVING_INPUT: raw})["probabilities"].numpy(), bare(decoded).numpy(), atol=1e-5
    )
    served_rate = _rate(lambda x: serve(**{F.SERVING_INPUT: x}), raw)
    bare_rate = _rate(bare, decoded)
    rows.append(
        (
            f"bare Keras model, {CALLS} batches of {BATCH} decoded",
            CALLS * BATCH / bare_rate,
            f"{bare_rate:.0f} images/s",
        )
    )
    rows.append(
        (
            f"served model, {CALLS} batches of {BATCH} raw bytes",
            CALLS * BATCH / served_rate,
            f"{served_rate:.0f} images/s = {served_rate / bare_rate:.2f}x the bare model",
        )
    )
    return rows


def _bytes_per_example(examples_uri: str) -> float:
    import tensorflow as tf

    from visionpipe import features as F

    files = tf.io.gfile.glob(F.split_pattern(examples_uri, "train"))
    sizes = [len(r.numpy()) for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
    return sum(sizes) / len(sizes)
