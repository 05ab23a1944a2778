"""tf.data input from the transform step's shards."""

from __future__ import annotations

import tensorflow as tf

from visionpipe import features as F
from visionpipe import storage


def make_dataset(
    examples_uri: str,
    split: str,
    image_shape: tuple[int, int, int],
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
) -> tf.data.Dataset:
    """Batches of ``(image, label)`` from the transformed examples of one split.

    Args:
        examples_uri: the transform step's examples directory.
        split: one of ``train``, ``valid``, ``test``.
        image_shape: ``(size, size, 3)``: the transformed images (``TransformGraph.image_shape``).
        batch_size: examples per batch (the global batch under a distribution strategy).
        shuffle: shuffle each epoch (training only).
        seed: shuffle seed.

    Raises:
        ValueError: the split has no shards.
    """
    files = storage.glob(F.split_pattern(examples_uri, split))
    if not files:
        raise ValueError(f"{examples_uri}: no shards for split '{split}'")
    ds = tf.data.TFRecordDataset(
        files, compression_type="GZIP", num_parallel_reads=tf.data.AUTOTUNE
    )
    ds = ds.batch(256).map(
        lambda records: parse_transformed(records, image_shape),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    ds = ds.unbatch().cache()
    if shuffle:
        ds = ds.shuffle(4096, seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def parse_transformed(records: tf.Tensor, image_shape: tuple[int, int, int]):
    """A batch of serialised transformed examples as ``(uint8 images, int64 labels)``."""
    spec = {
        F.TRANSFORMED_IMAGE: tf.io.FixedLenFeature([], tf.string),
        F.TRANSFORMED_LABEL: tf.io.FixedLenFeature([], tf.int64),
    }
    parsed = tf.io.parse_example(records, spec)
    pixels = tf.io.decode_raw(parsed[F.TRANSFORMED_IMAGE], tf.uint8)
    images = tf.reshape(pixels, [-1, *image_shape])
    return images, parsed[F.TRANSFORMED_LABEL]
