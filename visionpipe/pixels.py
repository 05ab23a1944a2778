"""The pixel contract shared by the transform graph and the served model's pixel signature.

An image is decoded to RGB and resized to a ``size x size`` square of 8-bit pixels,
in one of the configured resize modes. The transform step runs ``decode_and_resize``
inside its graph; the exported model's ``serve_pixels`` signature runs
``resize_batch``: both call ``resize_pixels``, so they cannot drift apart.
"""

from __future__ import annotations

import tensorflow as tf

from visionpipe.config import RESIZE_MODES


def check_mode(mode: str) -> None:
    """Raises ValueError unless ``mode`` is a resize mode."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}. Received: {mode!r}")


def resize_pixels(image: tf.Tensor, size: int, mode: str) -> tf.Tensor:
    """One decoded ``[h, w, 3]`` image as uint8 ``[size, size, 3]``.

    ``stretch`` ignores the aspect ratio; ``pad`` keeps it and pads with black (as
    ``tf.image.resize_with_pad``); ``center_crop`` scales the shorter side to ``size``
    and crops the middle of the longer one.
    """
    check_mode(mode)
    resized = _resize(tf.cast(image, tf.float32), size, mode)
    pixels = tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)
    return tf.ensure_shape(pixels, [size, size, 3])


def decode_and_resize(encoded: tf.Tensor, size: int, mode: str) -> tf.Tensor:
    """Decodes a batch of encoded images into uint8 ``[batch, size, size, 3]``."""
    check_mode(mode)

    def one(data: tf.Tensor) -> tf.Tensor:
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        return resize_pixels(image, size, mode)

    return tf.map_fn(one, encoded, fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8))


def decode_one(data: bytes, size: int, mode: str):
    """One encoded image as a uint8 ``[size, size, 3]`` numpy array; None if undecodable.

    For code that feeds the classifier pixels itself (explanations, edge runtimes):
    the same decoder and resize as the served graph.
    """
    try:
        return decode_and_resize(tf.constant([data]), size, mode).numpy()[0]
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
        return None


def resize_batch(images: tf.Tensor, size: int, mode: str) -> tf.Tensor:
    """A batch of decoded uint8 ``[batch, h, w, 3]`` images as uint8 ``[batch, size, size, 3]``."""
    check_mode(mode)
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
