"""Finding images: a dataset's labelled ones (folder-per-class or a CSV of path,label).

Core, not ingest's: ingest reads training data with it, and ``visionpipe monitor``
reads freshly labelled images (``--labels``) and unlabelled ones (``--data``) the same
way.
"""

from __future__ import annotations

import csv
import io
import posixpath
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from visionpipe import storage
from visionpipe.errors import UserError


class DataError(UserError, ValueError):
    """The dataset given as input cannot be used; the message names it and says why."""


# What a folder-per-class dataset says about an image besides its class: the folders
# between the class folder and the file (``cat/site_a/cam1/x.jpg``: ``site_a/cam1``).
FOLDER_ATTRIBUTE = "folder"
_ATTRIBUTE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Source:
    """One input record: where an image is, what it is labelled, and what else is known.

    ``attributes`` are a CSV's extra columns (or a folder dataset's ``folder``), as
    ``(name, value)`` pairs; evaluation slices by them (``evaluate.slices``).
    """

    uri: str
    label: str
    attributes: tuple[tuple[str, str], ...] = ()


def attribute_names(sources: Sequence[Source]) -> list[str]:
    """Every attribute name the sources carry, sorted."""
    return sorted({name for s in sources for name, _ in s.attributes})


def list_sources(data: str | Sequence[str]) -> list[Source]:
    """Every labelled image of a dataset, in a stable order.

    Args:
        data: a folder whose first-level subfolders are the classes (files nested
            below a class folder belong to it; the folders between are the ``folder``
            attribute), or a ``.csv`` file of ``path,label`` rows (optional header;
            paths absolute, URIs, or relative to the CSV's folder; with a header
            ``path,label,site,...`` the extra columns are attributes); a glob
            (``labels/*.csv``) or a list of these is read as one dataset.

    Returns:
        The sources, sorted by URI.

    Raises:
        DataError: a path does not exist, a glob matches nothing, or no labelled
            images are found.
    """
    uris = [data] if isinstance(data, str) else list(data)
    sources: list[Source] = []
    for uri in uris:
        matches = storage.glob(uri) if _is_glob(uri) else [uri]
        if not matches:
            raise DataError(f"{uri}: no files match this pattern")
        for match in matches:
            sources.extend(_list_one(match))
    return sorted(sources, key=lambda s: (s.uri, s.label))


def _is_glob(uri: str) -> bool:
    return any(c in uri for c in "*?[")


def _list_one(data_uri: str) -> list[Source]:
    if not storage.exists(data_uri):
        raise DataError(f"{data_uri}: no such file or directory")
    if storage.isdir(data_uri):
        sources = _from_folders(data_uri)
    elif data_uri.lower().endswith(".csv"):
        sources = _from_csv(data_uri)
    else:
        raise DataError(f"{data_uri}: expected a folder of class folders or a .csv of path,label")
    if not sources:
        raise DataError(f"{data_uri}: no labelled images found")
    return sources


def check_classes(data_uri: str, sources: list[Source], min_per_class: int) -> Counter:
    """Fails early unless there are at least two classes, each with enough images."""
    counts = Counter(s.label for s in sources)
    if len(counts) < 2:
        names = ", ".join(counts) or "none"
        raise DataError(f"{data_uri}: needs at least 2 classes to classify, found 1 ({names})")
    small = {label: n for label, n in sorted(counts.items()) if n < min_per_class}
    if small:
        raise DataError(
            f"{data_uri}: classes with fewer than {min_per_class} images "
            f"(ingest.min_images_per_class): {small}"
        )
    return counts


def _from_folders(root: str) -> list[Source]:
    sources = []
    for entry in storage.listdir(root):
        label = posixpath.basename(entry.rstrip("/"))
        if label.startswith(".") or not storage.isdir(entry):
            continue
        prefix = entry.rstrip("/") + "/"
        for uri in storage.walk_files(entry):
            if not posixpath.basename(uri).startswith("."):
                folder = posixpath.dirname(uri[len(prefix) :]) if uri.startswith(prefix) else ""
                attributes = ((FOLDER_ATTRIBUTE, folder),) if folder else ()
                sources.append(Source(uri, label, attributes))
    return sources


def _from_csv(csv_uri: str) -> list[Source]:
    base = posixpath.dirname(csv_uri)
    reader = csv.reader(io.StringIO(storage.read_text(csv_uri)))
    sources = []
    extra: list[str] = []  # the header's attribute columns
    for line, row in enumerate(reader, start=1):
        if not row or not "".join(row).strip():
            continue
        if (
            line == 1
            and len(row) >= 2
            and [c.strip().lower() for c in row[:2]] == ["path", "label"]
        ):
            extra = _attribute_columns(csv_uri, [c.strip() for c in row[2:]])
            continue
        if len(row) != 2 + len(extra):
            expected = ",".join(["path", "label", *extra])
            hint = "" if extra else " (extra columns need a header path,label,...)"
            raise DataError(
                f"{csv_uri}:{line}: expected {2 + len(extra)} columns {expected}, "
                f"got {len(row)}{hint}"
            )
        path, label = row[0].strip(), row[1].strip()
        if not path or not label:
            raise DataError(f"{csv_uri}:{line}: empty path or label")
        if "://" not in path and not path.startswith("/"):
            path = posixpath.join(base, path)
        attributes = tuple(zip(extra, (v.strip() for v in row[2:]), strict=True))
        sources.append(Source(path, label, attributes))
    return sources


def _attribute_columns(csv_uri: str, names: list[str]) -> list[str]:
    """A CSV header's extra column names, checked: named, unique, not a reserved name."""
    for name in names:
        if not _ATTRIBUTE_NAME.match(name):
            raise DataError(
                f"{csv_uri}:1: column name {name!r} must start with a letter and hold only "
                "letters, digits and _"
            )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(f"{csv_uri}:1: columns {repeated} appear more than once")
    return names


def list_images(data: str) -> list[str]:
    """Unlabelled images to score: every file under a folder or prefix, or a CSV's paths.

    A CSV's first column is the path (a header ``path`` is skipped; other columns are
    ignored); relative paths are relative to the CSV's folder. Hidden files are skipped.

    Raises:
        DataError: the input does not exist or holds no files.
    """
    if data.lower().endswith(".csv"):
        if not storage.exists(data):
            raise DataError(f"{data}: no such CSV file")
        paths = _csv_paths(data)
    elif storage.isdir(data):
        paths = [
            uri for uri in storage.walk_files(data) if not posixpath.basename(uri).startswith(".")
        ]
    else:
        raise DataError(f"{data}: no such folder, prefix or CSV file")
    if not paths:
        raise DataError(f"{data}: no files to score")
    return sorted(paths)


def _csv_paths(csv_uri: str) -> list[str]:
    base = posixpath.dirname(csv_uri)
    paths = []
    for line, row in enumerate(csv.reader(io.StringIO(storage.read_text(csv_uri))), start=1):
        path = row[0].strip() if row else ""
        if not path or (line == 1 and path.lower() == "path"):
            continue
        paths.append(path if "://" in path or path.startswith("/") else posixpath.join(base, path))
    return paths
