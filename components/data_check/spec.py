"""The data-check step: train on this run's data, or stop after ingest (and why)."""

from __future__ import annotations

import logging
from dataclasses import replace

from components.data_check.decide import (
    DataCheck,
    decide_retrain,
    effective_reasons,
    project_version,
)
from visionpipe.record import KIND_TAG, PIPELINE_KIND, RunRecord
from visionpipe.step import Step, StepContext

log = logging.getLogger(__name__)


def run(ctx: StepContext, fingerprint: str, only_if_data_changed: bool) -> DataCheck:
    """Decides whether this pipeline run trains on the data ingest just fingerprinted.

    By ``pipeline.retrain_when`` (``only_if_data_changed``, what scheduled runs ask
    for, stands for ``data_changed``): ``always``; ``data_changed``, when what the model
    depends on differs from the experiment's last successful pipeline run (the data
    fingerprint, the model settings of ``Config.model_settings``, the visionpipe
    version); ``drift``, when a monitor run of the model since then found drift or an
    accuracy drop. The decision and what it was made on are recorded on the pipeline
    run (``skipped``, ``data_check``, ``model_settings``, ``visionpipe_version``).
    """
    config = ctx.config
    settings, version = config.model_settings(), project_version()
    reasons = effective_reasons(config.pipeline.retrain_when, only_if_data_changed)
    check = decide_retrain(
        reasons,
        fingerprint,
        settings,
        version,
        ctx.pipeline.last_successful() if reasons != ["always"] else None,
        ctx.pipeline.latest_monitor(config.push.model_name) if "drift" in reasons else None,
    )
    check = replace(check, fingerprint=fingerprint)
    log.info("data check: %s", check.reason)
    ctx.pipeline.tracker.set_tags({KIND_TAG: PIPELINE_KIND})  # also on a run KFP's MLflow made
    ctx.pipeline.record(
        skipped=not check.retrain,
        data_check=check.reason,
        retrain_trigger=check.trigger,
        model_settings=settings,
        visionpipe_version=version,
    )
    return check


def publish(check: DataCheck, artifacts: dict) -> bool:
    """The decision as metadata; returns whether to train (the ``dsl.If`` condition)."""
    artifacts["decision"].metadata.update(check.to_dict())
    return check.retrain


def summary(record: RunRecord) -> list[tuple[str, str]]:
    """The reason, for a run that stopped here."""
    return [("reason", record.data_check)] if record.skipped else []


STEPS = (
    Step(
        name="data-check",
        order=20,
        run=run,
        doc="Whether the run goes on to train (pipeline.retrain_when): always, when the "
        "data, settings or version changed, or when a monitor run found drift.",
        params={"fingerprint": str, "only_if_data_changed": bool},
        outputs={"decision": "Artifact"},
        returns=bool,
        publish=publish,
        figure=lambda c: ("retrain: " if c.retrain else "skip: ") + c.reason,
        summary=summary,
        own_run=False,
    ),
)
