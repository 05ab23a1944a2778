"""The checks of this run's data against a schema and within itself.

Each anomaly has a kind, a severity (``validation.severity``: ``fail`` stops the run
before transform, ``warn`` is recorded, ``off`` is not checked) and one line naming what
is wrong. Kinds:

- ``class_vanished``: a class of the schema has no image now (fails by default);
- ``class_appeared``: a class the schema does not have;
- ``split_missing_class``: valid or test has no image of a class train has;
- ``format_unseen``: an image format the schema does not have;
- ``property_outside``: more than ``validation.outside_fraction`` of a split's images
  outside the schema's range of a property (width, height, aspect, file size,
  brightness, contrast, sharpness, colourfulness): a batch of 4x larger, grey or blurry
  images;
- ``split_imbalance``: a split's class proportions differ from train's (Pearson's
  chi-square test, ``scipy.stats.chisquare``, at ``validation.balance_alpha``; only when
  every expected count is 5 or more, where the test holds).

Without a schema (the first run, and no ``validation.schema``) only the checks within the
data run (``split_missing_class``, ``split_imbalance``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from components.validate.schema import PROPERTIES
from visionpipe.config import Config
from visionpipe.sections import ANOMALY_KINDS

KINDS = ANOMALY_KINDS  # the config's list: validation.severity names these
HELD_OUT = ("valid", "test")


@dataclass(frozen=True)
class Anomaly:
    """One thing wrong with the data."""

    kind: str
    severity: str  # fail | warn
    message: str

    def to_dict(self) -> dict[str, str]:
        """JSON-ready form."""
        return asdict(self)


def _classes(values: dict[str, dict[str, list]]) -> set[str]:
    return {label for v in values.values() for label in v["label"]}


def _list(names) -> str:
    names = sorted(names)
    shown = ", ".join(names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _schema_checks(values, schema, config: Config) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    seen = _classes(values)
    expected = set(schema.get("classes", []))
    if expected and expected - seen:
        missing = expected - seen
        found.append(("class_vanished", f"class(es) {_list(missing)} have no images now"))
    if expected and seen - expected:
        found.append(("class_appeared", f"new class(es) {_list(seen - expected)}"))
    formats = set(schema.get("formats", []))
    for split, v in values.items():
        new = sorted(set(v["format"]) - formats) if formats else []
        if new:
            share = sum(f in new for f in v["format"]) / len(v["format"])
            found.append(("format_unseen", f"{split}: format(s) {_list(new)} ({share:.0%})"))
    fraction = config.validation.outside_fraction
    for name in PROPERTIES:
        bounds = schema.get("ranges", {}).get(name)
        if not bounds:
            continue
        low, high = bounds
        for split, v in values.items():
            data = np.asarray(v[name], dtype=np.float64)
            if len(data) < config.validation.min_examples:
                continue
            below, above = float((data < low).mean()), float((data > high).mean())
            if below + above > fraction:
                side = "below" if below >= above else "above"
                found.append(
                    (
                        "property_outside",
                        f"{split}: {below + above:.0%} of images have {name} outside "
                        f"{low:.4g}-{high:.4g} (mostly {side}; median now "
                        f"{float(np.median(data)):.4g})",
                    )
                )
    return found


def _internal_checks(values, config: Config) -> list[tuple[str, str]]:
    from scipy.stats import chisquare

    found: list[tuple[str, str]] = []
    train = values["train"]["label"]
    classes = sorted(set(train))
    if not classes:
        return found
    for split in HELD_OUT:
        labels = values[split]["label"]
        if not labels:
            continue
        missing = set(classes) - set(labels)
        if missing:
            found.append(("split_missing_class", f"{split} has no images of {_list(missing)}"))
        seen, trained = Counter(labels), Counter(train)
        observed = np.array([seen[c] for c in classes], dtype=np.float64)
        share = np.array([trained[c] for c in classes], dtype=np.float64) / len(train)
        expected = share * observed.sum()
        if len(classes) < 2 or expected.min() < 5 or set(labels) - set(classes):
            continue
        p_value = float(chisquare(observed, expected).pvalue)
        if p_value < config.validation.balance_alpha:
            worst = int(np.argmax(np.abs(observed / observed.sum() - share)))
            found.append(
                (
                    "split_imbalance",
                    f"{split}'s class proportions differ from train's (chi-square p "
                    f"{p_value:.2g}; {classes[worst]} {observed[worst] / observed.sum():.0%} "
                    f"against {share[worst]:.0%})",
                )
            )
    return found


def find_anomalies(
    values: dict[str, dict[str, list]], schema: dict[str, Any] | None, config: Config
) -> list[Anomaly]:
    """Every anomaly of ``values`` (``profile.measure``), at its configured severity."""
    found = _internal_checks(values, config)
    if schema is not None:
        found = _schema_checks(values, schema, config) + found
    severity = config.validation.severity
    return [
        Anomaly(kind, severity[kind], message) for kind, message in found if severity[kind] != "off"
    ]
