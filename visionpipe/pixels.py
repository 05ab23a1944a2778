"""The pixel contract shared by the transform graph and the served model's pixel signature.

An image is decoded to RGB and resized to a ``size x size`` square of 8-bit pixels,
in one of the configured resize modes. The transform step runs ``decode_and_resize``
inside its graph; the exported model's ``serve_pixels`` signature runs
``resize_batch``: both call ``resize_pixels``, so they cannot drift apart.

Before anything is decoded, ``declared_size`` reads what an image's header declares
(JPEG, PNG, GIF, BMP and WebP, the formats ``tf.io.decode_image`` takes) with string
ops, so the served graph itself refuses a decompression bomb (``check_declared``): a
242 KB PNG that declares 16,000 x 16,000 pixels never reaches the decoder. A GIF counts
each frame it declares (its graphic control extensions), since the decoder reads all
of them to return the first.
"""

from __future__ import annotations

import tensorflow as tf

from visionpipe.config import RESIZE_MODES


def check_mode(mode: str) -> None:
    """Raises ValueError unless ``mode`` is a resize mode."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}. Received: {mode!r}")


# Format codes of ``declared_size``.
UNKNOWN, JPEG, PNG, GIF, BMP, WEBP = range(6)
FORMAT_NAMES = ("unknown", "jpeg", "png", "gif", "bmp", "webp")
_HEADER_BYTES = 32  # every field read below lies in the first 32 bytes (JPEG aside)


def declared_size(data: tf.Tensor) -> tf.Tensor:
    """``[format, height, width, frames]`` (int64) that one encoded image's header declares.

    Reads the header only: JPEG's frame header (``tf.image.extract_jpeg_shape``), PNG's
    IHDR, GIF's logical screen and its frame count, BMP's info header, and WebP's VP8,
    VP8L or VP8X chunk. An unknown format gives ``[0, 0, 0, 0]`` (the decoder refuses
    it). A JPEG too broken to have a frame header fails here, as it would in the decoder.
    """
    data = tf.convert_to_tensor(data, tf.string)
    head = tf.strings.substr(
        tf.strings.join([data, tf.constant(b"\0" * _HEADER_BYTES)]), 0, _HEADER_BYTES
    )
    raw = tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int64)

    def le(offset: int, count: int) -> tf.Tensor:  # little-endian unsigned
        return sum(raw[offset + i] * (256**i) for i in range(count))

    def be(offset: int, count: int) -> tf.Tensor:  # big-endian unsigned
        return sum(raw[offset + i] * (256 ** (count - 1 - i)) for i in range(count))

    def starts(prefix: bytes, at: int = 0) -> tf.Tensor:
        return tf.equal(tf.strings.substr(head, at, len(prefix)), prefix)

    def out(fmt: int, height, width, frames=1) -> tf.Tensor:
        return tf.stack([tf.constant(fmt, tf.int64), height, width, tf.cast(frames, tf.int64)])

    def jpeg() -> tf.Tensor:
        shape = tf.cast(tf.image.extract_jpeg_shape(data), tf.int64)
        return out(JPEG, shape[0], shape[1])

    def gif() -> tf.Tensor:
        # Each frame of an animation has a graphic control extension (21 F9 04).
        extensions = tf.size(tf.strings.split(data, sep=b"\x21\xf9\x04"), tf.int64) - 1
        return out(GIF, le(8, 2), le(6, 2), tf.maximum(extensions, 1))

    def bmp() -> tf.Tensor:
        height = le(22, 4)  # a signed 32-bit value: negative for top-down rows
        height = tf.where(height >= 2**31, 2**32 - height, height)
        return out(BMP, height, le(18, 4))

    def webp() -> tf.Tensor:
        vp8x = out(WEBP, le(27, 3) + 1, le(24, 3) + 1)
        lossless_bits = le(21, 4)
        vp8l = out(WEBP, (lossless_bits // 2**14) % 2**14 + 1, lossless_bits % 2**14 + 1)
        lossy = out(WEBP, le(28, 2) % 2**14, le(26, 2) % 2**14)
        return tf.case(
            [(starts(b"VP8X", 12), lambda: vp8x), (starts(b"VP8L", 12), lambda: vp8l)],
            default=lambda: lossy,
        )

    zero = tf.constant(0, tf.int64)
    return tf.case(
        [
            (starts(b"\xff\xd8\xff"), jpeg),
            (starts(b"\x89PNG\r\n\x1a\n"), lambda: out(PNG, be(20, 4), be(16, 4))),
            (starts(b"GIF8"), gif),
            (starts(b"BM"), bmp),
            (tf.logical_and(starts(b"RIFF"), starts(b"WEBP", 8)), webp),
        ],
        default=lambda: out(UNKNOWN, zero, zero, 0),
    )


def check_declared(images: tf.Tensor, max_pixels: int) -> tf.Tensor:
    """Asserts that no image of a batch declares more than ``max_pixels`` (frames counted).

    Returns ``images``, depending on the check: a graph that decodes the result decodes
    nothing before the whole batch has passed. The error names the first image over the
    bound, its index in the batch, its declared size and the bound.
    """
    declared = tf.map_fn(declared_size, images, fn_output_signature=tf.TensorSpec([4], tf.int64))
    pixels = declared[:, 1] * declared[:, 2] * declared[:, 3]
    over = tf.where(pixels > max_pixels)[:, 0]
    first = tf.cond(tf.size(over) > 0, lambda: over[0], lambda: tf.constant(0, tf.int64))
    message = tf.strings.format(
        "image {} declares {}x{} pixels x {} frame(s), more than the {} pixels this model"
        " takes (a decompression bomb, or an image too large to serve)",
        (first, declared[first, 2], declared[first, 1], declared[first, 3], max_pixels),
    )
    check = tf.debugging.Assert(tf.equal(tf.size(over), 0), [message], summarize=1)
    with tf.control_dependencies([check]):
        return tf.identity(images)


def resize_pixels(image: tf.Tensor, size: int, mode: str) -> tf.Tensor:
    """One decoded ``[h, w, 3]`` image as uint8 ``[size, size, 3]``.

    ``stretch`` ignores the aspect ratio; ``pad`` keeps it and pads with black (as
    ``tf.image.resize_with_pad``); ``center_crop`` scales the shorter side to ``size``
    and crops the middle of the longer one. The resize reads the 8-bit image as it is:
    only the ``size x size`` result is float, never a float copy of a large input.
    """
    check_mode(mode)
    resized = _resize(image, size, mode)
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
