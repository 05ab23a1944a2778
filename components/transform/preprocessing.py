"""The one preprocessing_fn, used by the transform step and (as its saved graph) the served model.

Nothing here runs at serving time as Python.

Raw image bytes are decoded and resized to a square of the configured side, as 8-bit
pixels: that is what the transformed examples store (one byte per value) and what the
model receives. The analyzers, on the training split only, compute the label vocabulary
with its frequencies. The per-channel pixel mean and standard deviation are counted by
the transform step as it writes the training split; the model's first layer normalises
with them (``trainer.model.Standardize``), so the conversion to float happens inside
the trained and the served graph alike.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf
import tensorflow_transform as tft

from visionpipe import features as F
from visionpipe.pixels import check_mode, decode_and_resize


def make_preprocessing_fn(image_size: int, resize_mode: str) -> Callable:
    """The ``preprocessing_fn`` for a target size and resize mode.

    Outputs ``image`` (the resized pixels, int64 in the graph, written as one byte each)
    and ``label`` (the class id). The graph is what every served request runs, so it
    holds nothing else: the pixel statistics are counted by the transform step's Beam
    pipeline as it writes the training split (``transform.pixel_statistics``).
    """
    check_mode(resize_mode)

    def preprocessing_fn(inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        pixels = decode_and_resize(inputs[F.IMAGE_ENCODED], image_size, resize_mode)
        outputs = {F.TRANSFORMED_IMAGE: tf.cast(pixels, tf.int64)}
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
