"""The transform graph as the later steps see it: its reader, statistics and raw feature spec.

The transform step writes ``transform_fn/``, ``transformed_metadata/`` and
``statistics.json`` into one directory; the trainer embeds the graph in the served
model and sizes the model from the statistics; evaluate and the edge export read raw
examples (``load_raw_split``) with the same feature spec the graph was built on.
tf.Transform is imported only when a graph is opened.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import tensorflow as tf

from visionpipe import features as F
from visionpipe import storage

if TYPE_CHECKING:
    import tensorflow_transform as tft


def raw_feature_spec() -> dict[str, tf.io.FixedLenFeature]:
    """The raw features the transform reads from ingest's examples."""
    return {
        F.IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string),
        F.LABEL_TEXT: tf.io.FixedLenFeature([], tf.string),
    }


@dataclass(frozen=True)
class RawSplit:
    """One split of ingest's examples: encoded images, label names and source files."""

    images: list[bytes]
    labels: list[str]
    names: list[str]


def load_raw_split(raw_examples_uri: str, split: str, limit: int | None = None) -> RawSplit:
    """The examples of one split (the first ``limit`` of them when given), in shard order.

    Raises:
        ValueError: the split has no shards under ``raw_examples_uri``.
    """
    files = sorted(storage.glob(F.split_pattern(raw_examples_uri, split)))
    if not files:
        raise ValueError(f"{raw_examples_uri}: no {split} shards (not ingest's examples?)")
    spec = {**raw_feature_spec(), F.FILENAME: tf.io.FixedLenFeature([], tf.string, "")}
    images: list[bytes] = []
    labels: list[str] = []
    names: list[str] = []
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP")
    if limit is not None:
        dataset = dataset.take(limit)
    for batch in dataset.batch(512):
        parsed = tf.io.parse_example(batch, spec)
        images.extend(parsed[F.IMAGE_ENCODED].numpy().tolist())
        labels.extend(v.decode() for v in parsed[F.LABEL_TEXT].numpy())
        names.extend(v.decode() for v in parsed[F.FILENAME].numpy())
    return RawSplit(images, labels, names)


def transform_output(transform_graph_uri: str) -> tft.TFTransformOutput:
    """The transform graph as tf.Transform's reader (vocabulary, feature specs, layer)."""
    import tensorflow_transform as tft

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
