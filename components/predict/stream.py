"""Streaming prediction: new image files in a folder or prefix, scored as they arrive.

A polling loop around in-process micro-batches, not a Beam job. Beam 2.77's local
runners cannot run an unbounded file source: ``fileio.MatchContinuously`` polls once
and ends on the FnApiRunner with its default de-duplication, re-emits every file on
every poll without it (and ``run()`` then blocks to the stop time, with no cancel),
and the DirectRunner refuses it. A short Beam job per micro-batch would pay seconds
of start-up for each; here a new file is scored within a poll interval.

Each poll lists the watched folder, takes files that have not changed for
``settle_seconds`` (a file still being copied in is left for the next poll), reads
each new file once, and skips content already scored (by SHA-256, remembered in the
output folder itself, so a restart neither repeats nor loses anything). A batch's
outputs are written whole or not at all (hidden name, then renamed):
``predictions-NNNNNN.jsonl`` and ``rejects-NNNNNN.jsonl`` (unreadable, undecodable,
too large, or a duplicate of content already scored, each with its reason). Ctrl-C
(or SIGTERM) stops between two writes: a batch in progress is dropped whole and
scored again on the next start.
"""

from __future__ import annotations

import json
import logging
import posixpath
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from visionpipe import storage
from visionpipe.serving import Classifier, Prediction, content_hash, read_file

log = logging.getLogger(__name__)

PREDICTIONS = "predictions"
REJECTS = "rejects"


@dataclass
class StreamState:
    """What the stream has done so far (this process and, by the output folder, before)."""

    batches: int = 0
    predicted: int = 0
    rejected: int = 0
    duplicates: int = 0
    resumed_hashes: int = 0  # content already scored when this process started

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


class FileStream:
    """Scores new files under ``watch`` into ``out`` with ``classifier``, poll by poll."""

    def __init__(
        self,
        classifier: Classifier,
        labels: list[str],
        watch: str,
        out: str,
        batch_size: int = 64,
        top_k: int = 3,
        settle_seconds: float = 0.5,
        sink=None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.classifier, self.labels = classifier, labels
        self.watch, self.out = watch.rstrip("/"), out.rstrip("/")
        self.batch_size, self.top_k, self.settle = batch_size, top_k, settle_seconds
        self.sink, self.clock = sink, clock
        self.state = StreamState()
        self._known: dict[str, tuple] = {}  # path -> (size, mtime) when last looked at
        self._seen: set[str] = set()  # scored content (hashes) and unreadable paths
        self._recorded: set[tuple[str, str]] = set()  # (path, hash) of every row written
        self._load_outputs()

    def _load_outputs(self) -> None:
        storage.makedirs(self.out)
        for uri in storage.listdir(self.out):
            name = posixpath.basename(uri)
            if name.startswith(".") and name.endswith(".tmp"):
                storage.remove(uri)  # a batch that was stopped before its rename
                continue
            if not name.endswith(".jsonl"):
                continue
            number = name.rsplit("-", 1)[-1].split(".")[0]
            if number.isdigit():
                self.state.batches = max(self.state.batches, int(number))
            for line in storage.read_text(uri).splitlines():
                if line.strip():
                    self._remember([json.loads(line)])
        self.state.resumed_hashes = len(self._seen)

    def poll(self) -> int:
        """One look at the folder: scores what is new and settled; returns files handled."""
        fresh = self._new_files()
        done = 0
        for start in range(0, len(fresh), self.batch_size):
            done += self._score(fresh[start : start + self.batch_size])
        return done

    def _new_files(self) -> list[tuple[str, bytes, str, str]]:
        fs, root = storage.filesystem(self.watch)
        try:
            found = fs.find(root, detail=True)
        except FileNotFoundError:
            return []
        now = self.clock()
        fresh = []
        for path, info in sorted(found.items()):
            name = posixpath.basename(path)
            if name.startswith("."):
                continue
            mtime = _mtime(info)
            stamp = (info.get("size"), mtime)
            if self._known.get(path) == stamp:
                continue  # looked at before, unchanged
            if mtime and now - mtime < self.settle:
                continue  # may still be being written: next poll
            self._known[path] = stamp
            uri = storage.join(self.watch, path[len(root) :].lstrip("/"))
            data, error = read_file(uri)
            fresh.append((uri, data, error, content_hash(data) if not error else f"path:{uri}"))
        return fresh

    def _score(self, batch: list[tuple[str, bytes, str, str]]) -> int:
        """Scores one batch of ``(uri, bytes, read error, key)``, each file read once."""
        rows, rejects, todo, keys = [], [], [], set()
        for uri, data, error, key in batch:
            if error:  # unreadable: keyed by its path
                if key not in self._seen:
                    rejects.append({"path": uri, "reason": error})
                continue
            if (uri, key) in self._recorded:
                continue  # this very file was written out before (a restart)
            if key in self._seen or key in keys:
                rejects.append(
                    {"path": uri, "sha256": key, "reason": "duplicate of content already scored"}
                )
                continue
            todo.append((uri, data, key))
            keys.add(key)
        found = self.classifier.predict_contents(
            [(uri, data, "") for uri, data, _ in todo], self.batch_size, sink=self.sink
        )
        for (uri, _, key), p in zip(todo, found, strict=True):
            if p.error:
                rejects.append({"path": uri, "sha256": key, "reason": p.error})
            else:
                rows.append(_row(p, key, self.labels, self.top_k))
        if not rows and not rejects:
            return 0
        number = self.state.batches + 1
        self._write(f"{REJECTS}-{number:06d}.jsonl", rejects)
        self._write(f"{PREDICTIONS}-{number:06d}.jsonl", rows)
        self.state.batches = number
        self.state.predicted += len(rows)
        duplicates = sum(1 for r in rejects if r["reason"].startswith("duplicate"))
        self.state.duplicates += duplicates
        self.state.rejected += len(rejects) - duplicates
        self._remember(rows + rejects)
        if self.sink is not None:
            self.sink.flush()
        log.debug(
            "predict-stream: batch %d: %d scored, %d rejected", number, len(rows), len(rejects)
        )
        return len(rows) + len(rejects)

    def _remember(self, rows: list[dict]) -> None:
        for row in rows:
            key = row.get("sha256") or f"path:{row['path']}"
            self._seen.add(key)
            self._recorded.add((row["path"], key))

    def _write(self, name: str, rows: list[dict]) -> None:
        if not rows:
            return
        hidden = storage.join(self.out, f".{name}.tmp")
        storage.write_bytes(hidden, "".join(json.dumps(r) + "\n" for r in rows).encode())
        storage.rename(hidden, storage.join(self.out, name))

    def run(
        self,
        poll_seconds: float = 1.0,
        idle_stop: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
        on_batch: Callable[[StreamState], None] | None = None,
    ) -> StreamState:
        """Polls until interrupted (Ctrl-C, SIGTERM) or ``idle_stop`` seconds without a new file."""
        idle_since = time.monotonic()
        try:
            while True:
                if self.poll():
                    idle_since = time.monotonic()
                    if on_batch is not None:
                        on_batch(self.state)
                elif idle_stop and time.monotonic() - idle_since >= idle_stop:
                    break
                sleep(poll_seconds)
        except KeyboardInterrupt:
            log.info("predict-stream: stopped; nothing half-written")
        return self.state


def _row(p: Prediction, sha256: str, labels: list[str], top_k: int) -> dict:
    """A row as ``predict-batch`` writes it, with the content hash and the time."""
    order = sorted(range(len(p.probabilities)), key=lambda i: -p.probabilities[i])[:top_k]
    return {
        "path": p.file,
        "sha256": sha256,
        "class": p.class_name,
        "class_id": p.class_id,
        "probability": p.probability,
        "top_k": [{"class": labels[i], "probability": p.probabilities[i]} for i in order],
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _mtime(info: dict) -> float:
    value = info.get("mtime") or info.get("LastModified") or info.get("updated")
    if value is None:
        return 0.0
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0
