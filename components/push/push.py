"""The push step: a blessed model into the serving root (TF Serving layout) and the registry.

A version directory appears whole or not at all: files are copied into a hidden
temporary directory in the model's folder, ``saved_model.pb`` last (servers treat it
as "ready"), then the directory is renamed to the next integer version. Pushing the
same model again returns the version it already has.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import uuid
from dataclasses import dataclass

from components.evaluate.evaluate import read_blessing
from visionpipe import storage

log = logging.getLogger(__name__)

PUSH_RECORD = "assets.extra/visionpipe_push.json"
_READY_FILE = "saved_model.pb"


class NotBlessedError(RuntimeError):
    """Push was asked to publish a model the evaluation gate did not bless."""


@dataclass(frozen=True)
class PushResult:
    """Where the model went."""

    version: int
    path: str
    digest: str
    already_pushed: bool


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


def versions(model_root: str) -> dict[int, str]:
    """Integer version directories under ``<serving_root>/<model_name>``."""
    if not storage.exists(model_root):
        return {}
    found = {}
    for uri in storage.listdir(model_root):
        name = posixpath.basename(uri.rstrip("/"))
        if name.isdigit() and storage.isdir(uri):
            found[int(name)] = uri
    return found


def run_push(model_uri: str, blessing_uri: str, serving_root: str, model_name: str) -> PushResult:
    """Publishes a blessed model as the next integer version under the serving root.

    Args:
        model_uri: the trained serving SavedModel.
        blessing_uri: the evaluate step's output (``blessing.json``).
        serving_root: root directory TF Serving watches (one folder per model).
        model_name: the model's folder name under the serving root.

    Returns:
        The version (new, or the existing one holding the same model).

    Raises:
        NotBlessedError: the blessing says the model is not blessed.
    """
    blessing = read_blessing(blessing_uri)
    if not blessing.get("blessed"):
        raise NotBlessedError(f"{model_uri} is not blessed: {blessing.get('reason')}")
    digest = model_digest(model_uri)
    model_root = storage.join(serving_root, model_name)
    existing = versions(model_root)
    for number, uri in sorted(existing.items()):
        record = storage.join(uri, PUSH_RECORD)
        if storage.exists(record) and storage.read_json(record).get("digest") == digest:
            log.info("push: %s is already version %d", model_uri, number)
            return PushResult(number, uri, digest, already_pushed=True)
    version = max(existing, default=0) + 1
    final = storage.join(model_root, str(version))
    staging = storage.join(model_root, f".tmp-{version}-{uuid.uuid4().hex[:8]}")
    try:
        _copy_model(model_uri, staging)
        storage.write_json(
            storage.join(staging, PUSH_RECORD), {"digest": digest, "source": model_uri}
        )
        storage.rename(staging, final)
    finally:
        storage.remove(staging)
    log.info("push: %s -> %s", model_uri, final)
    return PushResult(version, final, digest, already_pushed=False)


def _copy_model(src: str, dst: str) -> None:
    root = src.rstrip("/")
    files = storage.walk_files(root)
    ready = [f for f in files if f[len(root) :].lstrip("/") == _READY_FILE]
    for uri in [f for f in files if f not in ready] + ready:
        storage.copy_file(uri, storage.join(dst, uri[len(root) :].lstrip("/")))
