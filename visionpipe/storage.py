"""One filesystem layer for local paths and object stores (``gs://``, ``s3://``, ...).

Built on fsspec so that every URI scheme fsspec knows behaves the same; tests use
local paths and fsspec's in-memory filesystem (``memory://``).
"""

from __future__ import annotations

import json
import os
import posixpath
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from visionpipe.errors import UserError


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``uri`` and the path within it."""
    return url_to_fs(uri)


def _with_protocol(fs: fsspec.AbstractFileSystem, path: str, like: str) -> str:
    if "://" not in like:
        return path
    return fs.unstrip_protocol(path)


def join(base: str, *parts: str) -> str:
    """Joins path parts with '/', keeping a URI's scheme."""
    return posixpath.join(base, *parts)


def absolute(uri: str) -> str:
    """A local path made absolute (another process may run elsewhere); a URI as it is."""
    return uri if "://" in uri else os.path.abspath(uri)


def exists(uri: str) -> bool:
    """Whether a file or directory exists at ``uri``."""
    fs, path = filesystem(uri)
    return fs.exists(path)


def isdir(uri: str) -> bool:
    """Whether ``uri`` is a directory."""
    fs, path = filesystem(uri)
    return fs.isdir(path)


def read_bytes(uri: str) -> bytes:
    """The whole content of the file at ``uri``."""
    if "://" not in uri and "::" not in uri:
        # A plain local path: ingest reads every image twice, and fsspec's URI parsing
        # cost as much per image as reading a 20 KB file.
        with open(uri, "rb") as f:
            return f.read()
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as f:
        return f.read()


def read_text(uri: str) -> str:
    """The content of a UTF-8 text file."""
    return read_bytes(uri).decode("utf-8")


def write_bytes(uri: str, data: bytes) -> None:
    """Writes ``data`` to ``uri``, creating parent directories."""
    fs, path = filesystem(uri)
    parent = posixpath.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "wb") as f:
        f.write(data)


def json_bytes(obj: Any) -> bytes:
    """``obj`` as the project's JSON files hold it: indented, keys sorted."""
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def write_json(uri: str, obj: Any) -> None:
    """Writes ``obj`` as indented JSON."""
    write_bytes(uri, json_bytes(obj))


def read_json(uri: str) -> Any:
    """Reads a JSON file."""
    return json.loads(read_text(uri))


def listdir(uri: str) -> list[str]:
    """Full URIs of the entries directly under ``uri``, sorted."""
    fs, path = filesystem(uri)
    return sorted(_with_protocol(fs, p, uri) for p in fs.ls(path, detail=False))


def walk_files(uri: str) -> list[str]:
    """Full URIs of every file below ``uri`` (recursively), sorted."""
    fs, path = filesystem(uri)
    return sorted(_with_protocol(fs, p, uri) for p in fs.find(path))


def download(uri: str, local_dir: str) -> None:
    """Copies the folder at ``uri`` (any filesystem) to the local folder ``local_dir``."""
    root = uri.rstrip("/")
    for file in walk_files(root):
        target = os.path.join(local_dir, *file[len(root) :].lstrip("/").split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(read_bytes(file))


def glob(pattern: str) -> list[str]:
    """Full URIs matching a glob pattern, sorted."""
    fs, path = filesystem(pattern)
    return sorted(_with_protocol(fs, p, pattern) for p in fs.glob(path))


def makedirs(uri: str) -> None:
    """Creates a directory and its parents."""
    fs, path = filesystem(uri)
    fs.makedirs(path, exist_ok=True)


def remove(uri: str) -> None:
    """Deletes a file or a directory tree, if present."""
    fs, path = filesystem(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def rename(src: str, dst: str) -> None:
    """Moves ``src`` to ``dst`` (atomic on local filesystems)."""
    fs, src_path = filesystem(src)
    _, dst_path = filesystem(dst)
    fs.mv(src_path, dst_path, recursive=True)


def copy_file(src: str, dst: str) -> None:
    """Copies one file between any two filesystems."""
    write_bytes(dst, read_bytes(src))


def copy_tree(src: str, dst: str) -> None:
    """Copies a file or a folder between any two filesystems, replacing ``dst``."""
    remove(dst)
    if not isdir(src):
        copy_file(src, dst)
        return
    root = src.rstrip("/")
    for file in walk_files(root):
        copy_file(file, dst.rstrip("/") + file[len(root) :])


class OutputFolderError(UserError, FileExistsError):
    """An output folder that would overwrite something."""


def check_output_folder(uri: str, overwrite: bool, option: str = "--out") -> None:
    """Refuses an output folder that exists and is not empty, unless ``overwrite``.

    Raises:
        OutputFolderError: ``uri`` is a file, or a non-empty folder without ``overwrite``.
    """
    if exists(uri) and not isdir(uri):
        raise OutputFolderError(f"{option} {uri}: exists and is not a folder")
    if isdir(uri) and listdir(uri) and not overwrite:
        raise OutputFolderError(
            f"{option} {uri}: exists and is not empty (choose another, or pass --overwrite)"
        )
