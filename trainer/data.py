"""tf.data input from the transform step's shards.

Files are read in parallel (interleaved), records parsed in parallel batches, the
split cached in memory when it fits (``trainer.cache_max_mb``), shuffled, batched and
prefetched. Mixup and cutmix, when configured, mix whole batches here.
"""

from __future__ import annotations

import tensorflow as tf

from visionpipe import features as F
from visionpipe import storage
from visionpipe.config import TrainerConfig


def make_dataset(
    examples_uri: str,
    split: str,
    image_shape: tuple[int, int, int],
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    num_classes: int = 0,
    mix: str = "none",
    mix_alpha: float = 0.2,
    cache_max_mb: int = 2048,
    examples: int | None = None,
    drop_remainder: bool = False,
    repeat: bool = False,
) -> tf.data.Dataset:
    """Batches of ``(images, labels)`` from the transformed examples of one split.

    Images are float32 with the 8-bit pixel values (0-255); the model normalises them.

    Args:
        examples_uri: the transform step's examples directory.
        split: one of ``train``, ``valid``, ``test``.
        image_shape: ``(size, size, 3)``: the transformed images (``TransformGraph.image_shape``).
        batch_size: examples per batch (the global batch under a distribution strategy).
        shuffle: shuffle each epoch (training only).
        seed: shuffle and mixing seed.
        num_classes: when set, labels are one-hot (needed by mixup and cutmix).
        mix: ``none``, ``mixup`` or ``cutmix`` (training only; needs ``num_classes``).
        mix_alpha: the Beta distribution's parameter for the mixing weights.
        cache_max_mb: cache the parsed split in memory when it is at most this large.
        examples: examples in the split, if known (decides caching).
        drop_remainder: drop a last partial batch (multi-worker: no replica may get an
            empty batch).
        repeat: repeat forever (multi-worker training runs a fixed number of steps).

    Raises:
        ValueError: the split has no shards.
    """
    files = storage.glob(F.split_pattern(examples_uri, split))
    if not files:
        raise ValueError(f"{examples_uri}: no shards for split '{split}'")
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed)
    ds = ds.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"),
        cycle_length=min(len(files), 8),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=not shuffle,
    )
    ds = ds.batch(256).map(
        lambda records: parse_transformed(records, image_shape),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    ds = ds.unbatch()
    size_mb = (examples or 0) * (image_shape[0] * image_shape[1] * 3 + 8) / 2**20
    if examples is None or size_mb <= cache_max_mb:
        ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(4096, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    if num_classes:
        ds = ds.map(lambda x, y: (x, tf.one_hot(y, num_classes)))
    # float32 from here on: stored and cached as bytes, cast per batch (Keras reduces a
    # first distributed batch across workers, which collectives cannot do on uint8).
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y))
    if mix != "none":
        if not num_classes:
            raise ValueError(f"{mix} needs one-hot labels: pass num_classes")
        ds = ds.map(
            lambda x, y: mix_batch(x, y, mix, mix_alpha), num_parallel_calls=tf.data.AUTOTUNE
        )
    if examples and not repeat:
        # Keras then knows the epoch's length: no probing for its end ("input ran out of
        # data") and a progress bar with a total.
        batches = examples // batch_size if drop_remainder else -(-examples // batch_size)
        ds = ds.apply(tf.data.experimental.assert_cardinality(batches))
    options = tf.data.Options()
    # With two cores, autotuning's extra threads competed with the training step: epochs
    # of the sample data alternated between ~2.3 s and ~5 s; without it they hold ~2.3 s.
    options.autotune.enabled = False
    # Across multi-worker replicas, training data is split by example (few large shard
    # files); every worker evaluates the whole validation and test data, so all of them
    # see the same metrics and take the same early-stopping decision.
    policy = tf.data.experimental.AutoShardPolicy
    options.experimental_distribute.auto_shard_policy = policy.DATA if shuffle else policy.OFF
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def split_datasets(
    examples_uri: str,
    graph,
    batch_size: int,
    trainer: TrainerConfig,
    multi_worker: bool = False,
    splits: tuple[str, ...] = ("train", "valid", "test"),
) -> dict[str, tf.data.Dataset]:
    """The datasets training (and each tuning trial) reads, by split, as configured.

    ``train`` is shuffled and mixed (``trainer.mix``); every split has one-hot labels
    when mixing is on, so a model compiled for soft targets can evaluate them.
    Multi-worker: whole batches only (an empty replica batch breaks the step), every
    split repeated (the plan sets the steps).

    Args:
        examples_uri: the transform step's examples.
        graph: the ``TransformGraph`` (image shape, labels, example counts).
        batch_size: the global batch size.
        trainer: the ``trainer`` section (seed, mixing, cache size).
        multi_worker: whether several workers train together.
        splits: the splits to make.
    """
    counts = graph.statistics.get("examples", {})
    common = {
        "image_shape": graph.image_shape,
        "batch_size": batch_size,
        "num_classes": len(graph.labels) if trainer.mix != "none" else 0,
        "cache_max_mb": trainer.cache_max_mb,
        "drop_remainder": multi_worker,
        "repeat": multi_worker,
    }
    training = {"shuffle": True, "seed": trainer.seed, "mix": trainer.mix}
    return {
        split: make_dataset(
            examples_uri,
            split,
            examples=counts.get(split) or None,
            **(training | {"mix_alpha": trainer.mix_alpha} if split == "train" else {}),
            **common,
        )
        for split in splits
    }


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


def _beta(alpha: float) -> tf.Tensor:
    a = tf.random.gamma([], alpha)
    b = tf.random.gamma([], alpha)
    return a / (a + b)


def mix_batch(images: tf.Tensor, labels: tf.Tensor, mode: str, alpha: float):
    """Mixup (blend two images) or cutmix (paste a box of one into another) on a batch.

    Each image is mixed with another of the batch (a random permutation); the one-hot
    labels are mixed with the same weight (for cutmix: the pasted box's area share).
    """
    x = tf.cast(images, tf.float32)
    perm = tf.random.shuffle(tf.range(tf.shape(x)[0]))
    lam = _beta(alpha)
    if mode == "mixup":
        mixed = lam * x + (1 - lam) * tf.gather(x, perm)
        return mixed, lam * labels + (1 - lam) * tf.gather(labels, perm)
    h, w = tf.shape(x)[1], tf.shape(x)[2]
    cut_h = tf.cast(tf.cast(h, tf.float32) * tf.sqrt(1 - lam), tf.int32)
    cut_w = tf.cast(tf.cast(w, tf.float32) * tf.sqrt(1 - lam), tf.int32)
    top = tf.random.uniform([], 0, h - cut_h + 1, dtype=tf.int32)
    left = tf.random.uniform([], 0, w - cut_w + 1, dtype=tf.int32)
    rows = tf.logical_and(tf.range(h) >= top, tf.range(h) < top + cut_h)
    cols = tf.logical_and(tf.range(w) >= left, tf.range(w) < left + cut_w)
    box = tf.cast(tf.logical_and(rows[:, None], cols[None, :]), tf.float32)[None, :, :, None]
    mixed = x * (1 - box) + tf.gather(x, perm) * box
    share = tf.cast(cut_h * cut_w, tf.float32) / tf.cast(h * w, tf.float32)
    return mixed, (1 - share) * labels + share * tf.gather(labels, perm)
