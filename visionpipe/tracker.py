"""What the library code reports to: the ``Tracker`` interface, which by itself keeps nothing.

Training, tuning and the step wrappers report parameters, metrics, tags and files to
a ``Tracker`` they are given. They never reach for a tracking system themselves, and
work with ``NullTracker`` (the default) when nothing should be recorded. The MLflow
implementation is ``pipelines.adapters.mlflow_tracking.MlflowTracker``; tests can pass a
recording one. ``PipelineRun`` is the same for the pipeline run a step belongs to.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class Tracker:
    """A run that records what one piece of work did.

    This base class records nothing (it is also ``NullTracker``, the library code's
    default); ``pipelines.adapters.mlflow_tracking.MlflowTracker`` records into MLflow.
    """

    run_id: str = ""  # the run's id in its store ("" for one that records nothing)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Records parameters (values are stored as text)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Records metric values, at ``step`` (an epoch) when given."""

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Records tags (values are stored as text)."""

    def log_dict(self, data: Any, path: str) -> None:
        """Stores ``data`` as a JSON (or YAML, by the extension) file at ``path``."""

    def log_text(self, text: str, path: str) -> None:
        """Stores ``text`` as a file at ``path``."""

    def log_artifact(self, local_path: str, path: str | None = None) -> None:
        """Stores a local file, or a directory's contents, under ``path``."""

    def log_dataset(
        self, uri: str, digest: str, context: str, profile: Mapping[str, Any] | None = None
    ) -> None:
        """Records the input data: where it is, its content digest, and more.

        ``context`` is how this run used it (ingest, training, test); ``profile`` its
        counts (per split).
        """

    def log_model(
        self,
        model_dir: str,
        name: str,
        digest: str,
        metrics: Mapping[str, float],
        example: bytes | None = None,
        dataset: tuple[str, str] | None = None,
        extra_files: Mapping[str, str] | None = None,
    ) -> str:
        """Records the served SavedModel at ``model_dir`` as a model this run made.

        ``metrics`` are recorded against the model (measured on ``dataset``: its name and
        digest); ``extra_files`` (path in the SavedModel -> source) are added to it as
        push adds them to the served copy. Returns the model's id in the store ("" where
        nothing records); a registry version can be made from it (``create_version``).
        """
        return ""

    def link_model(self, model_id: str, output: bool = False) -> None:
        """Records that this run used the model ``model_id``, or (``output``) made it."""

    def child(self, name: str, tags: Mapping[str, str] | None = None) -> Tracker:
        """A nested run (a tuning trial) under this one; finish it with ``finish``."""
        return self

    def finish(self, ok: bool = True, error: str = "") -> None:
        """Ends this run, successful or failed (with the error's text)."""


NullTracker = Tracker  # records nothing


class PipelineRun:
    """The pipeline run a step belongs to: its outcome record and the runs before it.

    The base class is "no pipeline run" (a step run on its own): it records nothing
    and knows no history. The MLflow implementation is in ``pipelines.adapters``;
    ``InMemoryPipelineRun`` keeps everything in memory for unit tests.
    """

    run_id: str = ""

    @property
    def tracker(self) -> Tracker:
        """A tracker of the pipeline run itself (artifacts and metrics of the whole run)."""
        return NullTracker()

    def record(self, **outcome: Any) -> None:
        """Stores ``RunRecord`` fields of this run's outcome (``visionpipe.record``)."""

    def read(self):
        """The ``RunRecord`` of this run so far (an empty one without a pipeline run)."""
        from visionpipe.record import RunRecord

        return RunRecord(run_id=self.run_id)

    def last_successful(self):
        """The newest finished pipeline run that trained, other than this one; or None."""
        return None

    def latest_monitor(self, model_name: str):
        """The newest finished monitor run's ``MonitorRecord`` for ``model_name``; or None."""
        return None

    def read_run(self, run_id: str):
        """The ``RunRecord`` of another pipeline run of this store; None if there is none."""
        return None

    def load_dict(self, run_id: str, path: str):
        """A JSON file an earlier pipeline run logged (``tracker.log_dict``); None if none."""
        return None


class InMemoryPipelineRun(PipelineRun):
    """A pipeline run held in memory, with earlier runs given as ``RunRecord`` values."""

    def __init__(
        self, run_id: str = "run", history: list | None = None, monitors: list | None = None
    ) -> None:
        self.run_id = run_id
        self.history = list(history or [])
        self.monitors = list(monitors or [])  # MonitorRecord values
        self.metrics: dict[str, float] = {}
        self.tags: dict[str, str] = {}
        self.files: dict[tuple[str, str], object] = {}  # (run id, path) -> logged JSON

    def record(self, **outcome: Any) -> None:
        """Stores the fields as the tracking store would (tags and metrics)."""
        from visionpipe.record import outcome_entries

        metrics, tags = outcome_entries(**outcome)
        self.metrics.update(metrics)
        self.tags.update(tags)

    def read(self):
        """The record as stored so far."""
        from visionpipe.record import RunRecord

        return RunRecord.from_store(self.run_id, "RUNNING", self.tags, self.metrics)

    def read_run(self, run_id: str):
        """The record of ``history`` with ``run_id``, or None."""
        return next((r for r in self.history if r.run_id == run_id), None)

    def last_successful(self):
        """The newest of ``history`` that finished and was not skipped."""
        done = [r for r in self.history if r.status == "FINISHED" and not r.skipped]
        return max(done, key=lambda r: r.start_time_ms, default=None)

    def load_dict(self, run_id: str, path: str):
        """``files[(run_id, path)]``, or None."""
        return self.files.get((run_id, path))

    def latest_monitor(self, model_name: str):
        """The newest of ``monitors`` for ``model_name``."""
        mine = [m for m in self.monitors if m.model_name == model_name]
        return max(mine, key=lambda m: m.start_time_ms, default=None)


def log_stored(tracker: Tracker, uri: str, path: str | None = None) -> None:
    """Logs the file or folder at ``uri`` as artifacts (under ``path``).

    A local one is logged where it is; one in an object store is copied to a temporary
    folder first (trackers log local files).
    """
    import os
    import posixpath
    import tempfile

    from visionpipe import storage

    if "://" not in uri:
        tracker.log_artifact(uri, path)
        return
    with tempfile.TemporaryDirectory(prefix="visionpipe-log-") as tmp:
        local = os.path.join(tmp, posixpath.basename(uri.rstrip("/")))
        if storage.isdir(uri):
            storage.download(uri, local)
        else:
            with open(local, "wb") as f:
                f.write(storage.read_bytes(uri))
        tracker.log_artifact(local, path)


def dataset_profile(examples: Mapping[str, int], **counts: int) -> dict[str, int]:
    """A dataset's profile as MLflow shows it: examples in all and per split, and ``counts``."""
    return {"num_rows": sum(examples.values()), **examples, **counts}


SPLIT_OF_CONTEXT = {"training": "train", "validation": "valid", "test": "test"}


def log_run_dataset(tracker: Tracker, record, context: str) -> None:
    """The pipeline run's ingested data (its ``RunRecord``) as an input of a step's run.

    ``context`` (training, test) names how the step used it; the profile has that
    split's examples and the whole dataset's. Nothing where the run has no data yet.
    """
    if not record.data_fingerprint or not record.data_source:
        return
    split = SPLIT_OF_CONTEXT.get(context)
    profile = dataset_profile(record.examples)
    if split:
        profile["used_split"] = split
    first = record.data_source.split(",")[0]
    tracker.log_dataset(first, record.data_fingerprint, context, profile)
