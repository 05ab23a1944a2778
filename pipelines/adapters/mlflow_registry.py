"""``visionpipe.registry.Registry`` on MLflow's model registry.

Every call goes through an ``MlflowClient`` bound to the store's URI (MLflow's own
``models:/`` resolution reads the process-wide registry URI, which this project never
sets). A version is registered from the MLflow Model logged on the registering run.
"""

from __future__ import annotations

import os
import tempfile

from visionpipe.layout import saved_model_in
from visionpipe.registry import ModelVersion, Registry, RegistryError

_MISSING = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


class MlflowRegistry(Registry):
    """The MLflow model registry of one tracking store."""

    def __init__(self, mlflow_client) -> None:
        self.client = mlflow_client
        self.uri = mlflow_client.tracking_uri

    @staticmethod
    def _view(v) -> ModelVersion:
        return ModelVersion(
            v.name, str(v.version), dict(v.tags or {}), tuple(v.aliases or ()), v.run_id or ""
        )

    def version(self, name: str, version: str) -> ModelVersion:
        """The version; RegistryError if there is none."""
        from mlflow.exceptions import MlflowException

        try:
            return self._view(self.client.get_model_version(name, str(version)))
        except MlflowException as err:
            if err.error_code in _MISSING:
                raise RegistryError(f"models:/{name}/{version}: {err.message}") from None
            raise

    def version_by_alias(self, name: str, alias: str) -> ModelVersion | None:
        """The version with ``alias``, or None."""
        from mlflow.exceptions import MlflowException

        try:
            return self._view(self.client.get_model_version_by_alias(name, alias))
        except MlflowException as err:
            if err.error_code in _MISSING:
                return None
            raise

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of the model."""
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.search_model_versions(f"name = '{name}'")
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                return []
            raise
        return [self._view(v) for v in found]

    def create_version(self, name, model_dir, tags, run_id="", example=None) -> str:
        """Logs the model as an MLflow Model on ``run_id`` (``model/``) and registers it."""
        from mlflow.exceptions import MlflowException

        from pipelines.adapters.mlflow_model import save_mlflow_model

        with tempfile.TemporaryDirectory(prefix="mlflow-model-") as tmp:
            path = os.path.join(tmp, "model")
            save_mlflow_model(model_dir, path, example, tags.get("model_digest", ""))
            self.client.log_artifacts(run_id, path, "model")
        try:
            self.client.create_registered_model(name)
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        version = self.client.create_model_version(
            name, source=f"runs:/{run_id}/model", run_id=run_id, tags=tags
        )
        return str(version.version)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        """Points ``alias`` at ``version``."""
        self.client.set_registered_model_alias(name, alias, str(version))

    def set_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        """Sets tags on a version."""
        for key, value in tags.items():
            self.client.set_model_version_tag(name, str(version), key, str(value))

    def download_model(self, name: str, version: str, dst_dir: str) -> str:
        """Downloads the version's MLflow Model (what MLflow's scoring server loads)."""
        import mlflow

        source = self.client.get_model_version_download_uri(name, str(version))
        return mlflow.artifacts.download_artifacts(
            artifact_uri=source, dst_path=dst_dir, tracking_uri=self.client.tracking_uri
        )

    def download(self, name: str, version: str, dst_dir: str) -> str:
        """Downloads the version's files; returns the SavedModel inside them."""
        local = self.download_model(name, version, dst_dir)
        return saved_model_in(local) or local  # an MLflow Model holds the SavedModel
