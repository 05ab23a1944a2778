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


def declared_sizes(images: tf.Tensor) -> tf.Tensor:
    """``[batch, 4]``: format, height, width and frames (int64) each image's header declares.

    Reads headers only, for the whole batch at once: JPEG's frame header
    (``tf.image.extract_jpeg_shape``, on the JPEGs alone), PNG's IHDR, GIF's logical
    screen and its frame count, BMP's info header, and WebP's VP8, VP8L or VP8X chunk. An
    unknown format gives ``[0, 0, 0, 0]`` (the decoder refuses it). A JPEG too broken to
    have a frame header fails here, as it would in the decoder.
    """
    images = tf.convert_to_tensor(images, tf.string)
    head = tf.strings.substr(images + tf.constant(b"\0" * _HEADER_BYTES), 0, _HEADER_BYTES)
    raw = tf.reshape(tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int64), [-1, _HEADER_BYTES])

    def le(offset: int, count: int) -> tf.Tensor:  # little-endian unsigned, per image
        return sum(raw[:, offset + i] * (256**i) for i in range(count))

    def be(offset: int, count: int) -> tf.Tensor:  # big-endian unsigned, per image
        return sum(raw[:, offset + i] * (256 ** (count - 1 - i)) for i in range(count))

    def starts(prefix: bytes, at: int = 0) -> tf.Tensor:
        return tf.equal(tf.strings.substr(head, at, len(prefix)), prefix)

    is_jpeg = starts(b"\xff\xd8\xff")
    is_png = starts(b"\x89PNG\r\n\x1a\n")
    is_gif = starts(b"GIF8")
    is_bmp = starts(b"BM")
    is_webp = tf.logical_and(starts(b"RIFF"), starts(b"WEBP", 8))
    # JPEG: the frame header can be anywhere after the other segments.
    where_jpeg = tf.where(is_jpeg)
    jpeg_shapes = tf.map_fn(
        tf.image.extract_jpeg_shape,
        tf.gather_nd(images, where_jpeg),
        fn_output_signature=tf.TensorSpec([3], tf.int32),
    )
    jpeg = tf.scatter_nd(where_jpeg, tf.cast(jpeg_shapes[:, :2], tf.int64), [tf.size(images), 2])
    # GIF: each frame of an animation has a graphic control extension (21 F9 04).
    gifs = tf.where(is_gif, images, tf.constant(b""))
    extensions = tf.strings.split(gifs, sep=b"\x21\xf9\x04").row_lengths() - 1
    # BMP: the height is signed (negative for top-down rows).
    bmp_height = tf.where(le(22, 4) >= 2**31, 2**32 - le(22, 4), le(22, 4))
    # WebP: VP8X (extended), VP8L (lossless) or VP8 (lossy) header.
    vp8x, vp8l, lossless = starts(b"VP8X", 12), starts(b"VP8L", 12), le(21, 4)
    webp_height = tf.where(
        vp8x, le(27, 3) + 1, tf.where(vp8l, (lossless // 2**14) % 2**14 + 1, le(28, 2) % 2**14)
    )
    webp_width = tf.where(
        vp8x, le(24, 3) + 1, tf.where(vp8l, lossless % 2**14 + 1, le(26, 2) % 2**14)
    )
    zero = tf.zeros_like(le(0, 1))

    def pick(jpeg_v, png_v, gif_v, bmp_v, webp_v, other):
        return tf.where(
            is_jpeg,
            jpeg_v,
            tf.where(
                is_png,
                png_v,
                tf.where(is_gif, gif_v, tf.where(is_bmp, bmp_v, tf.where(is_webp, webp_v, other))),
            ),
        )

    one = zero + 1
    return tf.stack(
        [
            pick(zero + JPEG, zero + PNG, zero + GIF, zero + BMP, zero + WEBP, zero + UNKNOWN),
            pick(jpeg[:, 0], be(20, 4), le(8, 2), bmp_height, webp_height, zero),
            pick(jpeg[:, 1], be(16, 4), le(6, 2), le(18, 4), webp_width, zero),
            pick(one, one, tf.maximum(extensions, 1), one, one, zero),
        ],
        axis=1,
    )


def declared_size(data: tf.Tensor) -> tf.Tensor:
    """``[format, height, width, frames]`` of one encoded image (``declared_sizes``)."""
    return declared_sizes(tf.reshape(tf.convert_to_tensor(data, tf.string), [1]))[0]


def check_declared(images: tf.Tensor, max_pixels: int) -> tf.Tensor:
    """Asserts that no image of a batch declares more than ``max_pixels`` (frames counted).

    Returns ``images``, depending on the check: a graph that decodes the result decodes
    nothing before the whole batch has passed. The error names the first image over the
    bound, its index in the batch, its declared size and the bound.
    """
    return check_and_declare(images, max_pixels)[0]


def check_and_declare(images: tf.Tensor, max_pixels: int) -> tuple[tf.Tensor, tf.Tensor]:
    """``check_declared``'s result and the ``declared_sizes`` it checked, parsed once."""
    declared = declared_sizes(images)
    pixels = declared[:, 1] * declared[:, 2] * declared[:, 3]
    ok = tf.reduce_all(pixels <= max_pixels)

    def refusal() -> tf.Tensor:  # built only when an image is over the bound
        first = tf.where(pixels > max_pixels)[0, 0]
        return tf.strings.format(
            "image {} declares {}x{} pixels x {} frame(s), more than the {} pixels this model"
            " takes (a decompression bomb, or an image too large to serve)",
            (first, declared[first, 2], declared[first, 1], declared[first, 3], max_pixels),
        )

    message = tf.cond(ok, lambda: tf.constant(""), refusal)
    check = tf.debugging.Assert(ok, [message], summarize=1)
    with tf.control_dependencies([check]):
        return tf.identity(images), tf.identity(declared)


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
