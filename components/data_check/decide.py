"""The data check's decision: pure, over the last successful run's typed record."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from visionpipe.record import MonitorRecord, RunRecord


@dataclass(frozen=True)
class DataCheck:
    """Whether a pipeline run goes on to train, and why."""

    retrain: bool
    reason: str
    previous_run_id: str = ""
    fingerprint: str = ""  # the data's, as ingest computed it
    trigger: str = ""  # what made it retrain, in a word or two (``compare``'s "why")

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


ALWAYS = DataCheck(True, "retrains on every run (pipeline.retrain_when: always)", trigger="always")


def effective_reasons(retrain_when: list[str], only_if_data_changed: bool) -> list[str]:
    """What retrains this run: ``retrain_when``, or ``data_changed`` for the old flag.

    ``only_if_data_changed`` (the KFP parameter and ``--only-if-data-changed`` that
    schedules set) stands for ``retrain_when: [data_changed]`` when ``retrain_when`` is
    left at its default, ``[always]``; a configured ``retrain_when`` decides alone.
    """
    reasons = list(dict.fromkeys(retrain_when)) or ["always"]
    if only_if_data_changed and reasons == ["always"]:
        return ["data_changed"]
    return reasons


def decide_retrain(
    reasons: list[str],
    fingerprint: str,
    settings: dict,
    version: str,
    previous: RunRecord | None,
    monitor: MonitorRecord | None,
) -> DataCheck:
    """Retrain for the first of ``reasons`` that holds; else skip, saying why none did.

    ``data_changed``: the data, model settings or version differ from ``previous`` (the
    last run that trained). ``drift``: the newest monitor run of the model, newer than
    ``previous``, found drift or an accuracy drop (a verdict is acted on once: the run
    it starts is newer than it).
    """
    if "always" in reasons:
        return ALWAYS
    why_not = []
    if "data_changed" in reasons:
        check = decide(fingerprint, settings, version, previous)
        if check.retrain:
            return check
        why_not.append(check.reason)
    if "drift" in reasons:
        check = drift_check(previous, monitor)
        if check.retrain:
            return check
        why_not.append(check.reason)
    run_id = previous.run_id if previous else ""
    return DataCheck(False, "; ".join(why_not), run_id)


def drift_check(previous: RunRecord | None, monitor: MonitorRecord | None) -> DataCheck:
    """Retrain when the newest monitor verdict since the last training found drift."""
    if previous is None:
        return DataCheck(
            True, "no earlier successful pipeline run: no model to monitor yet", trigger="first run"
        )
    run_id = previous.run_id
    if monitor is None or monitor.start_time_ms <= previous.start_time_ms:
        return DataCheck(False, f"no monitor run since run {run_id} trained", run_id)
    model = f"{monitor.model_name} v{monitor.model_version or '?'}"
    if monitor.drift:
        reason = f"monitor run {monitor.run_id} on {model}: {monitor.reason}"
        return DataCheck(True, reason, run_id, trigger="drift")
    return DataCheck(False, f"monitor run {monitor.run_id} on {model}: {monitor.reason}", run_id)


def decide(fingerprint: str, settings: dict, version: str, previous: RunRecord | None) -> DataCheck:
    """Retrain unless data, model settings and version all equal ``previous`` run's."""
    if previous is None:
        return DataCheck(
            True, "no earlier successful pipeline run to compare the data with", trigger="first run"
        )
    run_id = previous.run_id
    before = previous.data_fingerprint
    if before != fingerprint:
        change = f"{before[:12] or 'none'} -> {fingerprint[:12]}"
        return DataCheck(
            True, f"data changed since run {run_id} ({change})", run_id, trigger="data changed"
        )
    if previous.model_settings is None:
        return DataCheck(
            True,
            f"config of run {run_id} was not recorded; retraining",
            run_id,
            trigger="config changed",
        )
    now = json.loads(json.dumps(settings))  # compared as recorded: JSON values
    changed = changed_settings(previous.model_settings, now)
    if changed:
        return DataCheck(
            True, f"config changed since run {run_id}: {changed}", run_id, trigger="config changed"
        )
    if previous.visionpipe_version != version:
        change = f"{previous.visionpipe_version or 'unknown'} -> {version}"
        return DataCheck(
            True,
            f"visionpipe changed since run {run_id} ({change})",
            run_id,
            trigger="version changed",
        )
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
