"""Monitoring a model: a window of its prediction log, or images, against its reference profile.

The I/O around ``visionpipe.drift``: the profile from the model, the window from the
log (``visionpipe.predlog``) or from images scored here through the model's
``monitor`` signature, freshly labelled images for live accuracy, and the report.
Everything is checked before anything is written.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from visionpipe import features as F
from visionpipe import sources, storage
from visionpipe.drift import Observations, Report, Settings, check_profile, detect, ood_scores
from visionpipe.errors import UserError
from visionpipe.predlog import LogWindow, read_log
from visionpipe.sections import MonitorConfig
from visionpipe.serving import Classifier, Collector, read_file

log = logging.getLogger(__name__)

REPORT_MD = "report.md"
REPORT_JSON = "monitor.json"


class MonitorInputError(UserError, ValueError):
    """The model, log, images or labels cannot be monitored; the message says which and why."""


@dataclass
class MonitorResult:
    """One monitoring pass: the verdicts, what was read and what could not be used."""

    report: Report
    model: dict[str, str]
    source: str
    out_dir: str = ""
    window: str = ""  # what was read, in words
    unscored: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    unreadable_records: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The JSON ``visionpipe monitor --json`` prints."""
        report = self.report.to_dict()
        return {
            "drift": report.pop("drift"),
            "reason": report.pop("reason"),
            "model": self.model,
            "source": self.source,
            "window": self.window,
            **report,
            "unscored": [{"file": f, "reason": r} for f, r in self.unscored],
            "unreadable_records": self.unreadable_records,
            "report": storage.join(self.out_dir, REPORT_MD) if self.out_dir else "",
        }


def settings_of(config: MonitorConfig) -> Settings:
    """The detectors' thresholds from the config.

    Raises:
        MonitorInputError: thresholds under which a test could never find drift.
    """
    try:
        return Settings(
            alpha=config.alpha,
            min_records=config.min_records,
            max_sample=config.max_sample,
            permutations=config.permutations,
            accuracy_margin=config.accuracy_margin,
        )
    except ValueError as err:
        raise MonitorInputError(str(err)) from None


def load_profile(model_dir: str, given: str) -> dict[str, Any]:
    """The reference profile a pushed model carries.

    Raises:
        MonitorInputError: the model has none (not pushed by a visionpipe that makes one).
    """
    uri = storage.join(model_dir, F.REFERENCE_PROFILE)
    if not storage.exists(uri):
        raise MonitorInputError(
            f"{given}: no reference profile ({F.REFERENCE_PROFILE}); push a model evaluated "
            "by this visionpipe (evaluate makes the profile, push puts it in the model)"
        )
    profile = storage.read_json(uri)
    try:
        check_profile(profile, given)
    except ValueError as err:
        raise MonitorInputError(str(err)) from None
    return profile


def check_labels(labels: str, known: list[str]) -> list[sources.Source]:
    """The labelled images of ``labels`` (a folder per class or a CSV of path,label).

    Raises:
        MonitorInputError: no such input, or labels the model does not know.
    """
    try:
        found = sources.list_sources(labels)
    except sources.DataError as err:
        raise MonitorInputError(f"--labels {err}") from None
    if not found:
        raise MonitorInputError(f"--labels {labels}: no labelled images")
    unknown = sorted({s.label for s in found} - set(known))
    if unknown:
        raise MonitorInputError(
            f"--labels {labels}: classes the model does not know: {', '.join(unknown)} "
            f"(the model's classes: {', '.join(known)})"
        )
    return found


def observe_files(
    classifier: Classifier, paths: list[str], batch_size: int
) -> tuple[Observations, list[tuple[str, str]]]:
    """Scores files through the ``monitor`` signature: observations and unscored files."""
    collector = Collector()
    found = classifier.predict_files(paths, batch_size, sink=collector)
    unscored = [(p.file, p.error) for p in found if p.error]
    return Observations.from_outputs(collector.outputs, collector.keys), unscored


def run_monitor(
    model_dir: str,
    given: str,
    identity: dict[str, str],
    config: MonitorConfig,
    batch_size: int = 64,
    log_uri: str | None = None,
    since: dt.datetime | None = None,
    data: str | None = None,
    labels: str | None = None,
    out_dir: str = "",
) -> MonitorResult:
    """Drift (and, with ``labels``, live accuracy) of one window against the model's profile.

    The window is the log's records of this model (since ``since``), or the images of
    ``data``; with neither, the labelled images themselves.

    Raises:
        MonitorInputError: a missing profile, log, data or labels, or unknown labels
            (before anything is written).
    """
    settings = settings_of(config)
    profile = load_profile(model_dir, given)
    labelled = check_labels(labels, profile["labels"]) if labels else []
    window: LogWindow | None = None
    if log_uri is not None:
        try:
            window = read_log(log_uri, identity["digest"], since)
        except FileNotFoundError as err:
            raise MonitorInputError(str(err)) from None
    paths = []
    if data is not None:
        try:
            paths = sources.list_images(data)
        except sources.DataError as err:
            raise MonitorInputError(f"--data {err}") from None
    classifier = None
    if paths or labelled:
        classifier = Classifier(model_dir, monitored=True)
        if not classifier.monitored:
            raise MonitorInputError(f"{given}: the model has no monitor signature; retrain it")
    unscored: list[tuple[str, str]] = []
    live = None
    if labelled:
        live, missed = observe_files(classifier, [s.uri for s in labelled], batch_size)
        truth = {s.uri: s.label for s in labelled}
        live.labels = np.array([truth[k] for k in live.keys], dtype=object)
        unscored += missed
    if window is not None:
        obs = Observations.from_records(window.records)
        records = window.records

        def image_of(row: int) -> bytes:
            return _logged_image(records[row])

        source = f"log {log_uri}" + (f" since {since.isoformat()}" if since else "")
        what = window.describe()
    elif paths:
        obs, missed = observe_files(classifier, paths, batch_size)
        unscored += missed
        source, what = f"images {data}", f"{len(obs)} of {len(paths)} images scored"
    else:
        obs = live
        source, what = f"labelled images {labels}", f"{len(obs)} labelled images scored"
    if window is None:  # scored files: the gallery reads the few it shows again

        def image_of(row: int) -> bytes:
            return _read(obs.keys[row])

    report = detect(profile, obs, settings, live)
    result = MonitorResult(
        report,
        identity,
        source,
        out_dir,
        what,
        unscored,
        window.unreadable if window is not None else 0,
    )
    if out_dir:
        from components.monitor.report import write_report

        scores = ood_scores(profile, obs.embedding) if len(obs) else np.zeros(0)
        write_report(out_dir, result, profile, obs, scores, image_of)
    log.debug("monitor: %s", report.reason)  # the verb prints it
    return result


def _logged_image(record: dict[str, Any]) -> bytes:
    """The image of a log record: its bytes when logged, else its file when still readable."""
    if record.get("image"):
        try:
            return base64.b64decode(record["image"])
        except ValueError:
            return b""
    return _read(record.get("file") or "")


def _read(uri: str) -> bytes:
    """A file's bytes, or b"" when it is gone or unreadable (the gallery leaves it out)."""
    return read_file(uri)[0] if uri else b""
