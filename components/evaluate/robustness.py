"""The robustness gate's measurements: both models on fixed variants of the test images.

For every variant of ``evaluate.robustness`` (``visionpipe.variants``) the test images'
bytes are changed once and both models are scored on the same changed bytes, through
their served signatures. ``accuracy_under_<variant>`` joins each model's metrics, where
the gate's thresholds, change thresholds and significance tests can name it.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np

from visionpipe.variants import make_variant


def variant_images(images: list[bytes], variant: str) -> list[bytes]:
    """The ``variant`` of every image (threads: PIL's codecs release the GIL)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(partial(make_variant, name=variant), images))


def correct_under(
    probabilities_of: Callable[[list[bytes]], np.ndarray],
    labels: list[str],
    truth: list[str],
    images: list[bytes],
) -> np.ndarray:
    """Per image, whether the model's top class on ``images`` is the true one."""
    if not images:
        return np.zeros(0, dtype=bool)
    predicted = probabilities_of(images).argmax(axis=1)
    return np.array([labels[i] == t for i, t in zip(predicted, truth, strict=True)], dtype=bool)
