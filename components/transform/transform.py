"""The transform step: tf.Transform on Beam over ingest's raw examples.

Analyzers (pixel statistics, label vocabulary and frequencies) run on the training
split only; every split is transformed with the result. Writes transformed shards per
split (``image``: the resized pixels as raw bytes, one per value; ``label``: the class
id) and the transform graph (``transform_fn/`` + ``transformed_metadata/`` +
``statistics.json``), which the trainer embeds in the served model.
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import schema_utils
from tfx_bsl.public import tfxio

from components.transform.preprocessing import make_preprocessing_fn
from visionpipe import features as F
from visionpipe import storage
from visionpipe.beam import beam_pipeline, counter_values, run_job
from visionpipe.config import Config
from visionpipe.example_codec import encode_example
from visionpipe.transform_graph import raw_feature_spec, transform_output

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
    files = {s: storage.glob(p) for s, p in patterns.items()}
    records = tfxio.TFExampleBeamRecord(
        physical_format="tfrecords_gzip", schema=schema, telemetry_descriptors=["visionpipe"]
    )
    with tempfile.TemporaryDirectory(prefix="tft-") as temp_dir:
        pipeline = beam_pipeline(config.beam, "transform")
        with tft_beam.Context(temp_dir=temp_dir, force_tf_compat_v1=False):
            # One file per element of a plain DoFn, counted as read, so that _check_counts
            # can hold every split to what it read and ingest wrote.
            def read(split: str, name: str):
                return (
                    pipeline
                    | f"Files{name}" >> beam.Create(files[split])
                    | f"Spread{name}" >> beam.Reshuffle()
                    | f"Read{name}" >> beam.ParDo(_ReadRecords(name))
                    | f"Decode{name}" >> records.BeamSource()
                )

            raw = {s: read(s, s) for s, fs in files.items() if fs}
            adapter = records.TensorAdapterConfig()
            # The analyzers read train on their own. With one train PCollection feeding
            # both the analyzers and TransformDataset, the FnApiRunner's worker processes
            # (multi_processing, 2 workers) lost 768 to 3,066 of 23,957 records between
            # the read and the writer at 30,000 images, in 7 runs of 17; valid and test,
            # each with one consumer, never lost any. With two reads: none in 8 runs.
            transform_fn = (read("train", "analyze"), adapter) | "Analyze" >> (
                tft_beam.AnalyzeDataset(preprocessing_fn)
            )
            for split, data in raw.items():
                transformed, _ = ((data, adapter), transform_fn) | (
                    f"Transform{split}" >> tft_beam.TransformDataset(output_record_batches=True)
                )
                _ = transformed | f"Write{split}" >> _WriteExamples(
                    storage.join(examples_uri, split, "data"), split
                )
            _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(transform_graph_uri)
        result = run_job(pipeline, config.beam, "transform")
    counters = _counters(result)
    counts = {s: counters.get(f"examples_{s}", 0) for s in F.SPLITS}
    _check_counts(raw_examples_uri, counters, counts, [examples_uri, transform_graph_uri])
    statistics = _statistics(transform_output(transform_graph_uri), counters, config)
    statistics["examples"] = counts
    storage.write_json(storage.join(transform_graph_uri, F.TRANSFORM_STATISTICS_FILE), statistics)
    labels = statistics["labels"]
    log.info("transform: %s examples, %d classes", counts, len(labels))
    return TransformResult(examples_uri, transform_graph_uri, counts, labels, statistics)


class TransformLossError(RuntimeError):
    """Transform wrote other than the records it read, or than ingest wrote."""


class _ReadRecords(beam.DoFn):
    """Every record of one gzipped TFRecord file, counted as read."""

    def __init__(self, split: str) -> None:
        self._split = split

    def setup(self) -> None:
        self._read = beam.metrics.Metrics.counter("transform", f"read_{self._split}")

    def process(self, uri: str):
        from visionpipe.tfrecord import read_records

        for record in read_records(uri):
            self._read.inc()
            yield record


def _check_counts(raw_examples_uri, counters, counts, outputs) -> None:
    """Checks every split wrote what it read and read what ingest wrote; else keeps nothing.

    The analyzers' read of train must equal the transform's too.

    Raises:
        TransformLossError: a count differs; the outputs are removed.
    """
    stats_uri = storage.join(raw_examples_uri, F.STATS_FILE)
    ingested = storage.read_json(stats_uri)["per_split"] if storage.exists(stats_uri) else {}
    problems = []
    analyzed = counters.get("read_analyze", counters.get("read_train", 0))
    if analyzed != counters.get("read_train", 0):
        problems.append(
            f"the analyzers read {analyzed} train records, the transform "
            f"{counters.get('read_train', 0)}"
        )
    for split in F.SPLITS:
        read = counters.get(f"read_{split}", 0)
        expected = sum(ingested.get(split, {}).values()) if ingested else read
        if counts[split] != read or read != expected:
            problems.append(
                f"the {split} split wrote {counts[split]} examples of {read} read "
                f"({expected} ingested)"
            )
    if problems:
        for output in outputs:
            storage.remove(output)
        raise TransformLossError(
            f"transform: {problems[0]}; nothing was kept (report it with the runner)"
        )


def _statistics(
    tft_output: tft.TFTransformOutput, counters: dict[str, int], config: Config
) -> dict[str, Any]:
    """The label vocabulary and its counts (from the graph) and the pixel statistics."""
    labels = [v.decode() for v in tft_output.vocabulary_by_name(F.LABEL_VOCABULARY)]
    counts = {}
    for line in tft_output.vocabulary_by_name(F.LABEL_FREQUENCIES):
        count, label = line.decode().split(" ", 1)
        counts[label] = int(count)
    mean, std = pixel_statistics(
        [counters.get(f"pixel_sum_{c}", 0) for c in "rgb"],
        [counters.get(f"pixel_square_sum_{c}", 0) for c in "rgb"],
        counters.get("pixels", 0),
    )
    return {
        "image_size": config.transform.image_size,
        "resize_mode": config.transform.resize_mode,
        "image_mean": mean,
        "image_std": std,
        "labels": labels,
        "label_counts": {label: counts.get(label, 0) for label in labels},
    }


def pixel_statistics(
    sums: list[int], square_sums: list[int], pixels: int
) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation from exact integer sums over ``pixels``.

    The transform step counts, over the training split's resized 8-bit pixels, each
    channel's sum and sum of squares (integers, so the result does not depend on how
    the runner splits the work). They parametrise the model's ``Standardize`` layer;
    the served graph does not recompute them. A channel that is constant gets a
    standard deviation of 1e-3 rather than 0.
    """
    if not pixels:
        raise ValueError("transform: the training split has no pixels to compute statistics on")
    mean = [s / pixels for s in sums]
    variance = [q / pixels - m * m for q, m in zip(square_sums, mean, strict=True)]
    return mean, [math.sqrt(max(v, 1e-6)) for v in variance]


@beam.ptransform_fn
def _WriteExamples(record_batches, prefix: str, split: str):  # noqa: N802
    """Writes ``image`` (raw uint8 bytes) and ``label`` of each transformed example."""
    counter = beam.metrics.Metrics.counter("transform", f"examples_{split}")
    sums = [beam.metrics.Metrics.counter("transform", f"pixel_sum_{c}") for c in "rgb"]
    squares = [beam.metrics.Metrics.counter("transform", f"pixel_square_sum_{c}") for c in "rgb"]
    pixels_seen = beam.metrics.Metrics.counter("transform", "pixels")

    def encode(batch_and_passthrough):
        batch, _ = batch_and_passthrough
        rows = batch.num_rows
        # Fixed-size columns: every row holds size*size*3 pixel values and one label.
        pixels = np.asarray(batch.column(F.TRANSFORMED_IMAGE).flatten(), np.int64)
        pixels = pixels.reshape(rows, -1).astype(np.uint8)
        labels = np.asarray(batch.column(F.TRANSFORMED_LABEL).flatten(), np.int64)
        if split == "train":  # the pixel statistics, as exact integer sums per channel
            values = pixels.reshape(-1, 3).astype(np.int64)
            for channel in range(3):
                sums[channel].inc(int(values[:, channel].sum()))
                squares[channel].inc(int(np.square(values[:, channel]).sum()))
            pixels_seen.inc(len(values))
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


def _counters(result) -> dict[str, int]:
    """The step's counters: examples per split, pixel sums of the training split."""
    return counter_values(result, "transform")
