"""Profiling and checking ingest's examples; the picture of the profile."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from components.validate.anomalies import Anomaly, find_anomalies
from components.validate.profile import PROFILE_FILE, measure, summarize
from components.validate.schema import PROPERTIES, infer_schema, load_schema, write_schema
from visionpipe import storage
from visionpipe.config import Config
from visionpipe.errors import UserError

SCHEMA_FILE = "schema.yaml"
ANOMALIES_FILE = "anomalies.json"
PICTURE_FILE = "data_profile.png"


class DataValidationError(UserError, RuntimeError):
    """The data failed a check whose severity is ``fail``; the message names it."""


@dataclass(frozen=True)
class Validation:
    """What validation found, and what it compared against."""

    profile: dict[str, Any]
    anomalies: list[Anomaly] = field(default_factory=list)
    reference: str = ""  # "schema FILE", "run ID", or "" (nothing to compare against)

    @property
    def failures(self) -> list[Anomaly]:
        """The anomalies that stop the run."""
        return [a for a in self.anomalies if a.severity == "fail"]

    def verdict(self) -> str:
        """One line: what was compared and what was found."""
        against = f" against {self.reference}" if self.reference else " (no reference yet)"
        if not self.anomalies:
            return f"no anomalies{against}"
        count, fails = len(self.anomalies), len(self.failures)
        counts = f"{count} anomal{'y' if count == 1 else 'ies'}"
        counts += f", {fails} failing" if fails else ""
        first = (self.failures or self.anomalies)[0]
        return f"{counts}{against}: {first.kind}: {first.message}"


def validate(
    raw_examples: str,
    config: Config,
    reference_profile: dict[str, Any] | None = None,
    reference_run: str = "",
) -> Validation:
    """Profiles ``raw_examples`` and checks it against the schema.

    The schema is ``validation.schema_uri`` when set, else the one inferred from
    ``reference_profile`` (the last successful run's), else none.
    """
    schema, reference = None, ""
    if config.validation.schema_uri:
        schema, reference = (
            load_schema(config.validation.schema_uri),
            (f"schema {config.validation.schema_uri}"),
        )
    elif reference_profile is not None:
        schema, reference = infer_schema(reference_profile), f"run {reference_run[:8]}"
    values = measure(raw_examples, config)
    profile = summarize(values, config)
    return Validation(profile, find_anomalies(values, schema, config), reference)


def write(validation: Validation, out_dir: str, picture: bool = True) -> None:
    """The profile, the schema this data passes, the anomalies and the picture."""
    storage.makedirs(out_dir)
    storage.write_json(storage.join(out_dir, PROFILE_FILE), validation.profile)
    write_schema(infer_schema(validation.profile), storage.join(out_dir, SCHEMA_FILE))
    storage.write_json(
        storage.join(out_dir, ANOMALIES_FILE), [a.to_dict() for a in validation.anomalies]
    )
    if picture and "://" not in out_dir:
        plot_profile(validation.profile, os.path.join(out_dir, PICTURE_FILE))


def plot_profile(profile: dict[str, Any], path: str) -> None:
    """Each property's quantiles per split (a box from 5 % to 95 %, the median marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = [s for s, p in profile["splits"].items() if p["examples"]]
    figure, axes = plt.subplots(2, 4, figsize=(14, 6))
    for ax, name in zip(axes.ravel(), PROPERTIES, strict=True):
        stats = []
        for split in splits:
            q = profile["splits"][split]["properties"][name].get("quantiles")
            if q:
                stats.append(
                    {
                        "label": split,
                        "whislo": q["0.005"],
                        "q1": q["0.25"],
                        "med": q["0.5"],
                        "q3": q["0.75"],
                        "whishi": q["0.995"],
                        "fliers": [],
                    }
                )
        if stats:
            ax.bxp(stats, showfliers=False)
        ax.set_title(name)
    figure.suptitle("data profile: 0.5 %, 25 %, 50 %, 75 %, 99.5 % per split")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
