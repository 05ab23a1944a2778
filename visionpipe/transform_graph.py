"""The transform graph as the later steps see it: its reader, statistics and raw feature spec.

The transform step writes ``transform_fn/``, ``transformed_metadata/`` and
``statistics.json`` into one directory; the trainer embeds the graph in the served
model and sizes the model from the statistics; evaluate and the edge export read raw
examples (``load_raw_split``) with the same feature spec the graph was built on.
tf.Transform is imported only when a graph is opened.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
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
    """One split of ingest's examples: encoded images, label names and source files.

    With the header's format, width and height of each image, and the ``attributes``
    asked of ``load_raw_split`` (``""`` where an example has none).
    """

    images: list[bytes]
    labels: list[str]
    names: list[str]
    formats: list[str] = field(default_factory=list)
    widths: list[int] = field(default_factory=list)
    heights: list[int] = field(default_factory=list)
    attributes: dict[str, list[str]] = field(default_factory=dict)


def load_raw_split(
    raw_examples_uri: str,
    split: str,
    limit: int | None = None,
    attributes: Sequence[str] = (),
) -> RawSplit:
    """The examples of one split (the first ``limit`` of them when given), in shard order.

    Raises:
        ValueError: the split has no shards under ``raw_examples_uri``.
    """
    files = sorted(storage.glob(F.split_pattern(raw_examples_uri, split)))
    if not files:
        raise ValueError(f"{raw_examples_uri}: no {split} shards (not ingest's examples?)")
    spec = {
        **raw_feature_spec(),
        F.FILENAME: tf.io.FixedLenFeature([], tf.string, ""),
        F.IMAGE_FORMAT: tf.io.FixedLenFeature([], tf.string, ""),
        F.IMAGE_WIDTH: tf.io.FixedLenFeature([], tf.int64, 0),
        F.IMAGE_HEIGHT: tf.io.FixedLenFeature([], tf.int64, 0),
        **{F.ATTRIBUTE_PREFIX + a: tf.io.FixedLenFeature([], tf.string, "") for a in attributes},
    }
    out = RawSplit([], [], [], attributes={a: [] for a in attributes})
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP")
    if limit is not None:
        dataset = dataset.take(limit)

    def text(values) -> list[str]:
        return [v.decode() for v in values.numpy()]

    for batch in dataset.batch(512):
        parsed = tf.io.parse_example(batch, spec)
        out.images.extend(parsed[F.IMAGE_ENCODED].numpy().tolist())
        out.labels.extend(text(parsed[F.LABEL_TEXT]))
        out.names.extend(text(parsed[F.FILENAME]))
        out.formats.extend(text(parsed[F.IMAGE_FORMAT]))
        out.widths.extend(parsed[F.IMAGE_WIDTH].numpy().tolist())
        out.heights.extend(parsed[F.IMAGE_HEIGHT].numpy().tolist())
        for a in attributes:
            out.attributes[a].extend(text(parsed[F.ATTRIBUTE_PREFIX + a]))
    return out


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
