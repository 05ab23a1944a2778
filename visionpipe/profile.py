"""What a model is given, measured the same way everywhere: image properties and embeddings.

The one definition of an image's properties (``PROPERTIES``) and of the embedding a
model's inputs are compared by. The exported model computes both in its ``monitor``
signature (``trainer.export``), so the reference profile made at evaluation and every
logged prediction are measured by the same graph; the data validation of ingest
reuses ``image_properties`` on decoded pixels.

Properties are read from the header (format, width, height, aspect) and from the
pixels the model classifies (after the resize), on the luma ``Y = 0.299 R + 0.587 G +
0.114 B`` scaled to 0-1:

- ``brightness``: the mean of Y;
- ``contrast``: the standard deviation of Y (RMS contrast);
- ``sharpness``: the variance of Y's Laplacian (Pech-Pacheco et al., 2000), which a
  blur lowers;
- ``colourfulness``: Hasler and Suesstrunk's (2003) ``sqrt(sd_rg^2 + sd_yb^2) + 0.3
  sqrt(mean_rg^2 + mean_yb^2)`` over ``rg = R - G`` and ``yb = (R + G) / 2 - B``; 0
  for grey images.

The embedding is the classifier's penultimate layer (the input of its last dense
layer), through a fixed Gaussian random projection to ``EMBEDDING_DIMS`` dimensions
when it is wider: a log record stays small, and pairwise distances keep their ratios
within a few tens of percent (Johnson-Lindenstrauss), which is what the kernel and
neighbour tests of ``visionpipe.drift`` read.
"""

from __future__ import annotations

import numpy as np

# Read from the image header (``visionpipe.pixels.declared_sizes``).
HEADER_PROPERTIES = ("width", "height", "aspect")
# Measured on the pixels the model classifies.
PIXEL_PROPERTIES = ("brightness", "contrast", "sharpness", "colourfulness")
PROPERTIES = HEADER_PROPERTIES + PIXEL_PROPERTIES
EMBEDDING_DIMS = 32
PROJECTION_SEED = 20_240_917  # fixed: every model's projection is reproducible from its width


def image_properties(pixels):
    """``{name: [batch] float32}`` of ``PIXEL_PROPERTIES`` for uint8 ``[batch, h, w, 3]``."""
    import tensorflow as tf

    rgb = tf.cast(pixels, tf.float32) / 255.0
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    luma = 0.299 * r + 0.587 * g + 0.114 * b
    laplacian = tf.nn.conv2d(
        luma[..., None],
        tf.constant([[0, 1, 0], [1, -4, 1], [0, 1, 0]], tf.float32)[:, :, None, None],
        strides=1,
        padding="VALID",
    )
    rg, yb = r - g, 0.5 * (r + g) - b

    def mean(x):
        return tf.reduce_mean(x, axis=[1, 2])

    def sd(x):
        return tf.math.reduce_std(x, axis=[1, 2])

    return {
        "brightness": mean(luma),
        "contrast": sd(luma),
        "sharpness": tf.math.reduce_variance(laplacian, axis=[1, 2, 3]),
        "colourfulness": tf.sqrt(sd(rg) ** 2 + sd(yb) ** 2)
        + 0.3 * tf.sqrt(mean(rg) ** 2 + mean(yb) ** 2),
    }


def projection(width: int) -> np.ndarray | None:
    """The ``[width, EMBEDDING_DIMS]`` projection of an embedding that wide; None if narrow."""
    if width <= EMBEDDING_DIMS:
        return None
    rng = np.random.default_rng(PROJECTION_SEED)
    return (rng.standard_normal((width, EMBEDDING_DIMS)) / np.sqrt(EMBEDDING_DIMS)).astype(
        np.float32
    )


def aspect(width: float, height: float) -> float:
    """Width over height (0 when the height is unknown)."""
    return float(width) / float(height) if height else 0.0
