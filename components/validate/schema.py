"""The data schema: what the data looked like, as checks the next data must pass.

Inferred from a profile (``infer_schema``; ``visionpipe schema infer`` writes it), or
written by hand: the classes, the image formats, and for every property of
``components.validate.profile`` the range seen on train (its 0.5 % and 99.5 %
quantiles, so one odd image does not widen it). A schema file is YAML::

    classes: [circle, square, triangle]
    formats: [jpeg]
    ranges:
      width: [32, 32]
      sharpness: [0.004, 0.09]
"""

from __future__ import annotations

from typing import Any

import yaml

from components.validate.profile import SIZE_PROPERTIES
from visionpipe import storage
from visionpipe.errors import UserError
from visionpipe.profile import PIXEL_PROPERTIES

PROPERTIES = (*SIZE_PROPERTIES, *PIXEL_PROPERTIES)


class SchemaError(UserError, ValueError):
    """A schema file cannot be used; the message names it and what is wrong."""


def infer_schema(profile: dict[str, Any]) -> dict[str, Any]:
    """The schema a profile's data passes: its classes, formats and train's ranges."""
    splits = profile["splits"]
    classes = sorted({c for s in splits.values() for c in s["classes"]})
    formats = sorted({f for s in splits.values() for f in s["formats"]})
    ranges = {}
    for name in PROPERTIES:
        quantiles = splits["train"]["properties"].get(name, {}).get("quantiles")
        if quantiles:
            ranges[name] = [round(quantiles["0.005"], 6), round(quantiles["0.995"], 6)]
    return {"classes": classes, "formats": formats, "ranges": ranges}


def write_schema(schema: dict[str, Any], uri: str) -> None:
    """``schema`` as the YAML ``load_schema`` reads (``visionpipe schema infer``)."""
    storage.write_bytes(uri, yaml.safe_dump(schema, sort_keys=False).encode())


def load_schema(uri: str) -> dict[str, Any]:
    """A schema file, checked.

    Raises:
        SchemaError: the file is missing, is not YAML, or has an unknown key, property
            or a range that is not ``[low, high]``.
    """
    try:
        data = yaml.safe_load(storage.read_text(uri))
    except FileNotFoundError:
        raise SchemaError(f"validation.schema_uri {uri}: no such file") from None
    except yaml.YAMLError as err:
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise SchemaError(f"validation.schema_uri {uri}: not YAML{where}") from None
    if not isinstance(data, dict):
        raise SchemaError(
            f"validation.schema_uri {uri}: expected a mapping of classes, formats, ranges"
        )
    unknown = set(data) - {"classes", "formats", "ranges"}
    if unknown:
        raise SchemaError(f"validation.schema_uri {uri}: unknown key(s) {sorted(unknown)}")
    for key in ("classes", "formats"):
        if not isinstance(data.get(key, []), list):
            raise SchemaError(f"validation.schema_uri {uri}: {key} must be a list")
    for name, bounds in (data.get("ranges") or {}).items():
        if name not in PROPERTIES:
            raise SchemaError(
                f"validation.schema_uri {uri}: unknown property {name!r} "
                f"(one of {', '.join(PROPERTIES)})"
            )
        if not (
            isinstance(bounds, list)
            and len(bounds) == 2
            and all(isinstance(b, int | float) for b in bounds)
            and bounds[0] <= bounds[1]
        ):
            raise SchemaError(f"validation.schema_uri {uri}: ranges.{name} must be [low, high]")
    return {
        "classes": data.get("classes", []),
        "formats": data.get("formats", []),
        "ranges": data.get("ranges") or {},
    }
