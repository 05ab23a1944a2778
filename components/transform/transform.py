"""The transform step: tf.Transform on Beam over ingest's raw examples.

Analyzers (pixel statistics, label vocabulary and frequencies) run on the training
split only; every split is transformed with the result. Writes transformed shards per
split (``image``: the resized pixels as raw bytes, one per value; ``label``: the class
id) and the transform graph (``transform_fn/`` + ``transformed_metadata/`` +
``statistics.json``), which the trainer embeds in the served model.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from apache_beam.metrics.metric import MetricsFilter
from tensorflow_transform.tf_metadata import schema_utils
from tfx_bsl.public import tfxio

from components.ingest.example_codec import encode_example
from components.transform.preprocessing import make_preprocessing_fn, raw_feature_spec
from visionpipe import features as F
from visionpipe import storage
from visionpipe.beam import pipeline_options
from visionpipe.config import Config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TransformResult:
    """What transform wrote."""

    examples_uri: str
    transform_graph_uri: str
    examples: dict[str, int]
    labels: list[str]
    statistics: dict[str, Any]


def run_transform(
    raw_examples_uri: str, examples_uri: str, transform_graph_uri: str, config: Config
) -> TransformResult:
    """Analyzes the training split and transforms every split.

    Args:
        raw_examples_uri: ingest's output directory.
        examples_uri: where transformed shards go (``<split>/data-*.tfrecord.gz``).
        transform_graph_uri: where the transform graph goes.
        config: the validated configuration (``transform`` and ``beam`` sections).

    Returns:
        Locations, transformed example counts per split, and the label vocabulary.

    Raises:
        ValueError: the raw examples have no training shards.
    """
    patterns = {s: F.split_pattern(raw_examples_uri, s) for s in F.SPLITS}
    if not storage.glob(patterns["train"]):
        raise ValueError(f"{raw_examples_uri}: no training shards ({patterns['train']})")
    schema = schema_utils.schema_from_feature_spec(raw_feature_spec())
    preprocessing_fn = make_preprocessing_fn(
        config.transform.image_size, config.transform.resize_mode
    )
    with tempfile.TemporaryDirectory(prefix="tft-") as temp_dir:
        pipeline = beam.Pipeline(options=pipeline_options(config.beam))
        with tft_beam.Context(temp_dir=temp_dir, force_tf_compat_v1=False):
            sources = {
                s: tfxio.TFExampleRecord(
                    file_pattern=p, schema=schema, telemetry_descriptors=["visionpipe"]
                )
                for s, p in patterns.items()
                if storage.glob(p)
            }
            raw = {s: pipeline | f"Read{s}" >> src.BeamSource() for s, src in sources.items()}
            adapter = sources["train"].TensorAdapterConfig()
            transform_fn = (raw["train"], adapter) | "Analyze" >> tft_beam.AnalyzeDataset(
                preprocessing_fn
            )
            for split, data in raw.items():
                transformed, _ = ((data, adapter), transform_fn) | (
                    f"Transform{split}" >> tft_beam.TransformDataset(output_record_batches=True)
                )
                _ = transformed | f"Write{split}" >> _WriteExamples(
                    storage.join(examples_uri, split, "data"), split
                )
            _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(transform_graph_uri)
        result = pipeline.run()
        result.wait_until_finish()
    counts = _counts(result)
    statistics = _statistics(transform_output(transform_graph_uri), config)
    statistics["examples"] = counts
    storage.write_json(storage.join(transform_graph_uri, F.TRANSFORM_STATISTICS_FILE), statistics)
    labels = statistics["labels"]
    log.info("transform: %s examples, %d classes", counts, len(labels))
    return TransformResult(examples_uri, transform_graph_uri, counts, labels, statistics)


def _statistics(tft_output: tft.TFTransformOutput, config: Config) -> dict[str, Any]:
    """The analyzers' results, read back from the transform graph.

    The pixel statistics are constants of the graph: running it once on a 1-pixel
    image gives them exactly as the served model will use them.
    """
    import tensorflow as tf

    labels = [v.decode() for v in tft_output.vocabulary_by_name(F.LABEL_VOCABULARY)]
    counts = {}
    for line in tft_output.vocabulary_by_name(F.LABEL_FREQUENCIES):
        count, label = line.decode().split(" ", 1)
        counts[label] = int(count)
    probe = tf.io.encode_png(tf.zeros([1, 1, 3], tf.uint8))
    outputs = tft_output.transform_features_layer()({F.IMAGE_ENCODED: tf.reshape(probe, [1])})
    return {
        "image_size": config.transform.image_size,
        "resize_mode": config.transform.resize_mode,
        "image_mean": [float(v) for v in outputs[F.IMAGE_MEAN][0].numpy()],
        "image_std": [float(v) for v in outputs[F.IMAGE_STD][0].numpy()],
        "labels": labels,
        "label_counts": {label: counts.get(label, 0) for label in labels},
        "bytes_per_pixel_value": 1,
    }


@beam.ptransform_fn
def _WriteExamples(record_batches, prefix: str, split: str):  # noqa: N802
    """Writes ``image`` (raw uint8 bytes) and ``label`` of each transformed example."""
    counter = beam.metrics.Metrics.counter("transform", f"examples_{split}")

    def encode(batch_and_passthrough):
        batch, _ = batch_and_passthrough
        rows = batch.num_rows
        # Fixed-size columns: every row holds size*size*3 pixel values and one label.
        pixels = np.asarray(batch.column(F.TRANSFORMED_IMAGE).flatten(), np.int64)
        pixels = pixels.reshape(rows, -1).astype(np.uint8)
        labels = np.asarray(batch.column(F.TRANSFORMED_LABEL).flatten(), np.int64)
        for row in range(rows):
            counter.inc()
            yield encode_example(
                {F.TRANSFORMED_IMAGE: pixels[row].tobytes(), F.TRANSFORMED_LABEL: int(labels[row])}
            )

    return (
        record_batches
        | "Encode" >> beam.FlatMap(encode)
        | "Write" >> beam.io.WriteToTFRecord(prefix, file_name_suffix=F.SHARD_SUFFIX)
    )


def _counts(result) -> dict[str, int]:
    counters = result.metrics().query(MetricsFilter().with_namespace("transform"))["counters"]
    counts = {s: 0 for s in F.SPLITS}
    for c in counters:
        split = c.key.metric.name.removeprefix("examples_")
        counts[split] = counts.get(split, 0) + int(c.committed or 0)
    return counts


def transform_output(transform_graph_uri: str) -> tft.TFTransformOutput:
    """The transform graph as tf.Transform's reader (vocabulary, feature specs, layer)."""
    return tft.TFTransformOutput(os.fspath(transform_graph_uri))


@dataclass(frozen=True)
class TransformGraph:
    """What the trainer needs from the transform step: the graph and its statistics."""

    uri: str
    output: tft.TFTransformOutput
    statistics: dict[str, Any]

    @classmethod
    def load(cls, transform_graph_uri: str) -> TransformGraph:
        """Reads the graph and ``statistics.json`` at ``transform_graph_uri``."""
        path = storage.join(transform_graph_uri, F.TRANSFORM_STATISTICS_FILE)
        if not storage.exists(path):
            raise ValueError(f"{transform_graph_uri}: not a transform graph (no {path})")
        return cls(
            transform_graph_uri, transform_output(transform_graph_uri), storage.read_json(path)
        )

    @property
    def labels(self) -> list[str]:
        """Class names in class-id order."""
        return list(self.statistics["labels"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape of the transformed images: ``(size, size, 3)``."""
        size = self.statistics["image_size"]
        return (size, size, 3)
