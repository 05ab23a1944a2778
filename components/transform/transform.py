"""The transform step: tf.Transform on Beam over ingest's raw examples.

Analyzers (pixel statistics, label vocabulary) run on the training split only; every
split is transformed with the result. Writes transformed shards per split and the
transform graph (``transform_fn/`` + ``transformed_metadata/``), which the trainer
embeds in the served model.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass

import apache_beam as beam
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from apache_beam.metrics.metric import MetricsFilter
from tensorflow_transform.tf_metadata import schema_utils
from tfx_bsl.public import tfxio

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
                transformed, metadata = ((data, adapter), transform_fn) | (
                    f"Transform{split}" >> tft_beam.TransformDataset(output_record_batches=True)
                )
                _ = transformed | f"Write{split}" >> _WriteExamples(
                    metadata, storage.join(examples_uri, split, "data"), split
                )
            _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(transform_graph_uri)
        result = pipeline.run()
        result.wait_until_finish()
    counts = _counts(result)
    labels = tft.TFTransformOutput(transform_graph_uri).vocabulary_by_name(F.LABEL_VOCABULARY)
    labels = [v.decode() for v in labels]
    log.info("transform: %s examples, %d classes", counts, len(labels))
    return TransformResult(examples_uri, transform_graph_uri, counts, labels)


@beam.ptransform_fn
def _WriteExamples(record_batches, metadata, prefix: str, split: str):  # noqa: N802
    """Encodes transformed record batches as tf.Examples and writes gzipped shards."""
    counter = beam.metrics.Metrics.counter("transform", f"examples_{split}")

    def encode(batch_and_passthrough, schema):
        batch, _ = batch_and_passthrough
        encoder = tfxio.RecordBatchToExamplesEncoder(schema)
        for example in encoder.encode(batch):
            counter.inc()
            yield example

    return (
        record_batches
        | "Encode"
        >> beam.FlatMap(
            encode,
            schema=beam.pvalue.AsSingleton(
                metadata.deferred_metadata | "Schema" >> beam.Map(lambda m: m.schema)
            ),
        )
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
