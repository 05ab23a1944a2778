"""The TF Serving layout: ``<serving_root>/<model_name>/<integer version>/saved_model.pb``.

Push writes it and the predictor reads it. A server loads the highest integer version
whose ``saved_model.pb`` exists; push writes that file last, so a version directory
with it is complete.
"""

from __future__ import annotations

import hashlib
import posixpath

from visionpipe import storage
from visionpipe.features import REFERENCE_PROFILE

READY_FILE = "saved_model.pb"
# Written into each pushed version: the model's digest and where it came from.
PUSH_RECORD = "assets.extra/visionpipe_push.json"
# Added to each pushed version from its evaluation (``visionpipe.features``); like the
# push record, not part of the model's digest, so a version and its source share one.
PUSH_ADDED = (PUSH_RECORD, REFERENCE_PROFILE)  # what push adds to a served version
_NOT_DIGESTED = PUSH_ADDED


# The SavedModel's key among an MLflow Model's artifacts (``pipelines.adapters.pyfunc_model``).
SAVED_MODEL_ARTIFACT = "saved_model"


def saved_model_in(model_dir: str) -> str | None:
    """The SavedModel inside a downloaded MLflow Model directory, or None if it is not one.

    Its place is the wrapper's ``saved_model`` artifact, as ``MLmodel`` records it.
    """
    mlmodel = storage.join(model_dir, "MLmodel")
    if not storage.exists(mlmodel):
        return None
    path = saved_model_path(storage.read_text(mlmodel))
    if not path or not storage.exists(storage.join(model_dir, path, READY_FILE)):
        return None
    return storage.join(model_dir, path)


def saved_model_path(mlmodel_text: str) -> str | None:
    """Where an MLflow Model of this project (its ``MLmodel`` file's text) keeps its SavedModel."""
    import yaml

    spec = yaml.safe_load(mlmodel_text) or {}
    artifacts = spec.get("flavors", {}).get("python_function", {}).get("artifacts", {})
    return (artifacts.get(SAVED_MODEL_ARTIFACT) or {}).get("path")


def versions(model_root: str, servable_only: bool = False) -> dict[int, str]:
    """Integer version directories under ``model_root``, by number.

    Args:
        model_root: ``<serving_root>/<model_name>``; missing means no versions.
        servable_only: keep only versions whose ``saved_model.pb`` exists (what a
            server would load); otherwise every integer-named directory.
    """
    if not storage.exists(model_root):
        return {}
    found = {}
    for uri in storage.listdir(model_root):
        name = posixpath.basename(uri.rstrip("/"))
        if not name.isdigit():
            continue
        if storage.exists(storage.join(uri, READY_FILE)) if servable_only else storage.isdir(uri):
            found[int(name)] = uri
    return found


def model_digest(model_uri: str) -> str:
    """A content hash of a SavedModel directory (file names and bytes, what push adds aside)."""
    h = hashlib.sha256()
    root = model_uri.rstrip("/")
    for uri in storage.walk_files(root):
        rel = uri[len(root) :].lstrip("/")
        if rel in _NOT_DIGESTED:
            continue
        h.update(rel.encode() + b"\0")
        h.update(hashlib.sha256(storage.read_bytes(uri)).digest())
    return h.hexdigest()


def model_identity(model_dir: str) -> dict[str, str]:
    """``name``, ``version`` and ``digest`` of a SavedModel, as the prediction log records them.

    A pushed version (wherever it was copied since: an MLflow Model holds one) is named
    and identified by its push record; any other directory by its own digest, with the
    folder's name and no version.
    """
    root = model_dir.rstrip("/")
    record_uri = storage.join(root, PUSH_RECORD)
    record = storage.read_json(record_uri) if storage.exists(record_uri) else {}
    parent, folder = posixpath.split(root)
    if record.get("digest"):
        name = record.get("model_name") or posixpath.basename(parent)
        version = str(record.get("version") or (folder if folder.isdigit() else ""))
        return {"name": name, "version": version, "digest": record["digest"]}
    return {"name": folder, "version": "", "digest": model_digest(root)}
