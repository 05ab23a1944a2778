"""The TF Serving layout: ``<serving_root>/<model_name>/<integer version>/saved_model.pb``.

Push writes it and the predictor reads it. A server loads the highest integer version
whose ``saved_model.pb`` exists; push writes that file last, so a version directory
with it is complete.
"""

from __future__ import annotations

import hashlib
import posixpath

from visionpipe import storage

READY_FILE = "saved_model.pb"
# Written into each pushed version: the model's digest and where it came from.
PUSH_RECORD = "assets.extra/visionpipe_push.json"


# The SavedModel's key among an MLflow Model's artifacts (``pipelines.adapters.pyfunc_model``).
SAVED_MODEL_ARTIFACT = "saved_model"


def saved_model_in(model_dir: str) -> str | None:
    """The SavedModel inside a downloaded MLflow Model directory, or None if it is not one.

    Its place is the wrapper's ``saved_model`` artifact, as ``MLmodel`` records it.
    """
    import yaml

    mlmodel = storage.join(model_dir, "MLmodel")
    if not storage.exists(mlmodel):
        return None
    spec = yaml.safe_load(storage.read_text(mlmodel)) or {}
    artifacts = spec.get("flavors", {}).get("python_function", {}).get("artifacts", {})
    path = (artifacts.get(SAVED_MODEL_ARTIFACT) or {}).get("path")
    if not path or not storage.exists(storage.join(model_dir, path, READY_FILE)):
        return None
    return storage.join(model_dir, path)


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
    """A content hash of a SavedModel directory (file names and bytes)."""
    h = hashlib.sha256()
    root = model_uri.rstrip("/")
    for uri in storage.walk_files(root):
        rel = uri[len(root) :].lstrip("/")
        if rel == PUSH_RECORD:
            continue
        h.update(rel.encode() + b"\0")
        h.update(hashlib.sha256(storage.read_bytes(uri)).digest())
    return h.hexdigest()
