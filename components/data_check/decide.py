"""The data check's decision: pure, over the last successful run's typed record."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from visionpipe.record import RunRecord


@dataclass(frozen=True)
class DataCheck:
    """Whether a pipeline run goes on to train, and why."""

    retrain: bool
    reason: str
    previous_run_id: str = ""
    fingerprint: str = ""  # the data's, as ingest computed it

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


ALWAYS = DataCheck(True, "retrains on every run (only_if_data_changed is off)")


def decide(fingerprint: str, settings: dict, version: str, previous: RunRecord | None) -> DataCheck:
    """Retrain unless data, model settings and version all equal ``previous`` run's."""
    if previous is None:
        return DataCheck(True, "no earlier successful pipeline run to compare the data with")
    run_id = previous.run_id
    before = previous.data_fingerprint
    if before != fingerprint:
        change = f"{before[:12] or 'none'} -> {fingerprint[:12]}"
        return DataCheck(True, f"data changed since run {run_id} ({change})", run_id)
    if previous.model_settings is None:
        return DataCheck(True, f"config of run {run_id} was not recorded; retraining", run_id)
    now = json.loads(json.dumps(settings))  # compared as recorded: JSON values
    changed = changed_settings(previous.model_settings, now)
    if changed:
        return DataCheck(True, f"config changed since run {run_id}: {changed}", run_id)
    if previous.visionpipe_version != version:
        change = f"{previous.visionpipe_version or 'unknown'} -> {version}"
        return DataCheck(True, f"visionpipe changed since run {run_id} ({change})", run_id)
    return DataCheck(
        False,
        f"data unchanged since run {run_id} (fingerprint {fingerprint[:12]}), "
        "and so are the config and visionpipe's version",
        run_id,
    )


def changed_settings(before: dict, now: dict, shown: int = 3) -> str:
    """``trainer.epochs 25 -> 30, ...`` for the settings that differ (at most ``shown``)."""
    keys = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    text = ", ".join(
        f"{k} {json.dumps(before.get(k))} -> {json.dumps(now.get(k))}" for k in keys[:shown]
    )
    return text + (f" (and {len(keys) - shown} more)" if len(keys) > shown else "")


def project_version() -> str:
    """The installed visionpipe's version."""
    from importlib import metadata

    try:
        return metadata.version("visionpipe")
    except metadata.PackageNotFoundError:
        return "unknown"
