"""The pipeline-run record: what a run decided and produced, as one typed value.

Steps write their outcome on the pipeline run through ``PipelineRun.record`` with the
field names of ``RunRecord``; the local runner's summary, ``compare``, the scheduler
and the data check read it back with ``RunRecord.from_store``. The tag and metric
names a field is stored under are defined here and nowhere else, so a misspelt
outcome is a ``TypeError`` where it is written, not a silent empty value where it is
read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

KIND_TAG = "visionpipe.kind"  # pipeline, step, trial, monitor, ...
STEP_TAG = "visionpipe.step"
SKIPPED_TAG = "visionpipe.skipped"
ERROR_TAG = "visionpipe.error"
PIPELINE_KIND = "pipeline"
MONITOR_KIND = "monitor"
SPLITS = ("train", "valid", "test")

# Fields stored as tags (text), by the tag's name.
_TAG_FIELDS = {
    "skipped": SKIPPED_TAG,
    "data_check": "data_check",
    "retrain_trigger": "retrain_trigger",
    "data_source": "data_source",
    "data_fingerprint": "data_fingerprint",
    "examples_uri": "examples_uri",
    "validation": "validation",
    "model_settings": "model_settings",
    "visionpipe_version": "visionpipe_version",
    "blessed": "blessed",
    "blessing_reason": "blessing_reason",
    "pushed_version": "pushed_version",
    "pushed_path": "pushed_path",
    "registered_version": "registered_version",
    "label_issues_uri": "label_issues_uri",
}
# Fields stored as metrics (numbers), by the metric's name.
_METRIC_FIELDS = {
    "inputs": "inputs",
    "rejected": "rejected",
    "duplicates": "duplicates",
    "anomalies": "anomalies",
    "pushed_version": "pushed_version",
    "trainer_test_accuracy": "trainer_test_accuracy",
    "label_issues": "label_issues",
}


@dataclass(frozen=True)
class RunRecord:
    """One pipeline run's outcome; fields a run never reached keep their empty default."""

    run_id: str = ""
    status: str = ""
    start_time_ms: int = 0
    skipped: bool = False
    data_check: str = ""
    retrain_trigger: str = ""  # what made the run train (first run, data changed, drift, ...)
    data_source: str = ""
    data_fingerprint: str = ""
    examples_uri: str = ""  # ingest's examples (TFRecords by split) of this run
    validation: str = ""  # the data validation's verdict, one line
    anomalies: int = 0
    model_settings: dict[str, Any] | None = None  # None: not recorded
    visionpipe_version: str = ""
    examples: dict[str, int] = field(default_factory=dict)
    inputs: int = 0
    rejected: int = 0
    duplicates: int = 0
    trainer_test_accuracy: float | None = None
    test_metrics: dict[str, float] = field(default_factory=dict)  # test_* of evaluate
    blessed: bool | None = None
    blessing_reason: str = ""
    label_issues: int | None = None  # training images whose label is probably wrong
    label_issues_uri: str = ""  # their CSV (path,label,suggested), for visionpipe relabel
    pushed_version: int | None = None
    pushed_path: str = ""
    registered_version: str = ""

    @property
    def test_accuracy(self) -> float | None:
        """The candidate's test accuracy, when evaluate ran."""
        return self.test_metrics.get("test_accuracy")

    @property
    def test_macro_f1(self) -> float | None:
        """The candidate's test macro-F1, when evaluate ran."""
        return self.test_metrics.get("test_macro_f1")

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_store(
        cls,
        run_id: str,
        status: str,
        tags: Mapping[str, str],
        metrics: Mapping[str, float],
        start_time_ms: int = 0,
    ) -> RunRecord:
        """Reads a record from a run's tags and (latest) metric values."""
        pushed = tags.get("pushed_version") or metrics.get("pushed_version")
        settings = tags.get("model_settings")
        blessed = tags.get("blessed")
        trainer_accuracy = metrics.get("trainer_test_accuracy")
        return cls(
            run_id=run_id,
            status=status,
            start_time_ms=int(start_time_ms or 0),
            skipped=tags.get(SKIPPED_TAG) == "true",
            data_check=tags.get("data_check", ""),
            retrain_trigger=tags.get("retrain_trigger", ""),
            data_source=tags.get("data_source", ""),
            data_fingerprint=tags.get("data_fingerprint", ""),
            examples_uri=tags.get("examples_uri", ""),
            validation=tags.get("validation", ""),
            anomalies=int(metrics.get("anomalies", 0)),
            model_settings=json.loads(settings) if settings else None,
            visionpipe_version=tags.get("visionpipe_version", ""),
            examples={
                s: int(metrics[f"examples_{s}"]) for s in SPLITS if f"examples_{s}" in metrics
            },
            inputs=int(metrics.get("inputs", 0)),
            rejected=int(metrics.get("rejected", 0)),
            duplicates=int(metrics.get("duplicates", 0)),
            trainer_test_accuracy=trainer_accuracy,
            test_metrics={k: v for k, v in metrics.items() if k.startswith("test_")},
            blessed=None if blessed is None else blessed == "true",
            blessing_reason=tags.get("blessing_reason", ""),
            pushed_version=int(float(pushed)) if pushed not in (None, "") else None,
            pushed_path=tags.get("pushed_path", ""),
            registered_version=tags.get("registered_version", ""),
            label_issues=int(metrics["label_issues"]) if "label_issues" in metrics else None,
            label_issues_uri=tags.get("label_issues_uri", ""),
        )


_FIELDS = {f.name for f in fields(RunRecord)}


def outcome_entries(**outcome: Any) -> tuple[dict[str, float], dict[str, str]]:
    """``(metrics, tags)`` that store the given ``RunRecord`` fields on a run.

    ``examples`` (a split -> count mapping) becomes ``examples_<split>`` metrics and
    ``test_metrics`` the metrics as named; every other field has one tag or metric
    name (both, for ``pushed_version``, which ``compare`` sorts on).

    Raises:
        TypeError: a name that is not a field of ``RunRecord`` (or not storable).
    """
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    for name, value in outcome.items():
        if name == "examples":
            metrics.update({f"examples_{s}": float(n) for s, n in value.items()})
        elif name == "test_metrics":
            metrics.update({k: float(v) for k, v in value.items()})
        elif name in _TAG_FIELDS or name in _METRIC_FIELDS:
            if name in _TAG_FIELDS:
                tags[_TAG_FIELDS[name]] = _text(value)
            if name in _METRIC_FIELDS:
                metrics[_METRIC_FIELDS[name]] = float(value)
        else:
            known = sorted((_TAG_FIELDS.keys() | _METRIC_FIELDS.keys()) & _FIELDS)
            raise TypeError(
                f"{name!r} is not a storable field of the run record; fields: {', '.join(known)}"
            )
    return metrics, tags


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


# A monitor run's verdict, as tags (``visionpipe monitor``; read by the data check).
MONITOR_MODEL_TAG = "monitor.model_name"
_MONITOR_TAGS = {
    "model_name": MONITOR_MODEL_TAG,
    "model_version": "monitor.model_version",
    "model_digest": "monitor.model_digest",
    "drift": "monitor.drift",
    "reason": "monitor.reason",
}


@dataclass(frozen=True)
class MonitorRecord:
    """What one monitor run found for a model: drift (or an accuracy drop) or not, and why."""

    run_id: str = ""
    start_time_ms: int = 0
    model_name: str = ""
    model_version: str = ""
    model_digest: str = ""
    drift: bool = False
    reason: str = ""

    @classmethod
    def from_store(cls, run_id: str, tags: Mapping[str, str], start_time_ms: int = 0):
        """Reads the verdict from a monitor run's tags."""
        values = {f: tags.get(t, "") for f, t in _MONITOR_TAGS.items()}
        return cls(
            run_id=run_id,
            start_time_ms=int(start_time_ms or 0),
            **{**values, "drift": values["drift"] == "true"},
        )


def monitor_tags(identity: Mapping[str, str], drift: bool, reason: str) -> dict[str, str]:
    """The tags that store a monitor verdict on its run (``MonitorRecord``)."""
    values = {
        "model_name": identity.get("name", ""),
        "model_version": identity.get("version", ""),
        "model_digest": identity.get("digest", ""),
        "drift": _text(bool(drift)),
        "reason": reason[:4000],
    }
    return {_MONITOR_TAGS[k]: v for k, v in values.items()}
