"""The model registry the steps talk to: a small interface, and an in-memory one for tests.

A registry holds named models, each with integer versions carrying tags, and aliases
(``champion``, ``previous``) naming one version each. Push, rollback, evaluate (the
champion) and the edge export use only this interface; the MLflow implementation is
``pipelines.adapters.mlflow_registry.MlflowRegistry``. What push and rollback do with
it (the order of the alias moves, retention) is in ``components/push``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field

from visionpipe.errors import UserError

CHAMPION = "champion"
PREVIOUS = "previous"
MODELS_SCHEME = "models:/"


@dataclass(frozen=True)
class ModelVersion:
    """One registered version: its number (as text), tags and aliases."""

    name: str
    version: str
    tags: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    run_id: str = ""
    description: str = ""
    model_id: str = ""  # the logged model it was made from ("" where there is none)


class RegistryError(UserError, LookupError):
    """A model, version or alias the registry does not have; the message names it."""


class Registry:
    """The interface. Every method names the model; versions are strings ("3")."""

    uri: str = ""

    def version(self, name: str, version: str) -> ModelVersion:
        """The version; RegistryError if there is none."""
        raise NotImplementedError

    def version_by_alias(self, name: str, alias: str) -> ModelVersion | None:
        """The version ``alias`` names, or None (no such model or alias)."""
        raise NotImplementedError

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of the model (none when it is not registered)."""
        raise NotImplementedError

    def create_version(
        self,
        name: str,
        model_dir: str,
        tags: dict[str, str],
        run_id: str = "",
        example: bytes | None = None,
        model_id: str = "",
        description: str = "",
    ) -> str:
        """Registers the SavedModel at ``model_dir`` as a new version; returns its number.

        ``run_id`` is the run that records the registration (MLflow logs the model
        there, unless ``model_id`` names the logged model it already is); ``example`` an
        input example (encoded image bytes); ``description`` the version's.
        """
        raise NotImplementedError

    def describe(self, name: str, description: str) -> None:
        """Sets the registered model's description."""
        raise NotImplementedError

    def description(self, name: str) -> str:
        """The registered model's description ("" when it has none)."""
        raise NotImplementedError

    def set_alias(self, name: str, alias: str, version: str) -> None:
        """Points ``alias`` at ``version``."""
        raise NotImplementedError

    def set_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        """Sets tags on a version."""
        raise NotImplementedError

    def download(self, name: str, version: str, dst_dir: str) -> str:
        """Copies the version's SavedModel under ``dst_dir``; returns its directory."""
        raise NotImplementedError


class InMemoryRegistry(Registry):
    """A registry in a dict; ``create_version`` keeps the model's path, not a copy."""

    uri = "memory:"

    def __init__(self) -> None:
        self._versions: dict[str, dict[str, dict]] = {}
        self._aliases: dict[str, dict[str, str]] = {}
        self._descriptions: dict[str, str] = {}

    def _entry(self, name: str, version: str) -> dict:
        try:
            return self._versions[name][version]
        except KeyError:
            raise RegistryError(f"{MODELS_SCHEME}{name}/{version}: no such version") from None

    def _view(self, name: str, version: str) -> ModelVersion:
        entry = self._entry(name, version)
        aliases = tuple(a for a, v in self._aliases.get(name, {}).items() if v == version)
        return ModelVersion(
            name,
            version,
            dict(entry["tags"]),
            aliases,
            entry["run_id"],
            entry["description"],
            entry["model_id"],
        )

    def version(self, name: str, version: str) -> ModelVersion:
        """The version; RegistryError if there is none."""
        return self._view(name, str(version))

    def version_by_alias(self, name: str, alias: str) -> ModelVersion | None:
        """The version ``alias`` names, or None."""
        version = self._aliases.get(name, {}).get(alias)
        return None if version is None else self._view(name, version)

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version, oldest first."""
        return [self._view(name, v) for v in self._versions.get(name, {})]

    def create_version(
        self, name, model_dir, tags, run_id="", example=None, model_id="", description=""
    ) -> str:
        """A new version holding ``model_dir``."""
        versions = self._versions.setdefault(name, {})
        version = str(len(versions) + 1)
        versions[version] = {
            "tags": dict(tags),
            "run_id": run_id,
            "path": model_dir,
            "model_id": model_id,
            "description": description,
        }
        return version

    def describe(self, name: str, description: str) -> None:
        """Sets the registered model's description."""
        self._descriptions[name] = description

    def description(self, name: str) -> str:
        """The registered model's description."""
        return self._descriptions.get(name, "")

    def set_alias(self, name: str, alias: str, version: str) -> None:
        """Points ``alias`` at ``version``."""
        self._entry(name, str(version))
        self._aliases.setdefault(name, {})[alias] = str(version)

    def set_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        """Sets tags on a version."""
        self._entry(name, str(version))["tags"].update({k: str(v) for k, v in tags.items()})

    def download(self, name: str, version: str, dst_dir: str) -> str:
        """A copy of the version's model under ``dst_dir``."""
        path = self._entry(name, str(version))["path"]
        target = f"{dst_dir.rstrip('/')}/{name}-{version}"
        shutil.copytree(path, target)
        return target


def parse_models_uri(uri: str) -> tuple[str, str, str]:
    """``(name, alias, version)`` of a ``models:/`` URI; the part not given is empty."""
    name, _, rest = uri.removeprefix(MODELS_SCHEME).partition("/")
    name, _, alias = name.partition("@")
    return name, alias, "" if alias else rest.strip("/")


def resolve_version(registry: Registry, uri: str) -> ModelVersion:
    """The version a ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` URI names.

    Raises:
        RegistryError: no such model, alias or version.
    """
    name, alias, version = parse_models_uri(uri)
    if alias:
        found = registry.version_by_alias(name, alias)
        if found is None:
            raise RegistryError(f"{uri}: model {name!r} has no version with alias {alias!r}")
        return found
    return registry.version(name, version)


def download_uri(registry: Registry, uri: str, dst_dir: str) -> str:
    """Downloads the version a ``models:/`` URI names; returns its SavedModel directory."""
    found = resolve_version(registry, uri)
    return registry.download(found.name, found.version, dst_dir)


def download_champion(registry: Registry, name: str, dst_dir: str) -> str | None:
    """The champion's SavedModel under ``dst_dir``, or None when there is no champion."""
    champion = registry.version_by_alias(name, CHAMPION)
    return None if champion is None else registry.download(name, champion.version, dst_dir)


def version_by_digest(registry: Registry, name: str, digest: str) -> ModelVersion | None:
    """The newest version holding the model with content ``digest``, or None."""
    matches = [v for v in registry.versions(name) if v.tags.get("model_digest") == digest]
    return max(matches, key=lambda v: int(v.version), default=None)
