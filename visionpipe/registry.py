"""The MLflow model registry: finding the champion, registering a pushed version.

Every function takes the ``MlflowClient`` of the store (``visionpipe.tracking.client``).
"""

from __future__ import annotations

import logging

from visionpipe import faults
from visionpipe.errors import UserError

log = logging.getLogger(__name__)

CHAMPION = "champion"
PREVIOUS = "previous"


def version_by_alias(client, model_name: str, alias: str):
    """The registry's ``ModelVersion`` with ``alias``, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


class RollbackError(UserError, RuntimeError):
    """There is nothing to roll back to."""


def rollback_pair(client, model_name: str):
    """The ``champion`` and ``previous`` versions a rollback swaps.

    Raises:
        RollbackError: the model has no ``previous`` (or no ``champion``) version.
    """
    champion = version_by_alias(client, model_name, CHAMPION)
    previous = version_by_alias(client, model_name, PREVIOUS)
    if champion is None or previous is None:
        raise RollbackError(
            f"{model_name}: nothing to roll back to (champion: "
            f"{champion.version if champion else None}, previous: "
            f"{previous.version if previous else None})"
        )
    return champion, previous


def swap_champion(client, model_name: str, tags: dict[str, str] | None = None) -> tuple[str, str]:
    """Makes ``previous`` the champion again and the champion ``previous``.

    Tags first, then ``champion``, then ``previous``: run again after a crash between
    the two alias moves (both then name the same version), it finishes the swap from
    the ``rolled_back_from`` tag instead of swapping twice.

    Returns ``(new champion version, new previous version)``.

    Raises:
        RollbackError: the model has no ``previous`` (or no ``champion``) version.
    """
    champion, previous = rollback_pair(client, model_name)
    if str(champion.version) == str(previous.version):  # a swap stopped half-way
        demoted = champion.tags.get("rolled_back_from", "")
        if not demoted:
            raise RollbackError(
                f"{model_name}: champion and previous are both version {champion.version}"
            )
        client.set_registered_model_alias(model_name, PREVIOUS, demoted)
        return str(champion.version), demoted
    for key, value in (tags or {}).items():
        client.set_model_version_tag(model_name, previous.version, key, value)
    client.set_model_version_tag(
        model_name, previous.version, "rolled_back_from", str(champion.version)
    )
    faults.point("rollback.tagged")
    client.set_registered_model_alias(model_name, CHAMPION, previous.version)
    faults.point("rollback.champion_set")
    client.set_registered_model_alias(model_name, PREVIOUS, champion.version)
    log.info("registry: %s rolled back to version %s", model_name, previous.version)
    return str(previous.version), str(champion.version)


def download_champion(client, model_name: str, dst_dir: str) -> str | None:
    """Downloads the champion's SavedModel under ``dst_dir``; returns its directory, or None."""
    champion = version_by_alias(client, model_name, CHAMPION)
    if champion is None:
        return None
    return download_version(client, model_name, str(champion.version), dst_dir)


def download_version(client, model_name: str, version: str, dst_dir: str) -> str:
    """Downloads a registry version under ``dst_dir``; returns its SavedModel's directory.

    The version's files are found through ``client`` (MLflow's own ``models:/``
    resolution reads the process-wide registry URI, which this project never sets).
    """
    import mlflow

    from visionpipe.mlflow_model import saved_model_in

    source = client.get_model_version_download_uri(model_name, version)
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=source, dst_path=dst_dir, tracking_uri=client.tracking_uri
    )
    return saved_model_in(local) or local  # an MLflow Model holds the SavedModel


def download_models_uri(client, uri: str, dst_dir: str) -> str:
    """Downloads ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``; returns the directory.

    Raises:
        MlflowException: no such model, alias or version.
    """
    name, alias, version = parse_models_uri(uri)
    if alias:
        version = str(client.get_model_version_by_alias(name, alias).version)
    return download_version(client, name, version, dst_dir)


def parse_models_uri(uri: str) -> tuple[str, str, str]:
    """``(name, alias, version)`` of a ``models:/`` URI; the part not given is empty."""
    name, _, rest = uri.removeprefix("models:/").partition("/")
    name, _, alias = name.partition("@")
    return name, alias, "" if alias else rest.strip("/")


def version_by_digest(client, model_name: str, digest: str):
    """The newest registry version holding the model with content ``digest``, or None."""
    from mlflow.exceptions import MlflowException

    try:
        found = client.search_model_versions(f"name = '{model_name}'")
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    matches = [v for v in found if v.tags.get("model_digest") == digest]
    return max(matches, key=lambda v: int(v.version), default=None)


def register(client, model_name: str, run_id: str, artifact_path: str, tags: dict[str, str]) -> str:
    """Registers the run's logged model as a new version (tags included); no alias moves.

    Returns the new version. ``promote`` makes it the champion.
    """
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(model_name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(
        model_name, source=f"runs:/{run_id}/{artifact_path}", run_id=run_id, tags=tags
    )
    return str(version.version)


def tag_version(client, model_name: str, version: str, tags: dict[str, str]) -> None:
    """Sets tags on a registry version (edge exports record their outcome so)."""
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, str(value))


def promote(client, model_name: str, version: str) -> bool:
    """Makes ``version`` the champion, the former champion ``previous``; idempotent.

    The aliases are the last thing a push changes, ``previous`` before ``champion``:
    run again after a crash between the two, it ends as an uninterrupted call would.
    Returns whether anything moved.
    """
    former = version_by_alias(client, model_name, CHAMPION)
    if former is not None and str(former.version) == str(version):
        return False
    if former is not None:
        client.set_registered_model_alias(model_name, PREVIOUS, former.version)
        faults.point("push.previous_set")
    client.set_registered_model_alias(model_name, CHAMPION, version)
    log.info("registry: %s version %s is now %s", model_name, version, CHAMPION)
    return True
