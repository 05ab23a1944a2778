"""The push step (a blessed model to serving and the registry) and the rollback verb."""

from __future__ import annotations

from components.push.release import Released, release
from components.push.release import rollback as rollback_release
from visionpipe.home import Home
from visionpipe.record import RunRecord
from visionpipe.step import Step, StepContext, Verb, named


def run(ctx: StepContext, model: str, blessing: str) -> Released:
    """Publishes to the serving root and registers the version as ``champion``.

    The serving root is ``push.serving_root``, or ``<VISIONPIPE_HOME>/serving``.
    """
    config = ctx.config
    released = release(
        model,
        blessing,
        Home.resolve().serving_root_for(config),
        config.push.model_name,
        ctx.registry,
        keep_versions=config.push.keep_versions,
        run_id=ctx.tracker.run_id,
        pipeline_run_id=ctx.pipeline.run_id,
        data_fingerprint=ctx.pipeline.read().data_fingerprint,
    )
    pushed = released.pushed
    if released.model_id:
        ctx.tracker.link_model(released.model_id)  # the logged model this push registered
    if released.retention_deleted:
        deleted = ",".join(map(str, released.retention_deleted))
        ctx.tracker.set_tags({"retention_deleted_versions": deleted})
    outcome = {
        "pushed_version": pushed.version,
        "pushed_path": pushed.path,
        "registered_version": released.registered_version,
    }
    ctx.tracker.log_metrics({"pushed_version": pushed.version})
    ctx.tracker.set_tags(outcome)
    ctx.pipeline.record(**outcome)
    return released


def publish(released: Released, artifacts: dict) -> int:
    """Where it went, as metadata; returns the serving version."""
    pushed = released.pushed
    artifacts["pushed"].metadata.update(
        {"version": pushed.version, "path": pushed.path, "digest": pushed.digest}
    )
    return pushed.version


def figure(released: Released) -> str:
    """``version 3`` (``(already pushed)`` when nothing changed)."""
    return f"version {released.pushed.version}" + (
        " (already pushed)" if released.already_pushed else ""
    )


def summary(record: RunRecord) -> list[tuple[str, str]]:
    """The pushed line."""
    if record.skipped:
        return []
    if record.pushed_version is None:
        return [("pushed", "not pushed")]
    return [("pushed", f"version {record.pushed_version} -> {record.pushed_path}")]


def _push_arguments(p) -> None:
    p.add_argument("--model", required=True, help="SavedModel directory")
    p.add_argument("--blessing", required=True, help="evaluate's output directory")


def _show_push(args, released: Released) -> None:
    import json

    pushed = released.pushed
    shown = {"version": pushed.version, "path": pushed.path}
    print(json.dumps({**shown, "already_pushed": pushed.already_pushed}))


def run_rollback(ctx: StepContext, model_name: str | None = None) -> dict:
    """The previous champion becomes champion again: in the serving root, then the registry."""
    name = model_name or ctx.config.push.model_name
    serving_root = Home.resolve().serving_root_for(ctx.config)
    done = rollback_release(serving_root, name, ctx.registry)
    ctx.tracker.set_tags({k: str(v) for k, v in done.items()})
    return done


def _show_rollback(args, done: dict) -> None:
    import json

    print(json.dumps(done))


STEPS = (
    Step(
        name="push",
        order=70,
        run=run,
        doc="Publish a blessed model; returns the serving version.",
        inputs={"model": "Model", "blessing": "Artifact"},
        outputs={"pushed": "Artifact"},
        returns=int,
        publish=publish,
        figure=figure,
        summary=summary,
        verb=Verb(
            help="Publish a blessed model to the serving root and the registry.",
            arguments=_push_arguments,
            call=named("model", "blessing"),
            show=_show_push,
        ),
    ),
    Step(
        name="rollback",
        order=75,
        run=run_rollback,
        figure=lambda done: f"champion is version {done['champion']} again",
        in_pipeline=False,
        verb=Verb(
            help="Make the previous champion the champion again (registry + serving).",
            arguments=lambda p: p.add_argument(
                "--model-name", help="registered model name (default: push.model_name)"
            ),
            call=named("model_name"),
            show=_show_rollback,
        ),
    ),
)
