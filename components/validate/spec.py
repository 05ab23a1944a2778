"""The validate step: the data's profile per split, checked before anything trains on it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from visionpipe.record import RunRecord
from visionpipe.step import Step, StepContext, Verb

if TYPE_CHECKING:
    from components.validate.validate import Validation


def run(ctx: StepContext, raw_examples: str, profile: str) -> Validation | None:
    """Profiles the examples, checks them, records it all; fails on a ``fail`` anomaly.

    The reference is ``validation.schema_uri``, else the profile the last successful
    pipeline run logged. The profile is logged on the pipeline run too: the next run's
    reference.
    """
    from components.validate.profile import PROFILE_FILE
    from components.validate.validate import (
        ANOMALIES_FILE,
        PICTURE_FILE,
        SCHEMA_FILE,
        DataValidationError,
        validate,
        write,
    )
    from visionpipe import storage

    config = ctx.config
    if not config.validation.enabled:
        return None
    last = ctx.pipeline.last_successful() if not config.validation.schema_uri else None
    reference = ctx.pipeline.load_dict(last.run_id, PROFILE_FILE) if last else None
    result = validate(raw_examples, config, reference, last.run_id if last else "")
    write(result, profile)
    for name in (PROFILE_FILE, SCHEMA_FILE, ANOMALIES_FILE, PICTURE_FILE):
        path = storage.join(profile, name)
        if storage.exists(path):
            ctx.tracker.log_artifact(path)
    ctx.tracker.log_metrics(
        {"anomalies": len(result.anomalies), "anomalies_failing": len(result.failures)}
    )
    ctx.tracker.set_tags({"validation": result.verdict()[:5000]})
    ctx.pipeline.tracker.log_dict(result.profile, PROFILE_FILE)
    ctx.pipeline.record(validation=result.verdict(), anomalies=len(result.anomalies))
    if result.failures:
        raise DataValidationError(f"data validation: {result.verdict()}")
    return result


def publish(result: Validation | None, artifacts: dict) -> None:
    """The verdict and the anomalies as the profile artifact's metadata."""
    if result is not None:
        artifacts["profile"].metadata.update(
            {"verdict": result.verdict(), "anomalies": [a.to_dict() for a in result.anomalies]}
        )


def figure(result: Validation | None) -> str:
    """``no anomalies against run 1a2b3c4d``, or the first anomaly."""
    return "off (validation.enabled: false)" if result is None else result.verdict()[:120]


def summary(record: RunRecord) -> list[tuple[str, str]]:
    """The data line, when something was found."""
    return [("data", record.validation)] if record.anomalies else []


def _arguments(p) -> None:
    p.add_argument("--examples", required=True, help="ingest's output directory")
    p.add_argument("--out", required=True, help="folder for the profile, schema and anomalies")


def _show(args, result: Validation | None) -> int:
    if result is not None:
        print(result.verdict())
        for anomaly in result.anomalies:
            print(f"  {anomaly.severity:4}  {anomaly.kind}: {anomaly.message}")
    return 0


STEPS = (
    Step(
        name="validate",
        order=15,
        run=run,
        doc="Data validation: a profile per split checked against a schema (the last "
        "successful run's, or validation.schema_uri); fails the run on a failing anomaly.",
        inputs={"raw_examples": "Dataset"},
        outputs={"profile": "Artifact"},
        publish=publish,
        figure=figure,
        summary=summary,
        verb=Verb(
            help="Profile ingest's examples and check them against a schema.",
            arguments=_arguments,
            call=lambda a: {"raw_examples": a.examples, "profile": a.out},
            show=_show,
        ),
    ),
)
