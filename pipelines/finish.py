"""The pipeline's exit handler: it runs when the run ends, whatever happened before.

``build_pipeline`` wraps every step in ``dsl.ExitHandler(finish)``; KFP (on a cluster,
and kfp.local here) runs ``finish`` after the last step, or after the step that failed,
with the run's ``PipelineTaskFinalStatus``. It

- marks the MLflow pipeline run FINISHED or FAILED, naming the step that failed and its
  error: on a cluster nothing else would (a step that dies leaves the run RUNNING);
- POSTs a JSON summary to ``pipeline.notify_url`` on failure (or always, with
  ``pipeline.notify_on: always``). The body has a ``text`` line, so a Slack or Teams
  incoming webhook shows it as it is, and the fields a program would read. A webhook
  that does not answer is logged and tagged on the run; it does not fail the run.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from pipelines.adapters import mlflow_tracking as tracking
from pipelines.adapters.mlflow_tracking import PARENT_TAG, Tracking
from visionpipe.config import Config
from visionpipe.record import ERROR_TAG, STEP_TAG

log = logging.getLogger(__name__)

NOTIFY_TIMEOUT_S = 10
NOTIFY_ERROR_TAG = "visionpipe.notify_error"


@dataclass(frozen=True)
class Ending:
    """How a pipeline run ended: its state and, when it failed, which step and why."""

    state: str  # SUCCEEDED, FAILED, CANCELED (KFP's words)
    failed_step: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        """Whether the run succeeded."""
        return self.state == "SUCCEEDED"


def finish(arguments: dict[str, Any]) -> None:
    """The ``finish`` component's body: marks the run, then notifies."""
    from pipelines.execute import component_context

    status = arguments["status"]
    config, session = component_context(
        arguments["config_json"], arguments["mlflow_tracking_uri"], arguments["mlflow_run_id"]
    )
    ending = Ending(str(status.state))
    if not ending.ok:
        ending = failed_step(session, ending.state, str(status.error_message or ""))
    mark(session, ending)
    if config.pipeline.notify_url and (not ending.ok or config.pipeline.notify_on == "always"):
        notify(config, session, ending)


def failed_step(session: Tracking, state: str, fallback: str) -> Ending:
    """The step run of this pipeline run that failed (the first), and its error."""
    if not session.pipeline_run_id:
        return Ending(state, error=fallback)
    query = f"tags.`{PARENT_TAG}` = '{session.pipeline_run_id}' and attributes.status = 'FAILED'"
    runs = session.client.search_runs(
        [session.experiment_id], query, order_by=["attributes.start_time ASC"], max_results=1
    )
    if not runs:
        return Ending(state, error=fallback)
    tags = runs[0].data.tags
    return Ending(state, tags.get(STEP_TAG, runs[0].info.run_name), tags.get(ERROR_TAG, fallback))


def mark(session: Tracking, ending: Ending) -> None:
    """Ends the MLflow pipeline run as ``ending`` says (nothing without one)."""
    if not session.pipeline_run_id:
        return
    error = ""
    if not ending.ok:
        error = f"step {ending.failed_step} failed: {ending.error}" if ending.failed_step else ""
        error = error or ending.error or f"the run ended {ending.state}"
    session.tracker(session.pipeline_run_id).finish(ending.ok, error)


def payload(config: Config, session: Tracking, ending: Ending) -> dict[str, Any]:
    """The webhook's JSON body: a one-line ``text`` and the run's outcome."""
    record = None
    if session.pipeline_run_id:
        record = tracking.record_of(
            tracking.retrying(session.client.get_run, session.pipeline_run_id)
        )
    name = config.pipeline.name
    if ending.ok:
        text = f"visionpipe {name}: run succeeded"
        if record is not None and record.skipped:
            text += " (no retraining: " + (record.data_check or "data unchanged") + ")"
        elif record is not None and record.pushed_version is not None:
            text += f", version {record.pushed_version} pushed"
        elif record is not None and record.blessed is False:
            text += f", not blessed ({record.blessing_reason})"
    else:
        where = f" in step {ending.failed_step}" if ending.failed_step else ""
        text = f"visionpipe {name}: run {ending.state.lower()}{where}: {ending.error}".rstrip(": ")
    body: dict[str, Any] = {
        "text": text,
        "pipeline": name,
        "state": ending.state,
        "failed_step": ending.failed_step,
        "error": ending.error,
        "model_name": config.push.model_name,
        "mlflow_tracking_uri": session.uri,
        "mlflow_run_id": session.pipeline_run_id,
    }
    if record is not None:
        body.update(
            skipped=record.skipped,
            blessed=record.blessed,
            pushed_version=record.pushed_version,
            test_accuracy=record.test_accuracy,
            data_fingerprint=record.data_fingerprint,
        )
    return body


def notify(config: Config, session: Tracking, ending: Ending) -> bool:
    """POSTs ``payload`` to ``pipeline.notify_url``; False (logged, tagged) if it failed."""
    url = config.pipeline.notify_url
    body = json.dumps(payload(config, session, ending)).encode()
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=NOTIFY_TIMEOUT_S) as response:  # noqa: S310
            response.read()
        log.info("notified %s: run %s", url, ending.state)
        return True
    except (urllib.error.URLError, OSError, ValueError) as err:
        problem = f"notify_url {url} did not take the notice: {getattr(err, 'reason', err)}"
        log.warning("%s", problem)
        if session.pipeline_run_id:
            session.tracker(session.pipeline_run_id).set_tags({NOTIFY_ERROR_TAG: problem})
        return False
