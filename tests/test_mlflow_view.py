"""What MLflow 3 shows of the project: the experiment's kind, models, datasets, descriptions.

Real runs in a real (SQLite) store, made with the calls the pipeline makes.
"""

from pipelines.adapters import mlflow_tracking as tracking
from pipelines.adapters.mlflow_tracking import EXPERIMENT_KIND_TAG, Tracking
from visionpipe.config import load_config


def _experiment_tags(config):
    client = tracking.client(tracking.tracking_uri(config))
    return client.get_experiment_by_name(config.mlflow.experiment).tags


def test_the_experiment_opens_as_model_training_and_a_kind_the_user_set_is_kept(tiny_config):
    Tracking.open(tiny_config)  # creates the experiment
    assert _experiment_tags(tiny_config)[EXPERIMENT_KIND_TAG] == "custom_model_development"

    # One made before (by an older visionpipe, or by hand) gets the kind on first use...
    other = load_config(overrides=["mlflow.experiment=made-elsewhere"])
    client = tracking.client(tracking.tracking_uri(other))
    client.create_experiment("made-elsewhere")
    Tracking.open(other)
    assert _experiment_tags(other)[EXPERIMENT_KIND_TAG] == "custom_model_development"

    # ...but a kind set by the user stays.
    client.set_experiment_tag(
        client.get_experiment_by_name("made-elsewhere").experiment_id,
        EXPERIMENT_KIND_TAG,
        "genai_development",
    )
    Tracking.open(other)
    assert _experiment_tags(other)[EXPERIMENT_KIND_TAG] == "genai_development"


def test_a_version_says_why_it_was_blessed_and_the_model_what_it_classifies(tmp_path):
    from components.push.release import model_description, version_description

    blessing = {
        "reason": "blessed: 2 checks passed; accuracy 0.9862",
        "checks": [
            {"name": "accuracy >= 0.9", "value": 0.9862, "threshold": 0.9, "passed": True},
            {"name": "beats champion", "value": 0.9862, "threshold": 0.97, "passed": True},
        ],
    }
    text = version_description(blessing)
    assert text.splitlines()[0] == blessing["reason"]
    assert "| accuracy >= 0.9 | 0.9862 | 0.9000 | yes |" in text.splitlines()

    (tmp_path / "assets.extra").mkdir()  # the exported model's training record
    (tmp_path / "assets.extra" / "training.json").write_text('{"labels": ["cat", "dog"]}')
    described = model_description("pets", str(tmp_path))
    assert described.startswith("pets: an image classifier over 2 classes (cat, dog)")
    assert "`champion`" in described


def test_the_pipeline_run_and_the_long_steps_get_system_metrics(tiny_config):
    import time

    config = tiny_config.with_overrides(["mlflow.system_metrics_interval_s=0.05"])
    session = Tracking.open(config)
    run_id = session.start_pipeline(config)
    with session.step("train") as train, session.step("push") as push:
        deadline = time.monotonic() + 60  # a wait for the first sample, not a timing claim
        while time.monotonic() < deadline:
            seen = [session.client.get_run(r).data.metrics for r in (train.run_id, run_id)]
            if all("system/cpu_utilization_percentage" in m for m in seen):
                break
            time.sleep(0.05)
    session.end_pipeline(True)
    assert "system/cpu_utilization_percentage" in session.client.get_run(train.run_id).data.metrics
    assert "system/system_memory_usage_megabytes" in session.client.get_run(run_id).data.metrics
    assert not any(
        k.startswith("system/") for k in session.client.get_run(push.run_id).data.metrics
    )
    assert not session._monitors  # every monitor stopped


def test_the_run_page_link_opens_the_model_training_view(tiny_config):
    from pipelines.cli.run import run_page
    from pipelines.local import RunSummary
    from visionpipe.record import RunRecord

    session = Tracking.open(tiny_config)
    run_id = session.start_pipeline(tiny_config)
    page = run_page(RunSummary(RunRecord(run_id=run_id), 1.0, session.uri))
    assert page == (
        f"http://127.0.0.1:5000/#/experiments/{session.experiment_id}/runs/{run_id}"
        "?workflowType=machine_learning"
    )
    gone = RunSummary(RunRecord(run_id="no-such-run"), 1.0, session.uri)
    assert run_page(gone) == ""  # a link is a convenience, never an error
