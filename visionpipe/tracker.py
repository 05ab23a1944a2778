"""What the library code reports to: the ``Tracker`` interface, which by itself keeps nothing.

Training, tuning and the step wrappers report parameters, metrics, tags and files to
a ``Tracker`` they are given. They never reach for a tracking system themselves, and
work with ``NullTracker`` (the default) when nothing should be recorded. The MLflow
implementation is ``visionpipe.tracking.MlflowTracker``; tests can pass a recording one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class Tracker:
    """A run that records what one piece of work did.

    This base class records nothing (it is also ``NullTracker``, the library code's
    default); ``visionpipe.tracking.MlflowTracker`` records into MLflow.
    """

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

    def log_dataset(self, uri: str, digest: str, context: str) -> None:
        """Records the input data: where it is and its content digest."""

    def child(self, name: str, tags: Mapping[str, str] | None = None) -> Tracker:
        """A nested run (a tuning trial) under this one; finish it with ``finish``."""
        return self

    def finish(self, ok: bool = True, error: str = "") -> None:
        """Ends this run, successful or failed (with the error's text)."""


NullTracker = Tracker  # records nothing
