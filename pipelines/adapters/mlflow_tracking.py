"""The one MLflow layer: one run per pipeline run, a nested run per step and per trial.

Everything else reports to a ``visionpipe.tracker.Tracker``; this module implements it
on MLflow (``MlflowTracker``) and opens the session a process records into
(``Tracking``). Every call goes through a client bound to an explicit tracking URI:
nothing sets MLflow's process-wide URI or environment variables, so one process
(the local runner, a test) can hold stores side by side and child processes inherit
nothing by accident.

Steps run in separate processes (KFP components), so the pipeline run is passed by
id. The two variables KFP's MLflow integration injects, ``MLFLOW_TRACKING_URI`` and
``MLFLOW_RUN_ID``, are read once, when a session is opened without explicit values.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from visionpipe.config import Config
from visionpipe.errors import UserError
from visionpipe.home import Home
from visionpipe.record import (
    ERROR_TAG,
    KIND_TAG,
    MONITOR_KIND,
    MONITOR_MODEL_TAG,
    PIPELINE_KIND,
    SKIPPED_TAG,
    STEP_TAG,
    MonitorRecord,
    RunRecord,
    outcome_entries,
)
from visionpipe.tracker import NullTracker, PipelineRun, Tracker

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
# What MLflow 3's UI opens an experiment as: without it, an experiment whose runs have no
# logged model opens in GenAI mode (traces, token usage). A kind the user set is kept.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_DIGEST_TAG = "visionpipe.model_digest"
# The steps whose runs get system metrics (the long ones), besides the pipeline run.
WATCHED_STEPS = ("transform", "tune", "train", "evaluate")
MODEL_TRAINING_KIND = "custom_model_development"


def tracking_uri(config: Config, explicit: str = "") -> str:
    """The tracking URI: explicit, else ``$MLFLOW_TRACKING_URI``, else config, else local."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or Home.resolve().tracking_uri(config)


def client(uri: str):
    """An ``MlflowClient`` for tracking and registry at ``uri``."""
    import mlflow

    with _creating_store(uri):  # a new SQLite store's tables are made here
        try:
            return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        except Exception as err:  # noqa: BLE001 - SQLAlchemy and alembic errors, wrapped or not
            if not uri.startswith("sqlite:"):
                raise
            cause = str(getattr(err, "orig", None) or err).splitlines()[0]
            raise TrackingStoreError(
                f"MLflow store {uri.removeprefix('sqlite:///')} cannot be opened ({cause}); "
                "move it aside (a new one is made) or restore it from a backup"
            ) from None


class TrackingStoreError(UserError, RuntimeError):
    """The tracking store cannot be used; the message names it and says why."""


# Errors another writer causes and a second attempt does not meet.
_TRANSIENT = (
    # SQLite lets one writer in at a time; one that waits past the busy timeout gets this.
    "database is locked",
    # MLflow's log_inputs looks a dataset up, then inserts it: two runs logging the same
    # dataset at once both miss it, and the second insert fails. Retried, it finds it.
    "UNIQUE constraint failed: datasets.",
)


def retrying(fn, *args, attempts: int = 8, **kwargs):
    """Calls ``fn``, retrying while another writer is in the SQLite store's way.

    Concurrent tuning workers write trial runs to the same SQLite file, and concurrent
    pipeline runs log the same dataset (see ``_TRANSIENT``). Backs off 0.1 s, 0.2 s, ...
    before giving up.
    """
    for attempt in range(attempts - 1):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - MLflow wraps SQLAlchemy's errors
            if not any(marker in str(err) for marker in _TRANSIENT):
                raise
            time.sleep(0.1 * 2**attempt)
    return fn(*args, **kwargs)  # the last attempt: its error is the caller's


class MlflowTracker(Tracker):
    """A ``Tracker`` that records into one MLflow run."""

    def __init__(self, mlflow_client, run_id: str, experiment_id: str = "") -> None:
        self.client = mlflow_client
        self.run_id = run_id
        self._experiment_id = experiment_id

    @property
    def experiment_id(self) -> str:
        """The run's experiment (looked up once when not given)."""
        if not self._experiment_id:
            self._experiment_id = retrying(self.client.get_run, self.run_id).info.experiment_id
        return self._experiment_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Records parameters (long values are cut to MLflow's limit)."""
        from mlflow.entities import Param

        entries = [Param(k, _param(v)) for k, v in sorted(params.items())]
        for start in range(0, len(entries), 100):  # MLflow's batch limit
            retrying(self.client.log_batch, self.run_id, params=entries[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Records metric values at ``step`` (0 when not given)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        for start in range(0, len(entries), 1000):
            retrying(self.client.log_batch, self.run_id, metrics=entries[start : start + 1000])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Records tags."""
        from mlflow.entities import RunTag

        entries = [RunTag(k, str(v)) for k, v in tags.items()]
        if entries:
            retrying(self.client.log_batch, self.run_id, tags=entries)

    def log_dict(self, data: Any, path: str) -> None:
        """Stores ``data`` as JSON (or YAML) at ``path``."""
        self.client.log_dict(self.run_id, data, path)

    def log_text(self, text: str, path: str) -> None:
        """Stores ``text`` at ``path``."""
        self.client.log_text(self.run_id, text, path)

    def log_artifact(self, local_path: str, path: str | None = None) -> None:
        """Stores a file, or a directory's contents, under ``path``."""
        if os.path.isdir(local_path):
            self.client.log_artifacts(self.run_id, local_path, path)
        else:
            self.client.log_artifact(self.run_id, local_path, path)

    def log_dataset(self, uri: str, digest: str, context: str, profile=None) -> None:
        """Records the input dataset ``images``: digest, source, schema, profile, context.

        The digest is kept to its first 32 characters; the schema is a labelled image's.
        """
        import json
        import warnings

        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.types import ColSpec, DataType, Schema
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "source can be interpreted in multiple ways"
            source = resolve_dataset_source(uri)
        schema = Schema([ColSpec(DataType.binary, "image"), ColSpec(DataType.string, "label")])
        dataset = Dataset(
            name="images",
            digest=digest[:32],
            source_type=source._get_source_type(),
            source=source.to_json(),
            schema=json.dumps({"mlflow_colspec": schema.to_dict()}),
            profile=json.dumps(dict(profile)) if profile else None,
        )
        entry = DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
        retrying(self.client.log_inputs, self.run_id, datasets=[entry])

    def log_model(
        self, model_dir, name, digest, metrics, example=None, dataset=None, extra_files=None
    ) -> str:
        """An MLflow LoggedModel (the registered pyfunc flavour) made by this run, READY.

        Its metrics are logged against it (``model_id``, and the dataset when given), and
        it is this run's output, so the run page and the experiment's Models tab list it.
        """
        import tempfile

        from pipelines.adapters.mlflow_model import save_mlflow_model

        model = retrying(
            self.client.create_logged_model,
            self.experiment_id,
            name=name,
            source_run_id=self.run_id,
            tags={MODEL_DIGEST_TAG: digest},
            model_type="image-classifier",
        )
        try:
            with tempfile.TemporaryDirectory(prefix="logged-model-") as tmp:
                out = os.path.join(tmp, "model")
                path = save_mlflow_model(model_dir, out, example, digest, dict(extra_files or {}))
                self.client.log_model_artifacts(model.model_id, path)
        except BaseException:
            retrying(self.client.finalize_logged_model, model.model_id, "FAILED")
            raise
        retrying(self.client.finalize_logged_model, model.model_id, "READY")
        name_digest = {"dataset_name": dataset[0], "dataset_digest": dataset[1]} if dataset else {}
        for key, value in metrics.items():
            retrying(
                self.client.log_metric,
                self.run_id,
                key,
                float(value),
                model_id=model.model_id,
                **name_digest,
            )
        self.link_model(model.model_id, output=True)
        return model.model_id

    def link_model(self, model_id: str, output: bool = False) -> None:
        """Links ``model_id`` to this run: an input (used) or, with ``output``, made here."""
        from mlflow.entities import LoggedModelInput, LoggedModelOutput

        if output:
            retrying(self.client.log_outputs, self.run_id, [LoggedModelOutput(model_id, 0)])
        else:
            retrying(self.client.log_inputs, self.run_id, models=[LoggedModelInput(model_id)])

    def child(self, name: str, tags: Mapping[str, str] | None = None) -> MlflowTracker:
        """A run nested under this one (``mlflow.parentRunId``)."""
        run = retrying(
            self.client.create_run,
            self.experiment_id,
            run_name=name,
            tags={PARENT_TAG: self.run_id, **(tags or {})},
        )
        return MlflowTracker(self.client, run.info.run_id, self._experiment_id)

    def finish(self, ok: bool = True, error: str = "") -> None:
        """Marks the run FINISHED, or FAILED with ``error`` as a tag."""
        if error:
            retrying(self.client.set_tag, self.run_id, ERROR_TAG, error[:5000])
        retrying(self.client.set_terminated, self.run_id, "FINISHED" if ok else "FAILED")


@dataclass
class Tracking:
    """A process's session with the tracking store: its URI, experiment and pipeline run."""

    uri: str
    experiment_id: str
    pipeline_run_id: str = ""
    _client: Any = field(default=None, repr=False)
    system_metrics_s: float = 0.0  # mlflow.system_metrics_interval_s; 0: none
    _monitors: dict = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, config: Config, uri: str = "", pipeline_run_id: str = "") -> Tracking:
        """The session for ``config``'s experiment, created if missing.

        ``uri`` defaults as ``tracking_uri``; ``pipeline_run_id`` to ``$MLFLOW_RUN_ID``
        (KFP's MLflow integration), else none: steps then record top-level runs.
        """
        uri = tracking_uri(config, uri)
        mlflow_client = client(uri)
        experiment_id = _experiment(mlflow_client, config.mlflow.experiment, uri)
        parent = pipeline_run_id or os.environ.get("MLFLOW_RUN_ID", "")
        interval = config.mlflow.system_metrics_interval_s
        return cls(uri, experiment_id, parent, mlflow_client, interval)

    @property
    def client(self):
        """The ``MlflowClient`` of this store."""
        if self._client is None:
            self._client = client(self.uri)
        return self._client

    def start_pipeline(self, config: Config, run_name: str | None = None) -> str:
        """Creates the pipeline run (RUNNING) with the config as params; returns its id."""
        run = self.client.create_run(
            self.experiment_id, run_name=run_name, tags={KIND_TAG: PIPELINE_KIND}
        )
        self.pipeline_run_id = run.info.run_id
        self.tracker(self.pipeline_run_id).log_params(config.flat())
        self._watch(self.pipeline_run_id)
        return self.pipeline_run_id

    def end_pipeline(self, ok: bool) -> None:
        """Marks the pipeline run finished or failed."""
        self._unwatch(self.pipeline_run_id)
        self.tracker(self.pipeline_run_id).finish(ok)

    def _watch(self, run_id: str) -> None:
        """Starts MLflow's system-metrics monitor (CPU, memory, disk, network) on a run."""
        if self.system_metrics_s <= 0:
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(
            run_id, sampling_interval=self.system_metrics_s, tracking_uri=self.uri
        )
        monitor.start()
        self._monitors[run_id] = monitor

    def _unwatch(self, run_id: str) -> None:
        monitor = self._monitors.pop(run_id, None)
        if monitor is not None:
            monitor.finish()

    def tracker(self, run_id: str) -> MlflowTracker:
        """A tracker recording into an existing run."""
        return MlflowTracker(self.client, run_id, self.experiment_id)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[MlflowTracker]:
        """A run for one step, nested under the pipeline run if there is one.

        The run is FINISHED when the block ends, FAILED (with the error) if it raises.
        """
        tags = {STEP_TAG: name, KIND_TAG: "step"}
        if self.pipeline_run_id:
            tags[PARENT_TAG] = self.pipeline_run_id
        run = retrying(self.client.create_run, self.experiment_id, run_name=name, tags=tags)
        tracker = self.tracker(run.info.run_id)
        if name in WATCHED_STEPS:
            self._watch(run.info.run_id)
        try:
            yield tracker
        except BaseException as err:
            self._unwatch(run.info.run_id)
            tracker.finish(False, f"{type(err).__name__}: {err}")
            raise
        self._unwatch(run.info.run_id)
        tracker.finish(True)

    def pipeline(self) -> MlflowPipelineRun:
        """The pipeline run of this session (records nothing without one)."""
        return MlflowPipelineRun(self)

    def registry(self):
        """The model registry of this store."""
        from pipelines.adapters.mlflow_registry import MlflowRegistry

        return MlflowRegistry(self.client)

    def pipeline_runs(
        self, finished_only: bool = False, include_skipped: bool = False
    ) -> Iterator[Any]:
        """The experiment's pipeline runs (``mlflow.entities.Run``), newest first.

        Runs that stopped after the data check (``visionpipe.skipped``) are left out
        unless ``include_skipped``.
        """
        query = f"tags.`{KIND_TAG}` = '{PIPELINE_KIND}'"
        if finished_only:
            query += " and attributes.status = 'FINISHED'"
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id],
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

    def last_successful_pipeline_run(self):
        """The newest finished pipeline run that trained, other than this one; or None."""
        runs = self.pipeline_runs(finished_only=True)
        return next((r for r in runs if r.info.run_id != self.pipeline_run_id), None)


def latest_monitor_run(session: Tracking, model_name: str):
    """The experiment's newest finished monitor run for ``model_name``, or None."""
    query = (
        f"tags.`{KIND_TAG}` = '{MONITOR_KIND}' and tags.`{MONITOR_MODEL_TAG}` = '{model_name}' "
        "and attributes.status = 'FINISHED'"
    )
    runs = session.client.search_runs(
        [session.experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1
    )
    return runs[0] if runs else None


def record_of(run) -> RunRecord:
    """The typed record of an MLflow pipeline run."""
    info, data = run.info, run.data
    return RunRecord.from_store(info.run_id, info.status, data.tags, data.metrics, info.start_time)


class MlflowPipelineRun(PipelineRun):
    """``PipelineRun`` on the session's pipeline run; nothing without one."""

    def __init__(self, session: Tracking) -> None:
        self.session = session
        self.run_id = session.pipeline_run_id

    @property
    def tracker(self) -> Tracker:
        """The pipeline run's tracker (a null one without a pipeline run)."""
        return self.session.tracker(self.run_id) if self.run_id else NullTracker()

    def record(self, **outcome: Any) -> None:
        """Stores outcome fields as the pipeline run's tags and metrics."""
        metrics, tags = outcome_entries(**outcome)  # checked with or without a run
        if self.run_id:
            tracker = self.tracker
            tracker.log_metrics(metrics)
            tracker.set_tags(tags)

    def read(self) -> RunRecord:
        """The pipeline run's record as stored now."""
        if not self.run_id:
            return RunRecord()
        return record_of(retrying(self.session.client.get_run, self.run_id))

    def last_successful(self) -> RunRecord | None:
        """The newest finished pipeline run that trained, other than this one."""
        run = self.session.last_successful_pipeline_run()
        return None if run is None else record_of(run)

    def latest_monitor(self, model_name: str) -> MonitorRecord | None:
        """The newest finished monitor run's verdict for ``model_name``."""
        run = latest_monitor_run(self.session, model_name)
        if run is None:
            return None
        return MonitorRecord.from_store(run.info.run_id, run.data.tags, run.info.start_time)

    def read_run(self, run_id: str) -> RunRecord | None:
        """Another pipeline run's record, or None when the store has no such run."""
        from mlflow.exceptions import MlflowException

        try:
            return record_of(retrying(self.session.client.get_run, run_id))
        except MlflowException:
            return None

    def load_dict(self, run_id: str, path: str) -> Any | None:
        """A JSON artifact of run ``run_id``; None if it has none at ``path``."""
        import json
        import tempfile

        from mlflow.exceptions import MlflowException

        with tempfile.TemporaryDirectory(prefix="visionpipe-artifact-") as tmp:
            try:
                local = self.session.client.download_artifacts(run_id, path, tmp)
            except (MlflowException, OSError):
                return None
            with open(local) as f:
                return json.load(f)


def _experiment(mlflow_client, name: str, uri: str) -> str:
    """The experiment's id, created (with local artifacts for a SQLite store) if missing."""
    from mlflow.exceptions import MlflowException

    with _creating_store(uri):  # the first call creates a new store's tables
        experiment = mlflow_client.get_experiment_by_name(name)
        _write_ahead_log(uri)
    if experiment is not None:
        if EXPERIMENT_KIND_TAG not in experiment.tags:  # first used by this project
            retrying(
                mlflow_client.set_experiment_tag,
                experiment.experiment_id,
                EXPERIMENT_KIND_TAG,
                MODEL_TRAINING_KIND,
            )
        return experiment.experiment_id
    artifact_location = None
    if uri.startswith("sqlite:"):
        artifact_location = Home.resolve().mlflow_artifacts.as_uri()
    try:
        return mlflow_client.create_experiment(
            name,
            artifact_location=artifact_location,
            tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND},
        )
    except MlflowException:  # created meanwhile by another process
        return mlflow_client.get_experiment_by_name(name).experiment_id


@contextlib.contextmanager
def _creating_store(uri: str) -> Iterator[None]:
    """For a SQLite store: one process at a time creates or migrates its tables.

    Two runs started together on a new home both ran MLflow's migrations on the same
    file, and one failed ("Online migration expected to match one row").
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    path = uri.removeprefix("sqlite:///")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(f"{path}.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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


def _param(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."
