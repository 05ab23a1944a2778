"""Push and rollback over the serving root and a ``Registry``, reconciled by model digest.

Every push finishes whatever an earlier, killed one left, in this order: the files (a
version on disk holding the digest, or a new one), then a registry version holding the
digest (made if missing, with its tags), then the aliases, ``previous`` before
``champion``, last. A rollback copies the previous champion's files to a new highest
version first and swaps the aliases only then, so a failed copy changes nothing. The
registry is an interface (``visionpipe.registry``): unit tests use the in-memory one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from components.push.push import (
    PushResult,
    apply_retention,
    check_writable,
    rollback_serving,
    run_push,
    serving_lock,
)
from visionpipe import faults, storage
from visionpipe import features as F
from visionpipe.blessing import example_image, read_blessing
from visionpipe.errors import UserError
from visionpipe.registry import CHAMPION, PREVIOUS, ModelVersion, Registry, version_by_digest

log = logging.getLogger(__name__)


class RollbackError(UserError, RuntimeError):
    """There is nothing to roll back to."""


@dataclass(frozen=True)
class Released:
    """A push's outcome: the files, and the registry version that holds them."""

    pushed: PushResult
    registered_version: str
    aliases_moved: bool
    retention_deleted: list[int]
    model_id: str = ""  # the logged model (evaluate's) the version was made from

    @property
    def already_pushed(self) -> bool:
        """The same model was pushed and registered before, and nothing moved."""
        return self.pushed.already_pushed and not self.aliases_moved


def promote(registry: Registry, name: str, version: str) -> bool:
    """Makes ``version`` the champion, the former champion ``previous``; idempotent.

    Returns whether anything moved.
    """
    former = registry.version_by_alias(name, CHAMPION)
    if former is not None and former.version == str(version):
        return False
    if former is not None:
        registry.set_alias(name, PREVIOUS, former.version)
        faults.point("push.previous_set")
    registry.set_alias(name, CHAMPION, str(version))
    log.info("registry: %s version %s is now %s", name, version, CHAMPION)
    return True


def rollback_pair(registry: Registry, name: str) -> tuple[ModelVersion, ModelVersion]:
    """The ``champion`` and ``previous`` versions a rollback swaps.

    Raises:
        RollbackError: the model has no ``previous`` (or no ``champion``) version.
    """
    champion = registry.version_by_alias(name, CHAMPION)
    previous = registry.version_by_alias(name, PREVIOUS)
    if champion is None or previous is None:
        raise RollbackError(
            f"{name}: nothing to roll back to (champion: "
            f"{champion.version if champion else None}, previous: "
            f"{previous.version if previous else None})"
        )
    return champion, previous


def swap_champion(registry: Registry, name: str, tags: dict[str, str]) -> tuple[str, str]:
    """Makes ``previous`` the champion again and the champion ``previous``.

    Tags first, then ``champion``, then ``previous``: run again after a crash between
    the two alias moves (both then name the same version), it finishes the swap from
    the ``rolled_back_from`` tag instead of swapping twice. Returns ``(new champion,
    new previous)``.
    """
    champion, previous = rollback_pair(registry, name)
    if champion.version == previous.version:  # a swap stopped half-way
        demoted = champion.tags.get("rolled_back_from", "")
        if not demoted:
            raise RollbackError(
                f"{name}: champion and previous are both version {champion.version}"
            )
        registry.set_alias(name, PREVIOUS, demoted)
        return champion.version, demoted
    registry.set_tags(name, previous.version, {**tags, "rolled_back_from": champion.version})
    faults.point("rollback.tagged")
    registry.set_alias(name, CHAMPION, previous.version)
    faults.point("rollback.champion_set")
    registry.set_alias(name, PREVIOUS, champion.version)
    log.info("registry: %s rolled back to version %s", name, previous.version)
    return previous.version, champion.version


def protected_digests(registry: Registry, name: str) -> set[str]:
    """Model digests of the champion and previous: retention keeps them."""
    digests = set()
    for alias in (CHAMPION, PREVIOUS):
        version = registry.version_by_alias(name, alias)
        if version is not None and version.tags.get("model_digest"):
            digests.add(version.tags["model_digest"])
    return digests


def version_tags(
    pushed: PushResult, blessing: dict, pipeline_run_id: str, data_fingerprint: str
) -> dict[str, str]:
    """A registry version's tags: where it is served, its digest, data and test metrics."""
    candidate = blessing.get("candidate", {})
    return {
        "pipeline_run_id": pipeline_run_id,
        "serving_path": pushed.path,
        "serving_version": str(pushed.version),
        "model_digest": pushed.digest,
        "data_fingerprint": data_fingerprint,
        **{
            f"test_{k}": f"{candidate[k]:.6f}"
            for k in ("accuracy", "macro_f1", "log_loss")
            if k in candidate
        },
    }


def version_description(blessing: dict) -> str:
    """Why a version was blessed, and the gate's checks as a Markdown table."""
    lines = [blessing.get("reason", ""), "", "| check | value | threshold | passed |"]
    lines.append("| --- | --- | --- | --- |")
    for check in blessing.get("checks", []):
        value, threshold = check.get("value"), check.get("threshold")
        lines.append(
            f"| {check.get('name', '')} | {_shown(value)} | {_shown(threshold)} | "
            f"{'yes' if check.get('passed') else 'no'} |"
        )
    return "\n".join(lines)


def _shown(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("" if value is None else str(value))


def model_description(name: str, model_dir: str) -> str:
    """What the registered model is: its task, its labels, what goes in and comes out."""
    labels = saved_model_labels(model_dir)
    return (
        f"{name}: an image classifier over {len(labels)} classes ({', '.join(labels)}), "
        "trained and gated by visionpipe.\n\n"
        "Input: encoded image bytes (JPEG, PNG, GIF, BMP or WebP), one image per row "
        f"(`image`; the TF Serving signature `{F.SERVING_SIGNATURE}` takes "
        f"`{F.SERVING_INPUT}`). Decoding, resizing and normalising are inside the model; "
        "an image over the pixel limit is refused per row.\n"
        "Output per image: `class_name`, `class_id`, `probability`, `probabilities` (in "
        "the label order above), `error`.\n"
        "The champion is the alias `champion`; the one before it, `previous`."
    )


def saved_model_labels(model_dir: str) -> list[str]:
    """The labels of an exported model, in class order (its training record's)."""
    return list(storage.read_json(storage.join(model_dir, F.TRAINING_RECORD))["labels"])


def release(
    model_uri: str,
    blessing_uri: str,
    serving_root: str,
    name: str,
    registry: Registry,
    keep_versions: int = 0,
    run_id: str = "",
    pipeline_run_id: str = "",
    data_fingerprint: str = "",
) -> Released:
    """Publishes a blessed model and makes it the registry's champion (see the module).

    ``run_id`` is the run that records the registration (the push step's).

    Raises:
        PushTargetError: the serving root cannot be written (before any work).
        NotBlessedError: the blessing says the model is not blessed.
    """
    check_writable(serving_root)  # before any work: a clear error naming the target
    with serving_lock(storage.join(serving_root, name)):
        pushed = run_push(model_uri, blessing_uri, serving_root, name)
        faults.point("push.renamed")
        existing = version_by_digest(registry, name, pushed.digest)
        blessing = read_blessing(blessing_uri)
        if existing is None:
            tags = version_tags(pushed, blessing, pipeline_run_id, data_fingerprint)
            registered = registry.create_version(
                name,
                pushed.path,
                tags,
                run_id,
                example_image(blessing_uri),
                model_id=blessing.get("model_id", ""),
                description=version_description(blessing),
            )
            faults.point("push.registered")
        else:
            registered = existing.version
        registry.describe(name, model_description(name, pushed.path))
        moved = promote(registry, name, registered) or existing is None
        deleted = apply_retention(
            storage.join(serving_root, name),
            keep_versions,
            protected_digests(registry, name) | {pushed.digest},
        )
    return Released(pushed, registered, moved, deleted, blessing.get("model_id", ""))


def rollback(serving_root: str, name: str, registry: Registry) -> dict:
    """The previous champion becomes champion again: in the serving root, then the registry.

    Raises:
        RollbackError: there is no previous champion (before any copy).
    """
    check_writable(serving_root)
    with serving_lock(storage.join(serving_root, name)):
        _, previous = rollback_pair(registry, name)
        digest = previous.tags.get("model_digest", "")
        version, path = rollback_serving(storage.join(serving_root, name), digest)
        faults.point("rollback.republished")
        champion, demoted = swap_champion(
            registry, name, {"serving_version": str(version), "serving_path": path}
        )
    return {"champion": champion, "previous": demoted, "serving_version": version, "path": path}
