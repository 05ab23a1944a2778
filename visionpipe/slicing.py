"""Slices: which test examples a slice name groups, defined once for ingest and evaluate.

A slice name (``evaluate.slices``) is one of:

- an **attribute** of the sources: a CSV's extra column (``path,label,site,camera``), or
  ``folder``, the folders between a class folder and the file (``cat/site_a/x.jpg``:
  ``site_a``); ``folder1``, ``folder2``, ... are its first, second, ... level;
- an **image property**, bucketed with fixed bounds (so a slice means the same in every
  run and a threshold on ``size=small`` keeps its meaning):
  - ``size``: the shorter side of the image as ingested, ``tiny`` < 64 px <= ``small``
    < 256 px <= ``medium`` < 1024 px <= ``large``;
  - ``brightness``: the mean luma (0-1) of the pixels the model classifies
    (``visionpipe.profile``), ``dark`` < 1/3 <= ``normal`` < 2/3 <= ``bright``;
  - ``format``: the encoded format (``jpeg``, ``png``).

Examples without a value of an attribute form the slice ``(none)``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from visionpipe.errors import UserError
from visionpipe.sources import FOLDER_ATTRIBUTE

PROPERTY_SLICES = ("size", "brightness", "format")
SIZE_BUCKETS = ((64, "tiny"), (256, "small"), (1024, "medium"), (None, "large"))
BRIGHTNESS_BUCKETS = ((1 / 3, "dark"), (2 / 3, "normal"), (None, "bright"))
NO_VALUE = "(none)"
_FOLDER_LEVEL = re.compile(rf"^{FOLDER_ATTRIBUTE}([1-9][0-9]*)$")


class SliceError(UserError, ValueError):
    """A slice names a column the data does not have, or a value no example has."""


def attribute_of(name: str) -> str | None:
    """The source attribute a slice reads (``folder2``: ``folder``); None for a property."""
    if name in PROPERTY_SLICES:
        return None
    return FOLDER_ATTRIBUTE if _FOLDER_LEVEL.match(name) else name


def check_slice_names(data: object, slices: Sequence[str], attributes: Sequence[str]) -> None:
    """Fails, naming it, on a slice that is neither a property nor an attribute of the data.

    ``folder`` and its levels are always known (a flat folder dataset has none: one
    ``(none)`` slice).

    Raises:
        SliceError: with the data, the unknown name and the columns it has.
    """
    known = set(attributes) | {FOLDER_ATTRIBUTE}
    for name in slices:
        attribute = attribute_of(name)
        if attribute is not None and attribute not in known:
            columns = ", ".join(attributes) or "none"
            raise SliceError(
                f"evaluate.slices names {name!r}, which {data} does not have (its extra "
                f"columns: {columns}; properties: {', '.join(PROPERTY_SLICES)}, {FOLDER_ATTRIBUTE})"
            )


def _bucket(values: np.ndarray, buckets) -> list[str]:
    out = []
    for v in values:
        out.append(next(name for bound, name in buckets if bound is None or v < bound))
    return out


def slice_values(
    name: str,
    attributes: dict[str, list[str]],
    formats: Sequence[str],
    widths: Sequence[int],
    heights: Sequence[int],
    brightness: Sequence[float],
) -> list[str]:
    """The value of slice ``name`` for every example, in order.

    Args:
        name: a slice name (see the module).
        attributes: each attribute's value per example (``""``: none).
        formats: each example's encoded format.
        widths: each example's width, from its header.
        heights: each example's height, from its header.
        brightness: the mean luma of each example as the model saw it.
    """
    if name == "format":
        return [f or NO_VALUE for f in formats]
    if name == "size":
        return _bucket(np.minimum(np.asarray(widths), np.asarray(heights)), SIZE_BUCKETS)
    if name == "brightness":
        return _bucket(np.asarray(brightness, dtype=float), BRIGHTNESS_BUCKETS)
    level = _FOLDER_LEVEL.match(name)
    values = attributes[attribute_of(name)]
    if level:
        k = int(level.group(1))
        parts = [v.split("/") if v else [] for v in values]
        return [p[k - 1] if len(p) >= k else NO_VALUE for p in parts]
    return [v or NO_VALUE for v in values]
