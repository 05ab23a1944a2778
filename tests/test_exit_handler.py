"""The pipeline's run-level policies: retries, KFP's cache off, and the exit handler.

The compiled pipeline is read as KFP would run it; ``finish`` is run on a real (SQLite)
store with KFP's own final-status object, and calls a real local HTTP endpoint.
"""

import pytest
from kfp import dsl

from pipelines.adapters.mlflow_tracking import Tracking
from pipelines.finish import NOTIFY_ERROR_TAG, finish
from pipelines.pipeline import build_pipeline, pipeline_steps
from visionpipe.record import ERROR_TAG


def _tasks(spec):
    """Every task of the compiled pipeline by name, nested groups included."""
    found = {}

    def walk(dag):
        for name, task in dag.tasks.items():
            component = spec.components[task.component_ref.name]
            if component.HasField("dag"):
                walk(component.dag)
            else:
                found[name] = task

    walk(spec.root.dag)
    return found


def test_every_step_but_training_is_retried_and_kfps_own_cache_is_off(tiny_config):
    tasks = _tasks(build_pipeline(tiny_config).pipeline_spec)
    retried = {name for name, t in tasks.items() if t.retry_policy.max_retry_count}
    assert retried == set(tasks) - {"tune", "train", "finish"}
    assert tasks["ingest"].retry_policy.max_retry_count == tiny_config.pipeline.retries
    assert tasks["ingest"].retry_policy.backoff_duration.seconds == 10
    assert not any(t.caching_options.enable_cache for t in tasks.values())

    everything = tiny_config.with_overrides(["pipeline.retry_training=true"])
    tasks = _tasks(build_pipeline(everything).pipeline_spec)
    assert tasks["train"].retry_policy.max_retry_count == everything.pipeline.retries
    none = tiny_config.with_overrides(["pipeline.retries=0"])
    assert not any(
        t.retry_policy.max_retry_count for t in _tasks(build_pipeline(none).pipeline_spec).values()
    )


def test_finish_is_the_exit_task_of_every_step_and_not_a_console_line(tiny_config):
    spec = build_pipeline(tiny_config).pipeline_spec
    exit_task = spec.root.dag.tasks["finish"]
    assert (
        exit_task.trigger_policy.strategy == exit_task.trigger_policy.ALL_UPSTREAM_TASKS_COMPLETED
    )
    assert exit_task.inputs.parameters["status"].HasField("task_final_status")
    assert "finish" not in pipeline_steps(tiny_config)
    assert pipeline_steps(tiny_config)[:2] == ["configure", "ingest"]


def _run_with_failed_step(config):
    """A pipeline run whose transform step failed, as the pipeline leaves it (RUNNING)."""
    session = Tracking.open(config)
    run_id = session.start_pipeline(config)
    with session.step("ingest"):
        pass
    with pytest.raises(OSError), session.step("transform"):
        raise OSError("disk full")
    return session, run_id


def _status(state, message=""):
    return dsl.PipelineTaskFinalStatus(
        state=state,
        pipeline_job_resource_name="local",
        pipeline_task_name="run",
        error_code=1 if message else None,
        error_message=message,
    )


def _finish(config, session, state):
    finish(
        {
            "status": _status(state, "Task run failed." if state == "FAILED" else ""),
            "config_json": config.to_json(),
            "mlflow_tracking_uri": session.uri,
            "mlflow_run_id": session.pipeline_run_id,
        }
    )
    return session.client.get_run(session.pipeline_run_id)


def test_finish_marks_the_run_failed_naming_the_step_and_posts_the_notice(tiny_config, webhook):
    url, received = webhook
    config = tiny_config.with_overrides([f"pipeline.notify_url={url}"])
    session, run_id = _run_with_failed_step(config)
    run = _finish(config, session, "FAILED")
    assert run.info.status == "FAILED"
    assert run.data.tags[ERROR_TAG] == "step transform failed: OSError: disk full"
    (notice,) = received
    assert (
        notice["text"] == "visionpipe visionpipe: run failed in step transform: OSError: disk full"
    )
    assert notice["state"] == "FAILED" and notice["failed_step"] == "transform"
    assert notice["mlflow_run_id"] == run_id and notice["model_name"] == config.push.model_name


def test_a_run_that_succeeds_is_marked_finished_and_notified_only_when_asked(tiny_config, webhook):
    url, received = webhook
    config = tiny_config.with_overrides([f"pipeline.notify_url={url}"])
    session = Tracking.open(config)
    session.start_pipeline(config)
    assert _finish(config, session, "SUCCEEDED").info.status == "FINISHED"
    assert received == []

    always = config.with_overrides(["pipeline.notify_on=always"])
    session.start_pipeline(always)
    _finish(always, session, "SUCCEEDED")
    assert [n["state"] for n in received] == ["SUCCEEDED"]
    assert received[0]["text"] == "visionpipe visionpipe: run succeeded"


def test_a_webhook_that_does_not_answer_is_tagged_on_the_run_and_does_not_fail_it(tiny_config):
    config = tiny_config.with_overrides(["pipeline.notify_url=http://127.0.0.1:9/hook"])
    session, _ = _run_with_failed_step(config)
    run = _finish(config, session, "FAILED")
    assert run.info.status == "FAILED"
    assert run.data.tags[NOTIFY_ERROR_TAG].startswith("notify_url http://127.0.0.1:9/hook did not")
