"""The prediction log: compact records of what a model was given and answered.

``PredictionLog`` is what every prediction path appends to (``visionpipe predict``,
``predict-batch``, the MLflow Model behind ``mlflow models serve`` and
``predict-stream``); ``read_log`` is what ``visionpipe monitor`` reads back.

One record (a JSON line) per image: the time, the model's name, version and digest,
the source, the input's SHA-256, the predicted class and its confidence, the
embedding (``visionpipe.profile``), the image properties, the file when known, and
the image's bytes only when ``monitor.log_images`` is set.

Layout: ``<log_uri>/<model name>/<YYYYMMDD>/<UTC time>-<host>-<pid>-<n>.jsonl``. Each
writer buffers records and writes a whole file at a time (``flush_records`` records, or
every ``flush_seconds`` for a served model, and on close), first under a hidden name
then renamed, so readers never see half a file and any number of processes can write
to one log, on a local disk or in an object store, without locks: no two writers
share a file name. Above ``max_log_mb`` per model a writer removes that model's
oldest files. A sample of images (``sample_rate``) is chosen by content hash, so a
given image is always logged or never.
"""

from __future__ import annotations

import atexit
import base64
import datetime as dt
import itertools
import json
import logging
import os
import posixpath
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from visionpipe import storage
from visionpipe.profile import PIXEL_PROPERTIES, aspect
from visionpipe.sections import MonitorConfig

log = logging.getLogger(__name__)

SUFFIX = ".jsonl"
REQUIRED = ("time", "digest", "class", "confidence", "embedding")
_SEQUENCE = itertools.count(1)


def utc_now() -> str:
    """The time as records hold it: ISO 8601, UTC, microseconds."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def sampled(sha256: str, rate: float) -> bool:
    """Whether an image with this content hash is logged at ``rate``."""
    if rate >= 1.0:
        return True
    return int(sha256[:8], 16) < rate * 0x1_0000_0000


class PredictionLog:
    """Buffers records and writes them as whole files under one model's folder of the log."""

    def __init__(
        self,
        uri: str,
        identity: dict[str, str],
        source: str,
        config: MonitorConfig = MonitorConfig(),  # noqa: B008 - frozen
        background: bool = False,
    ) -> None:
        self.uri = uri.rstrip("/")
        self.identity = identity
        self.source = source
        self.config = config
        self.written = 0
        self.skipped = 0  # not in the sample
        self._buffer: list[str] = []
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()
        self._closed = threading.Event()
        self._thread = None
        if background:  # a served model: flushed on a clock, not only when full
            self._thread = threading.Thread(target=self._flush_on_clock, daemon=True)
            self._thread.start()
        atexit.register(self.close)

    @property
    def folder(self) -> str:
        """The folder of this model in the log."""
        return storage.join(self.uri, self.identity.get("name") or "model")

    def add_outputs(
        self,
        outputs: dict[str, Any],
        rows: list[int],
        hashes: list[str],
        files: list[str] | None = None,
        images: list[bytes] | None = None,
    ) -> None:
        """Records rows of one ``monitor``-signature call (numpy outputs).

        ``hashes[i]`` (and ``files[i]``, ``images[i]``) belong to output row ``rows[i]``.
        """
        now = utc_now()
        lines = []
        # Rounded once per call, as whole columns: per value in Python it was most of the
        # log's cost on predict-batch (a third of it at 3,000 images).
        confidence = _rounded(outputs["confidence"], 5)
        embedding = _rounded(outputs["embedding"], 4)
        pixels = {p: _rounded(outputs[p], 5) for p in PIXEL_PROPERTIES}
        for i, row in enumerate(rows):
            if not sampled(hashes[i], self.config.sample_rate):
                self.skipped += 1
                continue
            width, height = int(outputs["width"][row]), int(outputs["height"][row])
            record = {
                "time": now,
                "model": self.identity.get("name", ""),
                "version": self.identity.get("version", ""),
                "digest": self.identity.get("digest", ""),
                "source": self.source,
                "sha256": hashes[i],
                "class": outputs["class_name"][row].decode(),
                "confidence": confidence[row],
                "embedding": embedding[row],
                "format": outputs["format"][row].decode(),
                "width": width,
                "height": height,
                "aspect": round(aspect(width, height), 4),
                **{p: pixels[p][row] for p in PIXEL_PROPERTIES},
            }
            if files:
                record["file"] = files[i]
            if images and self.config.log_images:
                record["image"] = base64.b64encode(images[i]).decode()
            lines.append(json.dumps(record, separators=(",", ":")))
        with self._lock:
            self._buffer.extend(lines)
            full = len(self._buffer) >= self.config.flush_records
        if full:
            self.flush()

    def flush(self) -> None:
        """Writes the buffered records as one new file (nothing when the buffer is empty)."""
        with self._lock:
            lines, self._buffer = self._buffer, []
            self._last_flush = time.monotonic()
        for start in range(0, len(lines), self.config.flush_records):
            self._write(lines[start : start + self.config.flush_records])

    def close(self) -> None:
        """Writes what is buffered; later records are still accepted and written on flush."""
        self._closed.set()
        try:
            self.flush()
        except Exception as err:  # noqa: BLE001 - at exit: say it, never raise
            log.warning("prediction log %s: records not written: %s", self.folder, err)

    def _write(self, lines: list[str]) -> None:
        if not lines:
            return
        stamp = dt.datetime.now(dt.UTC)
        name = (
            f"{stamp:%Y%m%dT%H%M%S%f}-{socket.gethostname()}-{os.getpid()}-"
            f"{next(_SEQUENCE)}{SUFFIX}"
        )
        final = storage.join(self.folder, f"{stamp:%Y%m%d}", name)
        hidden = storage.join(self.folder, f"{stamp:%Y%m%d}", f".{name}.tmp")
        storage.write_bytes(hidden, ("\n".join(lines) + "\n").encode())
        storage.rename(hidden, final)
        self.written += len(lines)
        if self.config.max_log_mb:
            self._apply_cap()

    def _apply_cap(self) -> None:
        fs, path = storage.filesystem(self.folder)
        try:
            found = fs.find(path, detail=True)
        except FileNotFoundError:
            return
        files = sorted(
            (posixpath.basename(p), p, int(info.get("size") or 0))
            for p, info in found.items()
            if p.endswith(SUFFIX) and not posixpath.basename(p).startswith(".")
        )
        total = sum(size for _, _, size in files)
        cap = self.config.max_log_mb * 1024 * 1024
        for _, p, size in files[:-1]:  # never the file just written
            if total <= cap:
                break
            try:
                fs.rm(p)
            except FileNotFoundError:  # another writer removed it first
                pass
            total -= size
            log.info("prediction log: removed %s (over monitor.max_log_mb)", p)

    def _flush_on_clock(self) -> None:
        while not self._closed.wait(min(self.config.flush_seconds, 5.0)):
            if time.monotonic() - self._last_flush >= self.config.flush_seconds:
                try:
                    self.flush()
                except Exception as err:  # noqa: BLE001 - a served model goes on answering
                    log.warning("prediction log %s: cannot write: %s", self.folder, err)


@dataclass
class LogWindow:
    """The records of one model read from a log, and what was not used, counted."""

    records: list[dict[str, Any]] = field(default_factory=list)
    files: int = 0
    lines: int = 0
    unreadable: int = 0  # lines that do not parse or lack a field
    unreadable_examples: list[str] = field(default_factory=list)
    other_models: Counter = field(default_factory=Counter)  # (name, version) -> records
    before_since: int = 0

    def describe(self) -> str:
        """``12,000 records from 3 files; 2 unreadable lines; ...``."""
        parts = [f"{len(self.records)} records from {self.files} files"]
        if self.unreadable:
            parts.append(f"{self.unreadable} unreadable lines (e.g. {self.unreadable_examples[0]})")
        if self.other_models:
            shown = ", ".join(
                f"{n} v{v or '?'}: {c}" for (n, v), c in sorted(self.other_models.items())
            )
            parts.append(f"{sum(self.other_models.values())} records of other models ({shown})")
        if self.before_since:
            parts.append(f"{self.before_since} before --since")
        return "; ".join(parts)


def read_log(uri: str, digest: str, since: dt.datetime | None = None) -> LogWindow:
    """Every record under ``uri`` of the model with ``digest``, oldest first.

    Lines that do not parse, or lack a field monitoring needs, are counted (with an
    example), as are records of other models or versions and records before ``since``.

    Raises:
        FileNotFoundError: nothing is at ``uri``.
    """
    if not storage.exists(uri):
        raise FileNotFoundError(f"{uri}: no prediction log there")
    window = LogWindow()
    files = [
        f
        for f in (storage.walk_files(uri) if storage.isdir(uri) else [uri])
        if f.endswith(SUFFIX) and not posixpath.basename(f).startswith(".")
    ]
    window.files = len(files)
    for file in files:
        for number, line in enumerate(storage.read_text(file).splitlines(), start=1):
            if not line.strip():
                continue
            window.lines += 1
            record = _parse(line)
            if record is None:
                window.unreadable += 1
                if len(window.unreadable_examples) < 3:
                    window.unreadable_examples.append(f"{file}:{number}")
                continue
            if record["digest"] != digest:
                window.other_models[(record.get("model", ""), record.get("version", ""))] += 1
                continue
            if since is not None and _time(record["time"]) < since:
                window.before_since += 1
                continue
            window.records.append(record)
    window.records.sort(key=lambda r: r["time"])
    return window


def _parse(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
        if not isinstance(record, dict) or any(k not in record for k in REQUIRED):
            return None
        _time(record["time"])
        float(record["confidence"])
        np.asarray(record["embedding"], dtype=float)
    except (ValueError, TypeError):
        return None
    return record


def _time(text: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def parse_since(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """``--since``: an ISO time (UTC unless it says), or a span back from now (``24h``).

    Raises:
        ValueError: neither form.
    """
    now = now or dt.datetime.now(dt.UTC)
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text and text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
        return now - dt.timedelta(seconds=float(text[:-1]) * units[text[-1]])
    try:
        return _time(text)
    except ValueError:
        raise ValueError(
            f"--since {text!r}: expected an ISO time (2026-12-01T09:00) or a span such as "
            "90m, 24h or 7d"
        ) from None


def open_log(config, model_dir: str, source: str, background: bool = False):
    """The prediction log of ``model_dir`` per ``config.monitor``; None when logging is off.

    Args:
        config: the whole ``Config`` (its ``monitor`` section, and the home's default log).
        model_dir: the SavedModel being served (its push record names it).
        source: what predicts (``predict``, ``predict-batch``, ``pyfunc``, ``stream``).
        background: write on a clock too (a long-running server).
    """
    from visionpipe.home import Home
    from visionpipe.layout import model_identity

    if not config.monitor.log:
        return None
    uri = Home.resolve().prediction_log_for(config)
    return PredictionLog(uri, model_identity(model_dir), source, config.monitor, background)


def _rounded(column: Any, decimals: int) -> list:
    """A numeric output column as Python floats rounded to ``decimals`` (rows stay rows)."""
    return np.round(np.asarray(column, dtype=np.float64), decimals).tolist()
