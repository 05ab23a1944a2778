"""MLflow tracking: one run per pipeline run, a nested run per step.

Steps run in separate processes (KFP components), so the pipeline run is passed
by id: explicitly, or through ``MLFLOW_RUN_ID`` (what KFP's MLflow integration
injects). Without one, a step run is a top-level run of its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

from visionpipe.config import Config
from visionpipe.home import Home

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
STEP_TAG = "visionpipe.step"
KIND_TAG = "visionpipe.kind"
SKIPPED_TAG = "visionpipe.skipped"


def tracking_uri(config: Config, explicit: str = "") -> str:
    """The tracking URI: explicit, else ``$MLFLOW_TRACKING_URI``, else config, else local."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or Home.resolve().tracking_uri(config)


def configure(config: Config, explicit_uri: str = "") -> str:
    """Points MLflow (tracking and registry) at the store and returns the experiment id."""
    import mlflow

    uri = tracking_uri(config, explicit_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(config.mlflow.experiment)
    _write_ahead_log(uri)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    if uri.startswith("sqlite:"):
        artifact_location = Home.resolve().mlflow_artifacts.as_uri()
    try:
        return client.create_experiment(
            config.mlflow.experiment, artifact_location=artifact_location
        )
    except mlflow.exceptions.MlflowException:  # created meanwhile by another process
        return client.get_experiment_by_name(config.mlflow.experiment).experiment_id


def start_pipeline_run(config: Config, run_name: str | None = None) -> str:
    """Creates the pipeline run (status RUNNING), logs the config as params, returns its id."""
    import mlflow

    experiment_id = configure(config)
    client = mlflow.MlflowClient()
    run = client.create_run(experiment_id, run_name=run_name, tags={KIND_TAG: "pipeline"})
    params = {k: _param(v) for k, v in config.flat().items()}
    client.log_batch(
        run.info.run_id,
        params=[mlflow.entities.Param(k, v) for k, v in sorted(params.items())],
    )
    return run.info.run_id


def pipeline_runs(
    experiment_id: str, finished_only: bool = False, include_skipped: bool = False
) -> Iterator[Any]:
    """The experiment's pipeline runs (``mlflow.entities.Run``), newest first, page by page.

    Runs that stopped after the data check (``visionpipe.skipped``) are left out unless
    ``include_skipped``.
    """
    import mlflow

    client = mlflow.MlflowClient()
    query = f"tags.`{KIND_TAG}` = 'pipeline'"
    if finished_only:
        query += " and attributes.status = 'FINISHED'"
    token = None
    while True:
        page = client.search_runs(
            [experiment_id],
            query,
            order_by=["attributes.start_time DESC"],
            max_results=100,
            page_token=token,
        )
        for run in page:
            if include_skipped or run.data.tags.get(SKIPPED_TAG) != "true":
                yield run
        token = page.token
        if not token:
            return


def last_successful_pipeline_run(experiment_id: str, exclude_run_id: str = ""):
    """The newest finished pipeline run of the experiment that trained, or None."""
    runs = pipeline_runs(experiment_id, finished_only=True)
    return next((r for r in runs if r.info.run_id != exclude_run_id), None)


def end_pipeline_run(run_id: str, ok: bool) -> None:
    """Marks the pipeline run finished or failed."""
    import mlflow

    mlflow.MlflowClient().set_terminated(run_id, status="FINISHED" if ok else "FAILED")


def _write_ahead_log(uri: str) -> None:
    """Puts a SQLite store in WAL mode: readers no longer block the (one) writer.

    The mode is a property of the database file, so this is done once per store.
    """
    if not uri.startswith("sqlite:///"):
        return
    import sqlite3

    path = uri.removeprefix("sqlite:///")
    if not os.path.exists(path):
        return
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as db:
        if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            db.execute("PRAGMA journal_mode=WAL")


def retrying(fn, *args, attempts: int = 8, **kwargs):
    """Calls ``fn``, retrying while the SQLite store is locked by another writer.

    Concurrent tuning workers write trial runs to the same SQLite file; SQLite lets one
    writer in at a time, and a writer that waits past the busy timeout gets
    "database is locked". Backs off 0.1 s, 0.2 s, ... before giving up.
    """
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - MLflow wraps SQLAlchemy's errors
            if "database is locked" not in str(err) or attempt == attempts - 1:
                raise
            time.sleep(0.1 * 2**attempt)
    return None


def parent_run_id(explicit: str = "") -> str:
    """The pipeline run a step logs under: explicit, else ``$MLFLOW_RUN_ID``, else none."""
    return explicit or os.environ.get("MLFLOW_RUN_ID", "")


@contextlib.contextmanager
def step_run(config: Config, step: str, parent_id: str = "") -> Iterator[Any]:
    """Activates an MLflow run for one step, nested under the pipeline run if there is one.

    Yields the active ``mlflow.ActiveRun``. The run is marked FAILED if the body raises.
    """
    import mlflow

    experiment_id = configure(config)
    parent = parent_run_id(parent_id)
    tags = {STEP_TAG: step, KIND_TAG: "step"}
    if parent:
        tags[PARENT_TAG] = parent
    client = mlflow.MlflowClient()
    run = client.create_run(experiment_id, run_name=step, tags=tags)
    # Leave MLFLOW_RUN_ID alone for our caller, but make sure start_run resumes *this* run.
    saved = os.environ.pop("MLFLOW_RUN_ID", None)
    try:
        with mlflow.start_run(run_id=run.info.run_id) as active:
            yield active
    finally:
        if saved is not None:
            os.environ["MLFLOW_RUN_ID"] = saved


def log_outcome(
    parent_id: str,
    metrics: Mapping[str, float] | None = None,
    tags: Mapping[str, Any] | None = None,
) -> None:
    """Logs a step's outcome on the pipeline run too (no-op without a pipeline run)."""
    import mlflow

    parent = parent_run_id(parent_id)
    if not parent:
        return
    client = mlflow.MlflowClient()
    client.log_batch(
        parent,
        metrics=[
            mlflow.entities.Metric(k, float(v), _now_ms(), 0) for k, v in (metrics or {}).items()
        ],
        tags=[mlflow.entities.RunTag(k, str(v)) for k, v in (tags or {}).items()],
    )


def _now_ms() -> int:
    return int(time.time() * 1000)


def _param(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."
