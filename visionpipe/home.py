"""Where local state lives: one directory, ``$VISIONPIPE_HOME`` (default ``./.visionpipe``).

Under it: the MLflow SQLite store and artifacts, the KFP pipeline root and the
serving root. Paths are resolved when asked for, never at import time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from visionpipe.config import Config

HOME_ENV = "VISIONPIPE_HOME"


@dataclass(frozen=True)
class Home:
    """The resolved local-state layout."""

    root: Path

    @classmethod
    def resolve(cls) -> Home:
        """Reads ``$VISIONPIPE_HOME`` now (default ``.visionpipe`` in the working directory)."""
        return cls(Path(os.environ.get(HOME_ENV) or ".visionpipe").absolute())

    @property
    def mlflow_db(self) -> Path:
        """The SQLite file of the MLflow tracking and registry store."""
        return self.root / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        """Where MLflow stores run artifacts."""
        return self.root / "mlartifacts"

    @property
    def pipeline_root(self) -> Path:
        """The KFP pipeline root for local runs."""
        return self.root / "pipeline_root"

    @property
    def serving_root(self) -> Path:
        """Default serving root that pushed models go to."""
        return self.root / "serving"

    def tracking_uri(self, config: Config) -> str:
        """The configured MLflow tracking URI, or the local SQLite store."""
        return config.mlflow.tracking_uri or f"sqlite:///{self.mlflow_db}"

    def serving_root_for(self, config: Config) -> str:
        """The configured serving root, or the local default."""
        return config.push.serving_root or str(self.serving_root)

    def prediction_log_for(self, config: Config) -> str:
        """The configured prediction log (``monitor.log_uri``), or ``<home>/predictions``."""
        return config.monitor.log_uri or str(self.root / "predictions")

    def step_cache_for(self, config: Config) -> str:
        """The configured step cache (``pipeline.cache_root``), or ``<home>/cache``."""
        return config.pipeline.cache_root or str(self.root / "cache")

    def monitor_reports(self) -> Path:
        """Where ``visionpipe monitor`` writes its reports unless told."""
        return self.root / "monitor"
