"""Running the pipeline on this machine with kfp.local: no cluster, same components.

The pipeline run in MLflow is created here, before the components start, and its
id is handed to every component, so all steps nest under one run. kfp.local runs the
DAG; ``pipelines/tasks.py`` decides where each component executes (this process by
default, or a subprocess per step) and tells an observer (the console) when steps
start and end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from dataclasses import asdict, dataclass

from pipelines.adapters import mlflow_tracking as tracking
from pipelines.adapters.mlflow_tracking import Tracking
from pipelines.pipeline import build_pipeline, step_retries
from pipelines.tasks import TaskRunner, task_runner
from visionpipe import storage
from visionpipe.config import Config
from visionpipe.home import Home
from visionpipe.record import RunRecord
from visionpipe.slicing import check_slice_names
from visionpipe.sources import attribute_names, check_classes, list_sources

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSummary:
    """What one pipeline run produced: its record (read back from MLflow) and its wall time."""

    record: RunRecord
    wall_seconds: float
    tracking_uri: str

    @property
    def mlflow_run_id(self) -> str:
        """The pipeline run's id."""
        return self.record.run_id

    def to_dict(self) -> dict:
        """JSON-ready form: the record's fields, flat, with the run's id and wall time."""
        r = self.record
        fields = asdict(r)
        fields.pop("run_id")
        return {
            "mlflow_run_id": r.run_id,
            **fields,
            "blessed": bool(r.blessed),
            "test_accuracy": r.test_accuracy,
            "test_macro_f1": r.test_macro_f1,
            "wall_seconds": self.wall_seconds,
            "tracking_uri": self.tracking_uri,
        }

    @classmethod
    def from_dict(cls, data: dict) -> RunSummary:
        """Reads ``to_dict``'s form back (the scheduler reads ``visionpipe run --json``)."""
        names = {f.name for f in dataclasses.fields(RunRecord)}
        record = RunRecord(
            run_id=data["mlflow_run_id"], **{k: v for k, v in data.items() if k in names}
        )
        return cls(record, float(data["wall_seconds"]), data["tracking_uri"])


class StepFailed(RuntimeError):
    """A pipeline step failed; ``message`` is the step's own error."""

    def __init__(self, step: str, message: str, mlflow_run_id: str) -> None:
        super().__init__(f"step {step} failed: {message}")
        self.step = step
        self.message = message
        self.mlflow_run_id = mlflow_run_id


def run_name(config: Config) -> str:
    """A new pipeline run's name: the pipeline and the local time, reserved on this home.

    Its log file (``<home>/logs/<name>.log``) is created here, exclusively: a second run
    started in the same second gets the process id appended instead of sharing the log.
    """
    base = f"{config.pipeline.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    logs = Home.resolve().root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for name in (base, f"{base}-{os.getpid()}"):
        try:
            (logs / f"{name}.log").open("x").close()
            return name
        except FileExistsError:
            continue
    return f"{base}-{os.getpid()}-{time.monotonic_ns()}"


def resolve_local(config: Config, home: Home) -> Config:
    """Fills the local defaults (serving root) into the config the components receive."""
    push = config.push.model_copy(update={"serving_root": home.serving_root_for(config)})
    return config.model_copy(update={"push": push})


def check_data(data_uri: str, config: Config) -> str:
    """The data's absolute URI, once it has labelled images of two classes or more.

    And the columns ``evaluate.slices`` names.

    Raises:
        DataError: the path is missing, empty or has fewer than two classes.
        SliceError: a slice names a column the data does not have.
    """
    data_uri = storage.absolute(data_uri)
    sources = list_sources(data_uri)
    check_classes(data_uri, sources, config.ingest.min_images_per_class)
    check_slice_names(data_uri, config.evaluate.slices, attribute_names(sources))
    return data_uri


@contextlib.contextmanager
def local_containers(data_uri: str, config: Config):
    """The container engine connected and ``pipeline.image`` found, for a local run's steps.

    Raises:
        ContainerError: no engine answers, or the image is not there.
    """
    from pipelines.containers import container_commands

    home = Home.resolve()
    uri = tracking.tracking_uri(config)
    local = resolve_local(config, home)
    with container_commands(storage.absolute(data_uri), local, home, uri) as commands:
        yield commands


def run_local(
    data_uri: str,
    config: Config,
    only_if_data_changed: bool = False,
    isolation: str = "process",
    observer=None,
    name: str | None = None,
    containers=None,
) -> RunSummary:
    """Validates the data, then runs the whole pipeline locally and summarises it.

    With ``only_if_data_changed``, the run stops after ingest (reported as skipped,
    with the reason) when the data, model settings and version equal the last successful
    run's.

    Args:
        data_uri: the images (folder of class folders, CSV, or object-store URI).
        config: the validated configuration.
        only_if_data_changed: stop after the data check when the data is unchanged.
        isolation: ``process`` runs every component in this process, ``subprocess``
            one Python process per component (kfp.local's own way), ``container`` one
            container of ``pipeline.image`` per component (``pipelines.containers``).
        observer: told ``start(step)`` and ``end(step, ok)`` (the console), or None.
        name: the MLflow run's name (default: ``run_name(config)``).
        containers: with ``isolation="container"``, the engine and image to use (from
            ``local_containers``); default: connected here for this run.

    Raises:
        DataError: the data path is missing, empty or has fewer than two classes
            (raised before anything is created or written).
        StepFailed: a pipeline step failed, with its own error (the MLflow run is
            marked FAILED).
        ContainerError: with ``isolation="container"``, no engine answers or the image
            is not there (raised before the MLflow run is created).
    """
    data_uri = check_data(data_uri, config)
    home = Home.resolve()
    home.root.mkdir(parents=True, exist_ok=True)
    config = resolve_local(config, home)
    with contextlib.ExitStack() as stack:
        if isolation == "container" and containers is None:
            containers = stack.enter_context(local_containers(data_uri, config))
        runner = TaskRunner(
            isolation,
            progress=observer is not None,
            retries=step_retries(config),
            containers=containers,
        )
        return _run(runner, data_uri, config, home, only_if_data_changed, observer, name)


def _run(runner, data_uri, config, home, only_if_data_changed, observer, name) -> RunSummary:
    from kfp import local

    session = Tracking.open(config)
    uri = session.uri
    run_id = session.start_pipeline(config, run_name=name or run_name(config))
    if observer is not None:
        runner.on_start, runner.on_end = observer.start, observer.end
        runner.on_retry = getattr(observer, "retry", runner.on_retry)
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(home.pipeline_root),
        raise_on_error=True,
    )
    started = time.monotonic()
    ok = False
    try:
        with task_runner(runner):
            build_pipeline(config)(
                data=data_uri,
                serving_root=config.push.serving_root,  # a local path is never compiled in
                only_if_data_changed=only_if_data_changed,
                config_json=config.to_json(),
                mlflow_tracking_uri=uri,
                mlflow_run_id=run_id,
            )
        ok = True
    except RuntimeError as err:  # kfp.local: "Task ... finished with status FAILURE"
        if not runner.errors:
            raise
        step, message = next(iter(runner.errors.items()))
        raise StepFailed(step, message, run_id) from err
    finally:
        try:
            session.end_pipeline(ok)
        except Exception as err:  # noqa: BLE001 - the store is gone: keep the step's own error
            log.warning("could not mark MLflow run %s finished: %s", run_id, err)
            if ok:
                raise
    return summarize(run_id, time.monotonic() - started, uri)


def summarize(run_id: str, wall_seconds: float, uri: str) -> RunSummary:
    """Reads a pipeline run's outcome from MLflow."""
    run = tracking.client(uri).get_run(run_id)
    return RunSummary(tracking.record_of(run), round(wall_seconds, 1), uri)
