"""tf.data input from the transform step's shards."""

from __future__ import annotations

import tensorflow as tf

from visionpipe import features as F
from visionpipe import storage


def make_dataset(
    examples_uri: str,
    split: str,
    feature_spec: dict,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
) -> tf.data.Dataset:
    """Batches of ``(image, label)`` from the transformed examples of one split.

    Args:
        examples_uri: the transform step's examples directory.
        split: one of ``train``, ``valid``, ``test``.
        feature_spec: the transformed feature spec (``TFTransformOutput.transformed_feature_spec``).
        batch_size: examples per batch (the global batch under a distribution strategy).
        shuffle: shuffle each epoch (training only).
        seed: shuffle seed.

    Raises:
        ValueError: the split has no shards.
    """
    files = storage.glob(F.split_pattern(examples_uri, split))
    if not files:
        raise ValueError(f"{examples_uri}: no shards for split '{split}'")
    spec = {k: feature_spec[k] for k in (F.TRANSFORMED_IMAGE, F.TRANSFORMED_LABEL)}
    ds = tf.data.TFRecordDataset(
        files, compression_type="GZIP", num_parallel_reads=tf.data.AUTOTUNE
    )
    ds = (
        ds.batch(256)
        .map(
            lambda records: tf.io.parse_example(records, spec), num_parallel_calls=tf.data.AUTOTUNE
        )
        .unbatch()
    )
    ds = ds.map(lambda ex: (ex[F.TRANSFORMED_IMAGE], ex[F.TRANSFORMED_LABEL])).cache()
    if shuffle:
        ds = ds.shuffle(4096, seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
