"""``visionpipe.registry.Registry`` on MLflow's model registry.

Every call goes through an ``MlflowClient`` bound to the store's URI (MLflow's own
``models:/`` resolution reads the process-wide registry URI, which this project never
sets). A version is registered from the MLflow Model logged on the registering run.
"""

from __future__ import annotations

import os
import tempfile

from visionpipe import storage
from visionpipe.layout import PUSH_ADDED, saved_model_in, saved_model_path
from visionpipe.registry import ModelVersion, Registry, RegistryError

_MISSING = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")
MODEL_ID_TAG = "logged_model_id"  # SQLite stores keep no model_id on a version: a tag does


class MlflowRegistry(Registry):
    """The MLflow model registry of one tracking store."""

    def __init__(self, mlflow_client) -> None:
        self.client = mlflow_client
        self.uri = mlflow_client.tracking_uri

    @staticmethod
    def _view(v) -> ModelVersion:
        return ModelVersion(
            v.name,
            str(v.version),
            dict(v.tags or {}),
            tuple(v.aliases or ()),
            v.run_id or "",
            v.description or "",
            getattr(v, "model_id", None) or (v.tags or {}).get(MODEL_ID_TAG, ""),
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

    def create_version(
        self, name, model_dir, tags, run_id="", example=None, model_id="", description=""
    ) -> str:
        """Registers the logged model ``model_id``, or logs the model on ``run_id`` first.

        Without ``model_id`` (a push outside a pipeline run that logged its candidate),
        the MLflow Model is logged on ``run_id`` (``model/``), the MLflow 2 way. The
        version's run is the pipeline run when the tags name one (``pipeline_run_id``),
        so the pipeline run's page lists its registered model.
        """
        from mlflow.exceptions import MlflowException

        from pipelines.adapters.mlflow_model import save_mlflow_model

        if model_id:
            # Its artifact location, not ``models:/ID``: MLflow resolves that URI against
            # the process-wide tracking URI, which this project never sets.
            source = self.client.get_logged_model(model_id).artifact_location
            self._add_push_files(model_id, source, model_dir)
        else:
            with tempfile.TemporaryDirectory(prefix="mlflow-model-") as tmp:
                path = os.path.join(tmp, "model")
                save_mlflow_model(model_dir, path, example, tags.get("model_digest", ""))
                self.client.log_artifacts(run_id, path, "model")
            source = f"runs:/{run_id}/model"
        try:
            self.client.create_registered_model(name)
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        version = self.client.create_model_version(
            name,
            source=source,
            run_id=tags.get("pipeline_run_id") or run_id,
            tags={**tags, MODEL_ID_TAG: model_id} if model_id else tags,
            description=description or None,
            model_id=model_id or None,
        )
        if model_id:  # the link MLflow's UI shows on the model, as mlflow.register_model makes
            self._link(model_id, name, str(version.version))
        return str(version.version)

    def _add_push_files(self, model_id: str, location: str, model_dir: str) -> None:
        """Push's files (its record: name, version, digest) into the logged model's copy.

        The logged model is the candidate as evaluate saw it; push adds its record to the
        served version, and the registered version must say the same name and version
        (the prediction log of ``mlflow models serve`` reads it there).
        """
        import mlflow

        with tempfile.TemporaryDirectory(prefix="push-files-") as tmp:
            mlmodel = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{location}/MLmodel", dst_path=tmp, tracking_uri=self.uri
            )
            inner = saved_model_path(storage.read_text(mlmodel))
            if inner is None:
                raise RegistryError(f"logged model {model_id}: its MLmodel names no SavedModel")
            added = os.path.join(tmp, "added")
            for rel in PUSH_ADDED:
                if storage.exists(storage.join(model_dir, rel)):
                    target = os.path.join(added, rel)
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    with open(target, "wb") as out:
                        out.write(storage.read_bytes(storage.join(model_dir, rel)))
            if os.path.isdir(added):
                self.client.log_model_artifacts(model_id, added, inner)

    def _link(self, model_id: str, name: str, version: str) -> None:
        import json

        from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

        tags = self.client.get_logged_model(model_id).tags
        linked = json.loads(tags.get(MLFLOW_MODEL_VERSIONS, "[]"))
        linked.append({"name": name, "version": version})
        self.client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(linked)})

    def describe(self, name: str, description: str) -> None:
        """Sets the registered model's description."""
        self.client.update_registered_model(name, description=description)

    def description(self, name: str) -> str:
        """The registered model's description."""
        return self.client.get_registered_model(name).description or ""

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
