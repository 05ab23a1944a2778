"""TFRecord shards of a target size, written without grouping the data.

Beam's file sinks with a fixed shard count group every record by shard (a shuffle of
the whole dataset, held in memory by the local runner). Here each bundle streams its
records into gzipped files that roll over at a size limit, and reports the files it
completed; only files reported by committed bundles are renamed into place
(``data-00000-of-00004.tfrecord.gz``), so a retried bundle cannot duplicate records.
"""

from __future__ import annotations

import gzip
import posixpath
import struct
import uuid

import apache_beam as beam
import google_crc32c
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from visionpipe import features as F
from visionpipe import storage

PARTS_DIR = ".parts"
GZIP_LEVEL = 1


def _masked_crc(data: bytes) -> bytes:
    crc = google_crc32c.value(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def tfrecord(data: bytes) -> bytes:
    """One record in TFRecord framing: length, its CRC, the data, its CRC."""
    length = struct.pack("<Q", len(data))
    return length + _masked_crc(length) + data + _masked_crc(data)


class RollingShardWriteFn(beam.DoFn):
    """Writes records into ``<directory>/.parts/<random>.tfrecord.gz`` files of ~max_bytes."""

    def __init__(self, directory: str, max_bytes: int) -> None:
        self._directory = directory
        self._max_bytes = max_bytes

    def start_bundle(self) -> None:
        """Each bundle writes files of its own."""
        self._file = None
        self._size = 0
        self._paths: list[str] = []

    def process(self, record: bytes):
        """Appends one serialised example, rolling to a new file at the size limit."""
        if self._file is None or self._size >= self._max_bytes:
            self._roll()
        self._file.write(tfrecord(record))
        self._size += len(record)

    def _roll(self) -> None:
        self._close()
        path = posixpath.join(self._directory, PARTS_DIR, f"{uuid.uuid4().hex}{F.SHARD_SUFFIX}")
        self._raw = FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED)
        # Level 1: records are mostly JPEG/PNG bytes, which do not compress further;
        # Beam's own GZIP sink uses level 9 and spent a fifth of ingest's time here.
        self._file = gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=GZIP_LEVEL)
        self._paths.append(path)
        self._size = 0

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._raw.close()
            self._file = None

    def finish_bundle(self):
        """Closes the open file and reports every file this bundle completed."""
        self._close()
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
