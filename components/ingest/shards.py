"""TFRecord shards of a target size, written without grouping.

Beam's file sinks with a fixed shard count group every record by shard (a shuffle of
the whole dataset, held in memory by the local runner). Here each bundle streams its
records into files that roll over at a size limit, and reports the files it completed;
only files reported by committed bundles are renamed into place
(``data-00000-of-00004.tfrecord.gz``), so a retried bundle cannot duplicate records.

Each file is one gzip stream, compressed by its writer. Shards were once a
concatenation of one gzip member per record, compressed by whichever thread built it:
valid gzip (RFC 1952), and Python's ``gzip`` reads every record, but TensorFlow 2.21's
GZIP reader (``tf.data.TFRecordDataset``, ``ZlibInputStream``) silently stops at a
member whose 8-byte trailer straddles its 256 KiB input buffer. Where the boundaries
fall depends on every record's size and their order, so it dropped records now and
then: 56 of a 145-image test split when the paths were long enough (and, as thread
order moves the boundaries, likely the "1 run in 7" loss once blamed on Beam's
multi-threaded runner, which 34 runs here did not reproduce either way).
``tests/test_ingest_depth.py`` keeps both the reader's behaviour and the fix checked.
At ``ingest.gzip_level`` 0 (stored blocks, the default) compressing in the writer costs
a copy and a CRC.
"""

from __future__ import annotations

import posixpath
import struct
import uuid
import zlib

import apache_beam as beam
import google_crc32c
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from visionpipe import faults, storage
from visionpipe import features as F
from visionpipe.tfrecord import GZIP_WBITS

PARTS_DIR = ".parts"


def _masked_crc(data: bytes) -> bytes:
    crc = google_crc32c.value(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def tfrecord(data: bytes) -> bytes:
    """One record in TFRecord framing: length, its CRC, the data, its CRC."""
    length = struct.pack("<Q", len(data))
    return length + _masked_crc(length) + data + _masked_crc(data)


class _GzipFile:
    """A file written as one gzip stream at ``level`` (0: stored blocks, a copy and a CRC)."""

    def __init__(self, handle, level: int) -> None:
        self._handle = handle
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, GZIP_WBITS)

    def write(self, data: bytes) -> None:
        self._handle.write(self._compressor.compress(data))

    def close(self) -> None:
        self._handle.write(self._compressor.flush())
        self._handle.close()


class RollingFileWriteFn(beam.DoFn):
    """Appends ``(group, bytes)`` to ``<root>/<group>/.parts/<random><suffix>`` files.

    One open file per group and bundle; a file rolls over once ``max_bytes`` were
    written to it. Ingest's groups are the splits (framed TFRecords, each file one gzip
    stream at ``gzip_level``) and the rejects (JSON lines; ``gzip_level`` None: plain).
    """

    def __init__(
        self,
        root: str,
        max_bytes: int,
        suffix: str = F.SHARD_SUFFIX,
        gzip_level: int | None = None,
    ) -> None:
        self._root = root
        self._max_bytes = max_bytes
        self._suffix = suffix
        self._gzip_level = gzip_level

    def start_bundle(self) -> None:
        """Each bundle writes files of its own."""
        self._open: dict[str, list] = {}  # split -> [file, bytes written]
        self._paths: list[str] = []

    def process(self, element: tuple[str, bytes]):
        """Appends one item, rolling its group's file at the size limit."""
        group, data = element
        current = self._open.get(group)
        if current is None or current[1] >= self._max_bytes:
            current = self._roll(group)
        current[0].write(data)
        current[1] += len(data)
        faults.point("ingest.record_written")  # a worker killed mid-job (tests)

    def _roll(self, group: str) -> list:
        self._close(group)
        path = posixpath.join(self._root, group, PARTS_DIR, f"{uuid.uuid4().hex}{self._suffix}")
        handle = FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED)
        if self._gzip_level is not None:
            handle = _GzipFile(handle, self._gzip_level)
        self._open[group] = [handle, 0]
        self._paths.append(path)
        return self._open[group]

    def _close(self, group: str) -> None:
        current = self._open.pop(group, None)
        if current is not None:
            current[0].close()

    def finish_bundle(self):
        """Closes the open files and reports every file this bundle completed."""
        for group in list(self._open):
            self._close(group)
        for path in self._paths:
            yield WindowedValue(path, MIN_TIMESTAMP, [GlobalWindow()])


def commit_shards(directory: str, completed: list[str]) -> int:
    """Renames the completed part files to ``data-i-of-n``; drops any others. Returns n."""
    ordered = sorted(completed)
    for index, path in enumerate(ordered):
        name = f"data-{index:05d}-of-{len(ordered):05d}{F.SHARD_SUFFIX}"
        storage.rename(path, posixpath.join(directory, name))
    storage.remove(posixpath.join(directory, PARTS_DIR))
    return len(ordered)


def concatenate_parts(directory: str, completed: list[str], destination: str) -> None:
    """Joins the completed part files into ``destination`` and removes ``directory``."""
    with FileSystems.create(destination, compression_type=CompressionTypes.UNCOMPRESSED) as out:
        for path in sorted(completed):
            out.write(storage.read_bytes(path))
    storage.remove(directory)
