"""Digests of what a step reads, for the step cache's key (``pipelines.step_cache``).

A key must change whenever the step's output could: so the digests are of content,
not of paths. A new, removed, relabelled or edited image changes ``sources_digest``; a
changed shard, statistic or graph file changes ``tree_digest``. Local files are hashed
(SHA-256, read in 1 MiB blocks); an object in a store is digested by the store's own
checksum (fsspec's ``checksum``: GCS's and S3's ETag/MD5 where the store keeps one),
which changes when its content does, without reading it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from visionpipe import storage

_BLOCK = 1 << 20


def file_digest(uri: str) -> str:
    """The SHA-256 of a local file's bytes; a stored object's own checksum."""
    if "://" in uri and not uri.startswith("file://"):
        fs, path = storage.filesystem(uri)
        return f"{fs.protocol}:{fs.checksum(path)}"
    h = hashlib.sha256()
    with open(uri.removeprefix("file://"), "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def _digests(uris: Sequence[str]) -> list[str]:
    """``file_digest`` of each, in order (threads: hashing and reading release the GIL)."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(file_digest, uris))


def sources_digest(data: str | Sequence[str]) -> str:
    """One digest of a dataset: every image's label, name and content.

    Raises:
        DataError: ``data`` lists no images (``visionpipe.sources.list_sources``).
    """
    from visionpipe.sources import list_sources

    sources = list_sources(data)
    h = hashlib.sha256()
    for source, digest in zip(sources, _digests([s.uri for s in sources]), strict=True):
        h.update(f"{source.label}\0{source.uri}\0{digest}\n".encode())
    return h.hexdigest()


def tree_digest(uri: str) -> str:
    """One digest of a folder: every file's path below it and content."""
    root = uri.rstrip("/")
    files = storage.walk_files(root)
    h = hashlib.sha256()
    for file, digest in zip(files, _digests(files), strict=True):
        h.update(f"{file[len(root) :]}\0{digest}\n".encode())
    return h.hexdigest()
