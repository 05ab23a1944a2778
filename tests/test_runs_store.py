"""Decisions read from the MLflow store: the data check, and comparing pipeline runs.

The runs are real runs in a real (SQLite) store, made with the calls the pipeline makes.
"""

import pytest

from components.data_check.decide import decide, project_version
from pipelines.adapters import mlflow_tracking as tracking
from pipelines.adapters.mlflow_tracking import Tracking
from pipelines.cli import main
from pipelines.compare import CompareError, compare_runs
from pipelines.execute import run_step
from visionpipe.record import KIND_TAG, SKIPPED_TAG, RunRecord


def _pipeline_run(config, fingerprint, status="FINISHED", skipped=False, **metrics):
    """A finished pipeline run as the pipeline leaves it, trained on ``config``."""
    session = Tracking.open(config)
    run_id = session.start_pipeline(config)
    session.pipeline().record(
        data_fingerprint=fingerprint,
        model_settings=config.model_settings(),
        visionpipe_version=project_version(),
        skipped=skipped,
        test_metrics=metrics,
    )
    session.client.set_terminated(run_id, status=status)
    return run_id


def _started(config):
    """The session of a pipeline run that has just started."""
    session = Tracking.open(config)
    session.start_pipeline(config)
    return session


def _tags(config, run_id):
    return tracking.client(tracking.tracking_uri(config)).get_run(run_id).data.tags


def _check(config, fingerprint, only_if_changed=True, session=None):
    return run_step(
        "data-check", config, session, fingerprint=fingerprint, only_if_data_changed=only_if_changed
    )


def test_data_check_always_retrains_unless_asked_to_train_on_changed_data_only(tiny_config):
    _pipeline_run(tiny_config, "aa" * 32)
    current = _started(tiny_config)
    check = _check(tiny_config, "aa" * 32, only_if_changed=False, session=current)
    assert check.retrain is True
    tags = _tags(tiny_config, current.pipeline_run_id)
    assert tags[SKIPPED_TAG] == "false" and "every run" in tags["data_check"]


def test_data_check_skips_when_the_last_successful_run_saw_the_same_data(tiny_config):
    trained = _pipeline_run(tiny_config, "aa" * 32)
    _pipeline_run(tiny_config, "bb" * 32, status="FAILED")  # a failed run does not count
    current = _started(tiny_config)
    check = _check(tiny_config, "aa" * 32, session=current)
    assert check.retrain is False and check.previous_run_id == trained
    assert check.reason == (
        f"data unchanged since run {trained} (fingerprint {'a' * 12}), "
        "and so are the config and visionpipe's version"
    )
    tags = _tags(tiny_config, current.pipeline_run_id)
    assert tags[SKIPPED_TAG] == "true" and tags["data_check"] == check.reason
    assert tags[KIND_TAG] == "pipeline"


def test_data_check_retrains_on_new_data_and_when_there_is_no_earlier_run(tiny_config):
    first = _check(tiny_config, "aa" * 32)
    assert first.retrain is True and "no earlier successful" in first.reason
    trained = _pipeline_run(tiny_config, "aa" * 32)
    _pipeline_run(tiny_config, "aa" * 32, skipped=True)  # a skipped run trained nothing
    changed = _check(tiny_config, "cc" * 32)
    assert changed.retrain is True and changed.previous_run_id == trained
    assert changed.reason == f"data changed since run {trained} ({'a' * 12} -> {'c' * 12})"


def _record(config, fingerprint="aa" * 32, version=None, settings=True) -> RunRecord:
    return RunRecord(
        run_id="r1",
        status="FINISHED",
        data_fingerprint=fingerprint,
        model_settings=config.model_settings() if settings else None,
        visionpipe_version=version or project_version(),
    )


def test_data_check_retrains_when_the_config_or_the_version_changed(tiny_config):
    previous = _record(tiny_config)
    more_epochs = tiny_config.with_overrides(["trainer.epochs=30", "evaluate.min_accuracy=0.5"])
    check = decide("aa" * 32, more_epochs.model_settings(), project_version(), previous)
    assert check.retrain is True and check.previous_run_id == "r1"
    assert check.reason == (
        "config changed since run r1: evaluate.min_accuracy 0.0 -> 0.5, trainer.epochs 2 -> 30"
    )
    # Settings that change only speed or where things go do not retrain.
    faster = tiny_config.with_overrides(["ingest.threads=1", "beam.direct_num_workers=2"])
    assert decide("aa" * 32, faster.model_settings(), project_version(), previous).retrain is False


def test_data_check_retrains_after_an_upgrade_or_without_a_recorded_config(tiny_config):
    settings, now = tiny_config.model_settings(), project_version()
    check = decide("aa" * 32, settings, now, _record(tiny_config, version="0.0.1"))
    assert check.retrain and check.reason == f"visionpipe changed since run r1 (0.0.1 -> {now})"
    check = decide("aa" * 32, settings, now, _record(tiny_config, settings=False))
    assert check.retrain and check.reason == "config of run r1 was not recorded; retraining"


def _monitor_run(config, drift: bool, reason: str, model="visionpipe-classifier"):
    """A finished monitor run as ``visionpipe monitor`` leaves it."""
    from visionpipe.record import MONITOR_KIND, monitor_tags

    session = Tracking.open(config)
    tags = {KIND_TAG: MONITOR_KIND, **monitor_tags({"name": model, "version": "1"}, drift, reason)}
    run = session.client.create_run(session.experiment_id, tags=tags)
    session.client.set_terminated(run.info.run_id)
    return run.info.run_id


def test_data_check_on_drift_retrains_for_a_verdict_newer_than_the_last_training(tiny_config):
    config = tiny_config.with_overrides(["pipeline.retrain_when=[data_changed, drift]"])
    trained = _pipeline_run(config, "aa" * 32)
    quiet = _check(config, "aa" * 32, only_if_changed=False)
    assert quiet.retrain is False
    assert quiet.reason.endswith(f"no monitor run since run {trained} trained")
    _monitor_run(config, True, "drift: property:brightness (KS D 0.9)", model="another-model")
    calm = _monitor_run(config, False, "no drift: 13 detectors on 400 records")
    check = _check(config, "aa" * 32)  # the old flag changes nothing: retrain_when decides
    assert check.retrain is False
    assert check.reason.endswith(
        f"monitor run {calm} on visionpipe-classifier v1: no drift: 13 detectors on 400 records"
    )
    alarm = _monitor_run(config, True, "drift: property:brightness (KS D 0.9)")
    current = _started(config)
    check = _check(config, "aa" * 32, session=current)
    assert check.retrain is True and check.trigger == "drift"
    assert (
        check.reason
        == f"monitor run {alarm} on visionpipe-classifier v1: drift: property:brightness (KS D 0.9)"
    )
    assert _tags(config, current.pipeline_run_id)["data_check"] == check.reason
    current.pipeline().record(data_fingerprint="aa" * 32)  # as its ingest did
    current.end_pipeline(True)  # that run trained: the verdict is acted on once
    assert _check(config, "aa" * 32).retrain is False
    assert _check(config, "cc" * 32).reason.startswith("data changed since run")


def test_only_if_data_changed_stands_for_data_changed_when_retrain_when_is_the_default():
    from components.data_check.decide import effective_reasons

    assert effective_reasons(["always"], False) == ["always"]
    assert effective_reasons(["always"], True) == ["data_changed"]
    assert effective_reasons(["drift"], True) == ["drift"]
    assert effective_reasons(["drift", "drift", "data_changed"], False) == ["drift", "data_changed"]


def test_compare_sorts_by_the_metric_and_leaves_skipped_runs_out(tiny_config):
    low = _pipeline_run(tiny_config, "aa" * 32, test_accuracy=0.5, test_log_loss=0.9)
    high = _pipeline_run(tiny_config, "bb" * 32, test_accuracy=0.9, test_log_loss=0.2)
    failed = _pipeline_run(tiny_config, "cc" * 32, status="FAILED")
    skipped = _pipeline_run(tiny_config, "bb" * 32, skipped=True)
    experiment = tiny_config.mlflow.experiment
    uri = tracking.tracking_uri(tiny_config)

    rows = compare_runs(uri, experiment, 10, "test_accuracy")
    assert [r.run_id for r in rows] == [high, low, failed]
    assert [r.run_id for r in compare_runs(uri, experiment, 10, "test_log_loss")][:2] == [high, low]
    assert [r.run_id for r in compare_runs(uri, experiment, 2, "test_accuracy")] == [high, failed]
    everything = compare_runs(uri, experiment, 10, "test_accuracy", include_skipped=True)
    assert {r.run_id: r.status for r in everything}[skipped] == "SKIPPED"


def test_compare_names_an_unknown_metric_or_experiment(tiny_config, capsys):
    _pipeline_run(tiny_config, "aa" * 32, test_accuracy=0.5)
    with pytest.raises(CompareError, match="unknown metric 'test_acuracy': the runs have"):
        compare_runs(
            tracking.tracking_uri(tiny_config), tiny_config.mlflow.experiment, 10, "test_acuracy"
        )
    assert main(["compare", "--experiment", "nope"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "visionpipe" in line]
    assert err == [
        "visionpipe: error: no MLflow experiment named 'nope' at "
        + tracking.tracking_uri(tiny_config)
    ]
    assert main(["compare", "--metric", "test_acuracy"]) == 2
    assert "unknown metric 'test_acuracy'" in capsys.readouterr().err


def test_a_corrupt_store_is_one_clear_error(isolated_home, tiny_dataset, capsys):
    isolated_home.mkdir(parents=True, exist_ok=True)
    (isolated_home / "mlflow.db").write_bytes(b"\x00not sqlite at all" * 100)
    assert main(["run", "--data", str(tiny_dataset)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err == [
        f"visionpipe: error: MLflow store {isolated_home / 'mlflow.db'} cannot be opened "
        "(file is not a database); move it aside (a new one is made) or restore it from a backup"
    ]
    assert not (isolated_home / "serving").exists()


def test_a_dataset_logged_by_two_runs_at_once_is_retried_and_other_conflicts_are_not():
    # CI: two runs on one home logged the same dataset together; MLflow looks it up, then
    # inserts it, and the second insert failed. A second attempt finds the row.
    from mlflow.exceptions import MlflowException

    race = MlflowException(
        "(sqlite3.IntegrityError) UNIQUE constraint failed: "
        "datasets.experiment_id, datasets.name, datasets.digest"
    )
    calls = []

    def log_inputs():
        calls.append(1)
        if len(calls) == 1:
            raise race
        return "logged"

    assert tracking.retrying(log_inputs) == "logged" and len(calls) == 2

    def other_conflict():
        calls.append(1)
        raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: runs.run_uuid")

    calls.clear()
    with pytest.raises(MlflowException, match="runs.run_uuid"):
        tracking.retrying(other_conflict)
    assert len(calls) == 1


def test_a_step_run_records_its_own_peak_memory_not_the_process_s(tiny_config):
    from pipelines.execute import peak_memory_mb
    from visionpipe.step import Step

    def allocate(ctx, megabytes):
        held = bytearray(megabytes * 2**20)
        held[::4096] = b"x" * len(held[::4096])  # touched: resident
        return len(held)

    step = Step("allocate", allocate, params={"megabytes": int})
    session = _started(tiny_config)
    allocate(None, 400)  # raises this process's peak by 400 MB first
    before = peak_memory_mb()
    run_step(step, tiny_config, session, megabytes=100)
    (run,) = session.client.search_runs(
        [session.experiment_id], f"tags.mlflow.parentRunId = '{session.pipeline_run_id}'"
    )
    peak = run.data.metrics["peak_memory_mb"]
    # Reset when the step started: its 100 MB are in it, the earlier 400 MB are not.
    assert peak >= 100 and peak < before - 250
