"""The push step: a blessed model into the serving root (TF Serving layout) and the registry.

A version directory appears whole or not at all: files are copied into a hidden
temporary directory in the model's folder, ``saved_model.pb`` last (servers treat it
as "ready"), then the directory is renamed to the next integer version. Pushing the
same model again returns the version it already has. A killed push leaves only a
hidden ``.tmp-*`` directory, which servers ignore and a later push removes.

Rollback republishes an earlier version as a new highest version (servers load the
highest); retention keeps the newest versions and never the champion's or previous'.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import posixpath
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from visionpipe import faults, progress, storage
from visionpipe import features as F
from visionpipe.blessing import read_blessing
from visionpipe.errors import UserError
from visionpipe.layout import PUSH_RECORD, READY_FILE, model_digest, versions

log = logging.getLogger(__name__)


_STAGING_PREFIX = ".tmp-"
_STALE_SECONDS = 3600  # a staging directory this old belongs to a push that died


class NotBlessedError(UserError, RuntimeError):
    """Push was asked to publish a model the evaluation gate did not bless."""


class PushTargetError(UserError, ValueError):
    """The serving root cannot be written; the message names it."""


@contextlib.contextmanager
def serving_lock(model_root: str, wait_message: str = "") -> Iterator[None]:
    """Holds ``<serving_root>/.<model>.lock``: one push or rollback at a time per model.

    Version numbers (the next integer) and alias moves are decided inside it, so two
    runs on one home get distinct versions and the champion is the later one's. On a
    local filesystem it is an ``flock`` (released by the kernel if the holder dies);
    an object store has no such lock: there, one pusher per model is assumed (KFP
    recurring runs are created with at most one run at a time).
    """
    if "://" in model_root and not model_root.startswith("file://"):
        yield
        return
    root, name = posixpath.split(model_root.removeprefix("file://").rstrip("/"))
    path = posixpath.join(root, f".{name}.lock")  # beside the model: servers list its folder
    storage.makedirs(root)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            message = wait_message or f"waiting for another push to {model_root} to finish"
            log.warning("push: %s", message)
            progress.report("push", message)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_writable(serving_root: str) -> None:
    """Raises PushTargetError unless a file can be created and removed under ``serving_root``."""
    probe = storage.join(serving_root, f".visionpipe-write-test-{uuid.uuid4().hex[:8]}")
    try:
        storage.makedirs(serving_root)
        storage.write_bytes(probe, b"")
        storage.remove(probe)
    except OSError as err:
        raise PushTargetError(
            f"push.serving_root {serving_root} is not writable: {err.strerror or err}"
        ) from None


@dataclass(frozen=True)
class PushResult:
    """Where the model went."""

    version: int
    path: str
    digest: str
    already_pushed: bool


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
    for number, uri in sorted(versions(model_root).items()):
        if version_digest(uri) == digest:
            log.info("push: %s is already version %d", model_uri, number)
            return PushResult(number, uri, digest, already_pushed=True)
    profile = storage.join(blessing_uri, F.PROFILE_FILE)  # evaluate's, for monitoring
    extra = {F.REFERENCE_PROFILE: profile} if storage.exists(profile) else {}
    version, final = publish(model_uri, model_root, digest, extra_files=extra)
    log.info("push: %s -> %s", model_uri, final)
    return PushResult(version, final, digest, already_pushed=False)


def publish(
    model_uri: str,
    model_root: str,
    digest: str,
    extra_files: dict[str, str] | None = None,
    **record,
) -> tuple[int, str]:
    """Copies a SavedModel to the next integer version under ``model_root``, atomically.

    ``extra_files`` (path in the version -> source) are copied in too; the push record
    names the model, its version and its digest (what the prediction log records).
    """
    _remove_stale_staging(model_root)
    version = max(versions(model_root), default=0) + 1
    final = storage.join(model_root, str(version))
    staging = storage.join(model_root, f"{_STAGING_PREFIX}{version}-{uuid.uuid4().hex[:8]}")
    try:
        _copy_model(model_uri, staging)
        for path, source in (extra_files or {}).items():
            storage.copy_file(source, storage.join(staging, path))
        name = posixpath.basename(model_root.rstrip("/"))
        storage.write_json(
            storage.join(staging, PUSH_RECORD),
            {
                "digest": digest,
                "source": model_uri,
                "model_name": name,
                "version": str(version),
                **record,
            },
        )
        faults.point("push.copied")
        storage.rename(staging, final)
    finally:
        storage.remove(staging)
    return version, final


def version_digest(version_uri: str) -> str | None:
    """The content digest recorded when a version was pushed."""
    record = storage.join(version_uri, PUSH_RECORD)
    return storage.read_json(record).get("digest") if storage.exists(record) else None


def rollback_serving(model_root: str, digest: str) -> tuple[int, str]:
    """Republishes the version holding ``digest`` as a new highest version.

    If the highest version already holds it (a rollback that stopped before the
    registry changed), that version is returned: run again, a rollback copies once.

    Raises:
        FileNotFoundError: no version under ``model_root`` holds that model.
    """
    existing = versions(model_root)
    if existing and version_digest(existing[max(existing)]) == digest:
        return max(existing), existing[max(existing)]
    for number, uri in sorted(existing.items(), reverse=True):
        if version_digest(uri) == digest:
            version, final = publish(uri, model_root, digest, rolled_back_from_version=number)
            log.info("rollback: version %d republished as %d", number, version)
            return version, final
    raise FileNotFoundError(f"{model_root}: no version holds model {digest[:12]}")


def apply_retention(model_root: str, keep: int, protected_digests: set[str]) -> list[int]:
    """Deletes all but the ``keep`` newest versions, never the newest copy of a protected model.

    Returns the deleted version numbers. ``keep`` 0 keeps everything.
    """
    if keep <= 0:
        return []
    existing = sorted(versions(model_root).items(), reverse=True)
    digests = {number: version_digest(uri) for number, uri in existing}
    # The newest version holding each protected model (a rollback makes a second copy).
    protected = {
        max(n for n, d in digests.items() if d == digest)
        for digest in protected_digests
        if digest in digests.values()
    }
    deleted = []
    for number, uri in existing[keep:]:
        if number in protected:
            continue
        storage.remove(uri)
        deleted.append(number)
    if deleted:
        log.info("push: retention removed versions %s of %s", sorted(deleted), model_root)
    return sorted(deleted)


def _remove_stale_staging(model_root: str) -> None:
    if not storage.exists(model_root):
        return
    now = time.time()
    for uri in storage.listdir(model_root):
        name = posixpath.basename(uri.rstrip("/"))
        if name.startswith(_STAGING_PREFIX) and now - _mtime(uri) > _STALE_SECONDS:
            log.info("push: removing %s, left by a push that did not finish", uri)
            storage.remove(uri)


def _mtime(uri: str) -> float:
    fs, path = storage.filesystem(uri)
    try:
        modified = fs.modified(path)
    except (NotImplementedError, OSError):
        return time.time()
    return modified.timestamp()


def _copy_model(src: str, dst: str) -> None:
    root = src.rstrip("/")
    files = storage.walk_files(root)
    ready = [f for f in files if f[len(root) :].lstrip("/") == READY_FILE]
    for uri in [f for f in files if f not in ready] + ready:
        storage.copy_file(uri, storage.join(dst, uri[len(root) :].lstrip("/")))
