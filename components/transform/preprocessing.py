"""The one preprocessing_fn, used by the transform step and (as its saved graph) the served model.

Nothing here runs at serving time as Python.

Raw image bytes are decoded, resized to a square of the configured side and
normalised per channel with the mean and standard deviation of the training split.
Labels become integer ids through a vocabulary computed on the training split.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf
import tensorflow_transform as tft

from visionpipe import features as F

RESIZE_MODES = ("stretch", "pad", "center_crop")


def raw_feature_spec() -> dict[str, tf.io.FixedLenFeature]:
    """The raw features the transform reads from ingest's examples."""
    return {
        F.IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string),
        F.LABEL_TEXT: tf.io.FixedLenFeature([], tf.string),
    }


def decode_and_resize(encoded: tf.Tensor, size: int, mode: str) -> tf.Tensor:
    """Decodes a batch of encoded images into float32 ``[batch, size, size, 3]`` in [0, 255]."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}. Received: {mode!r}")

    def one(data: tf.Tensor) -> tf.Tensor:
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        image = tf.cast(image, tf.float32)
        return tf.ensure_shape(_resize(image, size, mode), [size, size, 3])

    return tf.map_fn(one, encoded, fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))


def _resize(image: tf.Tensor, size: int, mode: str) -> tf.Tensor:
    if mode == "stretch":
        return tf.image.resize(image, [size, size])
    if mode == "pad":
        return tf.image.resize_with_pad(image, size, size)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = size / tf.reduce_min(shape)
    scaled = tf.cast(tf.math.ceil(shape * scale), tf.int32)
    return tf.image.resize_with_crop_or_pad(tf.image.resize(image, scaled), size, size)


def make_preprocessing_fn(image_size: int, resize_mode: str) -> Callable:
    """The ``preprocessing_fn`` for a target size and resize mode."""

    def preprocessing_fn(inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        images = decode_and_resize(inputs[F.IMAGE_ENCODED], image_size, resize_mode)
        # Per-channel statistics: means of x and x^2 per pixel (analyzers), reduced
        # over pixels in the graph. Every image has the same size, so this is exact.
        mean = tf.reduce_mean(tft.mean(images, reduce_instance_dims=False), axis=[0, 1])
        mean_sq = tf.reduce_mean(
            tft.mean(tf.square(images), reduce_instance_dims=False), axis=[0, 1]
        )
        std = tf.sqrt(tf.maximum(mean_sq - tf.square(mean), 1e-6))
        outputs = {F.TRANSFORMED_IMAGE: (images - mean) / std}
        # Serving has no label: tf.Transform prunes this output when it is absent.
        if F.LABEL_TEXT in inputs:
            outputs[F.TRANSFORMED_LABEL] = tft.compute_and_apply_vocabulary(
                inputs[F.LABEL_TEXT], vocab_filename=F.LABEL_VOCABULARY
            )
        return outputs

    return preprocessing_fn
