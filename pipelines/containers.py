"""What a local run in containers shares with them: host paths, environment and image.

``visionpipe run --isolation container`` runs each component in ``pipeline.image`` on
this machine's container engine (``pipelines.adapters.containers``). Each container sees,
at the same paths as this process:

- the home (``$VISIONPIPE_HOME``: the pipeline root, the MLflow SQLite store and
  artifacts, the serving root, the step cache, the logs), read-write;
- the data (the ``--data`` folder, or the CSV's folder and the folder holding every
  image it names), read-only;
- whichever configured local paths lie outside the home: ``push.serving_root``,
  ``pipeline.cache_root``, ``monitor.log_uri`` and a SQLite ``mlflow.tracking_uri``
  (read-write), ``validate.schema_uri`` and a ``trainer.weights`` file (read-only), and a
  credentials file named by ``GOOGLE_APPLICATION_CREDENTIALS`` (read-only).

Object-store and server URIs need no mount: the containers are on the host's network
and get the environment variables named in ``PASSED_ENV`` (credentials, proxies, MLflow's
and visionpipe's own settings).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from pipelines.adapters import containers
from pipelines.adapters.containers import ContainerCommands, Mount
from visionpipe.config import Config
from visionpipe.home import Home
from visionpipe.sections import NAMED_WEIGHTS
from visionpipe.sources import list_sources

PASSED_ENV = (
    "VISIONPIPE_",
    "MLFLOW_",
    "AWS_",
    "GOOGLE_",
    "GCLOUD_",
    "CLOUDSDK_",
    "TF_CPP_MIN_LOG_LEVEL",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
)


def local_path(uri: str) -> Path | None:
    """The absolute local path of ``uri`` (a path, ``file://`` or ``sqlite:///``), else None."""
    if not uri:
        return None
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path if parsed.scheme else uri).absolute()
    if parsed.scheme == "sqlite":
        return Path(uri[len("sqlite:///") :]).absolute() if uri.startswith("sqlite:///") else None
    return None


def _folder(path: Path) -> Path:
    return path if path.is_dir() else path.parent


def data_mounts(data_uri: str) -> list[Mount]:
    """Read-only mounts for the data: its folder, or a CSV's folder and its images' folder."""
    path = local_path(data_uri)
    if path is None:
        return []
    if path.is_dir():
        return [Mount(str(path), read_only=True)]
    folders = {str(path.parent)}
    images = [local_path(s.uri) for s in list_sources(data_uri)]
    local = [str(p.parent) for p in images if p is not None]
    if local:
        folders.add(os.path.commonpath(local))
    return [Mount(f, read_only=True) for f in sorted(folders)]


def mounts_for(data_uri: str, config: Config, home: Home, tracking_uri: str) -> list[Mount]:
    """Every host path the steps of this run read or write (see the module's docstring)."""
    writable = [
        home.root,
        local_path(config.push.serving_root),
        local_path(home.step_cache_for(config)),
        local_path(home.prediction_log_for(config)),
    ]
    db = local_path(tracking_uri)
    writable.append(db.parent if db is not None else None)
    readable = [local_path(config.validation.schema_uri)]
    if config.trainer.weights not in NAMED_WEIGHTS:
        readable.append(local_path(config.trainer.weights))
    readable.append(local_path(os.environ.get("GOOGLE_APPLICATION_CREDENTIALS", "")))
    chosen = [Mount(str(p)) for p in writable if p is not None]
    chosen += [Mount(str(_folder(p)), read_only=True) for p in readable if p is not None]
    chosen += data_mounts(data_uri)
    return _outermost(chosen)


def _outermost(mounts: list[Mount]) -> list[Mount]:
    """Without mounts that another one already covers with the same or more access.

    A path inside a writable mount needs no mount of its own; a read-only one inside a
    read-only one neither. Missing folders are created (a mount source must exist).
    """
    kept: list[Mount] = []
    for mount in sorted(set(mounts), key=lambda m: (len(Path(m.path).parts), m.read_only)):
        inside = [k for k in kept if Path(mount.path).is_relative_to(k.path)]
        if any(not k.read_only or mount.read_only for k in inside):
            continue
        kept.append(mount)
    for mount in kept:
        if not mount.read_only:
            Path(mount.path).mkdir(parents=True, exist_ok=True)
    return kept


def passed_environment() -> dict[str, str]:
    """The variables of this process that the steps need too (``PASSED_ENV``'s names)."""
    return {k: v for k, v in os.environ.items() if k.startswith(PASSED_ENV)}


@contextlib.contextmanager
def container_commands(
    data_uri: str, config: Config, home: Home, tracking_uri: str
) -> Iterator[ContainerCommands]:
    """The engine connected and ``pipeline.image`` found, for one run's components.

    Raises:
        ContainerError (a UserError): no engine answers, or the image is not there.
    """
    with containers.engine() as engine:
        image = containers.find_image(engine, config.pipeline.image)
        yield ContainerCommands(
            engine,
            image,
            mounts_for(data_uri, config, home, tracking_uri),
            passed_environment(),
        )
