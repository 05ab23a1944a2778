"""The one preprocessing_fn, used by the transform step and (as its saved graph) the served model.

Nothing here runs at serving time as Python.

Raw image bytes are decoded and resized to a square of the configured side, as 8-bit
pixels: that is what the transformed examples store (one byte per value) and what the
model receives. The analyzers, on the training split only, compute the per-channel mean
and standard deviation of those pixels and the label vocabulary with its frequencies;
the model's first layer normalises with the statistics (``trainer.model.Standardize``),
so the conversion to float happens inside the trained and the served graph alike.
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


def _check_mode(mode: str) -> None:
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}. Received: {mode!r}")


def resize_pixels(image: tf.Tensor, size: int, mode: str) -> tf.Tensor:
    """One decoded ``[h, w, 3]`` image as uint8 ``[size, size, 3]``.

    ``stretch`` ignores the aspect ratio; ``pad`` keeps it and pads with black (as
    ``tf.image.resize_with_pad``); ``center_crop`` scales the shorter side to ``size``
    and crops the middle of the longer one.
    """
    _check_mode(mode)
    resized = _resize(tf.cast(image, tf.float32), size, mode)
    pixels = tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)
    return tf.ensure_shape(pixels, [size, size, 3])


def decode_and_resize(encoded: tf.Tensor, size: int, mode: str) -> tf.Tensor:
    """Decodes a batch of encoded images into uint8 ``[batch, size, size, 3]``."""
    _check_mode(mode)

    def one(data: tf.Tensor) -> tf.Tensor:
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        return resize_pixels(image, size, mode)

    return tf.map_fn(one, encoded, fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8))


def resize_batch(images: tf.Tensor, size: int, mode: str) -> tf.Tensor:
    """A batch of decoded uint8 ``[batch, h, w, 3]`` images as uint8 ``[batch, size, size, 3]``."""
    _check_mode(mode)
    return tf.map_fn(
        lambda image: resize_pixels(image, size, mode),
        images,
        fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8),
    )


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
    """The ``preprocessing_fn`` for a target size and resize mode.

    Outputs ``image`` (the resized pixels, int64 in the graph, written as one byte each),
    ``label`` (the class id) and the training split's per-channel ``image_mean`` and
    ``image_std``, repeated per example: the transform step writes only image and
    label, and reads the statistics once into ``statistics.json``.
    """
    _check_mode(resize_mode)

    def preprocessing_fn(inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        pixels = decode_and_resize(inputs[F.IMAGE_ENCODED], image_size, resize_mode)
        values = tf.cast(pixels, tf.float32)
        # Per-channel statistics: means of x and x^2 per pixel (analyzers), reduced
        # over pixels in the graph. Every image has the same size, so this is exact.
        mean = tf.reduce_mean(tft.mean(values, reduce_instance_dims=False), axis=[0, 1])
        mean_sq = tf.reduce_mean(
            tft.mean(tf.square(values), reduce_instance_dims=False), axis=[0, 1]
        )
        std = tf.sqrt(tf.maximum(mean_sq - tf.square(mean), 1e-6))
        batch = tf.shape(pixels)[:1]
        outputs = {
            F.TRANSFORMED_IMAGE: tf.cast(pixels, tf.int64),
            F.IMAGE_MEAN: tf.broadcast_to(mean, tf.concat([batch, [3]], 0)),
            F.IMAGE_STD: tf.broadcast_to(std, tf.concat([batch, [3]], 0)),
        }
        # Serving has no label: tf.Transform prunes this output when it is absent.
        if F.LABEL_TEXT in inputs:
            labels = inputs[F.LABEL_TEXT]
            outputs[F.TRANSFORMED_LABEL] = tft.compute_and_apply_vocabulary(
                labels, vocab_filename=F.LABEL_VOCABULARY
            )
            # The same vocabulary with each label's count in the training split (an
            # asset of the transform graph, written whether or not an output uses it).
            tft.vocabulary(labels, vocab_filename=F.LABEL_FREQUENCIES, store_frequency=True)
        return outputs

    return preprocessing_fn
