"""The step cache: a deterministic step's outputs, reused when what they depend on is unchanged.

kfp's cache cannot be used for this (kfp.local's nor a cluster's): its key hashes every
argument, the ``mlflow_run_id`` each run passes included, so it never hits; a custom
``cache_key`` is a string fixed at compile time; the ``data`` argument is a path, so new
images in the same folder would be served stale; and a hit skips the step's body, so
the pipeline run would lose what the step records on it (ingest's
``data_fingerprint``, which the data check, ``compare`` and the scheduler read).

This cache is keyed on what the output depends on (``key``): the step's name, the
project's version, a digest of the code of the step's package and of the core, and the
step's own ``Step.cache_key``: content digests of its inputs and its settings
(``visionpipe.content``). An entry (``<cache_root>/<step>/<key>/``) holds

- ``outputs/<port>/``: a copy of each output artifact;
- ``result.pickle``: the step's return value (what ``publish`` and the console read);
- ``calls.json`` and ``files/``: every call the step made on its run and on the
  pipeline run (metrics, tags, params, dicts, the dataset, files logged, and
  ``pipeline.record``), replayed on a hit;
- ``entry.json``, written last: the key's material and the run that made the entry. An
  entry without it (a writer died) is not an entry.

On a hit the step's run is still created, with the replayed record and the tags
``visionpipe.cache=hit``, ``visionpipe.cache_key`` and ``visionpipe.cached_from`` (the
step run that computed it); a miss is tagged ``visionpipe.cache=miss`` with the key. A
cache that cannot be written is a warning, never a failed step. ``pipeline.cache:
false`` (``visionpipe run --no-cache``) turns it off; entries are not pruned: delete
``<home>/cache`` (or ``pipeline.cache_root``) to reclaim the space.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visionpipe import storage
from visionpipe.config import Config
from visionpipe.home import Home
from visionpipe.step import Step
from visionpipe.tracker import PipelineRun, Tracker

log = logging.getLogger(__name__)

CACHE_TAG = "visionpipe.cache"  # hit | miss
CACHE_KEY_TAG = "visionpipe.cache_key"
CACHED_FROM_TAG = "visionpipe.cached_from"  # the step run whose outputs a hit reused
_ENTRY = "entry.json"


def code_digest(step: Step) -> str:
    """A digest of the Python files of the step's package and of the core (``visionpipe``)."""
    import visionpipe

    package = Path(sys.modules[step.run.__module__].__file__).parent
    h = hashlib.sha256()
    for folder in (package, Path(visionpipe.__file__).parent):
        for file in sorted(folder.glob("*.py")):
            h.update(f"{folder.name}/{file.name}\0".encode() + file.read_bytes())
    return h.hexdigest()


def key(step: Step, config: Config, ports: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The step's cache key, and the material it is the SHA-256 of."""
    from components.data_check.decide import project_version

    material = {
        "step": step.name,
        "version": project_version(),
        "code": code_digest(step),
        **step.cache_key(config, ports),
    }
    text = json.dumps(material, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest(), material


class _Recorder(Tracker):
    """A tracker that passes every call on and keeps it, to replay on a cache hit."""

    def __init__(self, inner: Tracker, target: str, calls: list, files: str) -> None:
        self.inner, self.target, self.calls, self.files = inner, target, calls, files
        self.run_id = inner.run_id

    def _keep(self, method: str, **arguments: Any) -> None:
        self.calls.append({"target": self.target, "method": method, "arguments": arguments})

    def log_params(self, params):
        self._keep("log_params", params=dict(params))
        self.inner.log_params(params)

    def log_metrics(self, metrics, step=None):
        self._keep("log_metrics", metrics=dict(metrics), step=step)
        self.inner.log_metrics(metrics, step)

    def set_tags(self, tags):
        self._keep("set_tags", tags={k: str(v) for k, v in tags.items()})
        self.inner.set_tags(tags)

    def log_dict(self, data, path):
        self._keep("log_dict", data=data, path=path)
        self.inner.log_dict(data, path)

    def log_text(self, text, path):
        self._keep("log_text", text=text, path=path)
        self.inner.log_text(text, path)

    def log_dataset(self, uri, digest, context, profile=None):
        shown = dict(profile) if profile else None
        self._keep("log_dataset", uri=uri, digest=digest, context=context, profile=shown)
        self.inner.log_dataset(uri, digest, context, profile)

    def log_artifact(self, local_path, path=None):
        kept = str(len(self.calls))
        target = os.path.join(self.files, kept, os.path.basename(local_path.rstrip("/")))
        if os.path.isdir(local_path):
            shutil.copytree(local_path, target)
        else:
            os.makedirs(os.path.dirname(target))
            shutil.copy2(local_path, target)
        self._keep("log_artifact", local_path=os.path.relpath(target, self.files), path=path)
        self.inner.log_artifact(local_path, path)

    def child(self, name, tags=None):
        return self.inner.child(name, tags)

    def finish(self, ok=True, error=""):
        self.inner.finish(ok, error)


class _RecordingPipeline(PipelineRun):
    """The pipeline run, with ``record`` and its tracker's calls kept for replay."""

    def __init__(self, inner: PipelineRun, calls: list, files: str) -> None:
        self.inner, self.calls = inner, calls
        self.run_id = inner.run_id
        self._tracker = _Recorder(inner.tracker, "pipeline.tracker", calls, files)

    @property
    def tracker(self) -> Tracker:
        return self._tracker

    def record(self, **outcome):
        self.calls.append({"target": "pipeline", "method": "record", "arguments": outcome})
        self.inner.record(**outcome)

    def read(self):
        return self.inner.read()

    def last_successful(self):
        return self.inner.last_successful()

    def latest_monitor(self, model_name):
        return self.inner.latest_monitor(model_name)


def relocate(value: Any, moves: Mapping[str, str]) -> Any:
    """``value`` with every path under an old output path moved under its new one.

    A kept result and the calls name where the outputs were written when they were
    computed (``IngestResult.output_uri``); a hit's outputs are where this run put them.
    """
    import dataclasses

    if isinstance(value, str):
        for old, new in moves.items():
            if value == old or value.startswith(old.rstrip("/") + "/"):
                return new + value[len(old) :]
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {
            f.name: relocate(getattr(value, f.name), moves)
            for f in dataclasses.fields(value)
            if f.init
        }
        return dataclasses.replace(value, **changes)
    if isinstance(value, dict):
        return {k: relocate(v, moves) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(relocate(v, moves) for v in value)
    return value


@dataclass(frozen=True)
class Entry:
    """One kept step outcome (see the module's docstring)."""

    uri: str
    meta: dict[str, Any]

    def restore(self, outputs: Mapping[str, str]) -> None:
        """Copies the kept outputs to the ports' paths."""
        for port, path in outputs.items():
            storage.copy_tree(storage.join(self.uri, "outputs", port), path)

    def moves(self, outputs: Mapping[str, str]) -> dict[str, str]:
        """Where each output was when the entry was made -> where this run wants it."""
        kept = self.meta.get("outputs", {})
        return {kept[port]: path for port, path in outputs.items() if port in kept}

    def result(self, outputs: Mapping[str, str]) -> Any:
        """The step's return value, its paths those of ``outputs``."""
        data = storage.read_bytes(storage.join(self.uri, "result.pickle"))
        return relocate(pickle.loads(data), self.moves(outputs))  # noqa: S301 - our own entry

    def replay(self, tracker: Tracker, pipeline: PipelineRun, outputs: Mapping[str, str]) -> None:
        """Makes the calls the step made on its run and on the pipeline run."""
        calls = relocate(
            storage.read_json(storage.join(self.uri, "calls.json")), self.moves(outputs)
        )
        with tempfile.TemporaryDirectory(prefix="visionpipe-cache-") as tmp:
            for call in calls:
                arguments = dict(call["arguments"])
                if call["method"] == "record":
                    pipeline.record(**arguments)
                    continue
                target = tracker if call["target"] == "step" else pipeline.tracker
                if call["method"] == "log_artifact":
                    kept = arguments["local_path"]
                    local = os.path.join(tmp, kept)
                    storage.copy_tree(storage.join(self.uri, "files", kept), local)
                    arguments["local_path"] = local
                getattr(target, call["method"])(**arguments)


@dataclass
class StepCache:
    """The cache under ``root`` (a folder or an object-store prefix)."""

    root: str
    hit: bool = False  # whether the last ``run`` was served from the cache

    @classmethod
    def open(cls, config: Config) -> StepCache:
        """The configured cache: ``pipeline.cache_root``, or ``<home>/cache``."""
        return cls(Home.resolve().step_cache_for(config))

    def get(self, step: str, cache_key: str) -> Entry | None:
        """The entry of ``cache_key``, or None."""
        uri = storage.join(self.root, step, cache_key)
        meta_uri = storage.join(uri, _ENTRY)
        if not storage.exists(meta_uri):
            return None
        return Entry(uri, storage.read_json(meta_uri))

    def run(
        self,
        step: Step,
        config: Config,
        ports: Mapping[str, Any],
        tracker: Tracker,
        pipeline: PipelineRun,
        call: Callable[[Tracker, PipelineRun], Any],
    ) -> Any:
        """The step's result: from the cache, or from ``call(tracker, pipeline)``, then kept."""
        cache_key, material = key(step, config, ports)
        outputs = {p: ports[p] for p in step.outputs if p in ports}
        entry = self.get(step.name, cache_key)
        self.hit = entry is not None
        if entry is not None:
            log.info(
                "step cache: %s hit %s (from run %s)",
                step.name,
                cache_key[:12],
                entry.meta["run_id"],
            )
            entry.restore(outputs)
            result = entry.result(outputs)
            entry.replay(tracker, pipeline, outputs)
            tracker.set_tags(
                {CACHE_TAG: "hit", CACHE_KEY_TAG: cache_key, CACHED_FROM_TAG: entry.meta["run_id"]}
            )
            return result
        calls: list[dict[str, Any]] = []
        with tempfile.TemporaryDirectory(prefix="visionpipe-cache-") as files:
            result = call(
                _Recorder(tracker, "step", calls, files),
                _RecordingPipeline(pipeline, calls, files),
            )
            tracker.set_tags({CACHE_TAG: "miss", CACHE_KEY_TAG: cache_key})
            try:
                self._put(step.name, cache_key, material, outputs, result, calls, files, tracker)
            except Exception as err:  # noqa: BLE001 - a cache is an optimisation, never a failure
                log.warning("step cache: %s's outputs were not kept: %s", step.name, err)
        return result

    def _put(self, step, cache_key, material, outputs, result, calls, files, tracker) -> None:
        uri = storage.join(self.root, step, cache_key)
        storage.remove(uri)  # what a writer that died left
        for port, path in outputs.items():
            storage.copy_tree(path, storage.join(uri, "outputs", port))
        for file in Path(files).rglob("*"):
            if file.is_file():
                relative = file.relative_to(files).as_posix()
                storage.copy_file(str(file), storage.join(uri, "files", relative))
        storage.write_bytes(storage.join(uri, "result.pickle"), pickle.dumps(result))
        storage.write_json(storage.join(uri, "calls.json"), calls)
        meta = {
            "run_id": tracker.run_id,
            "created": time.time(),
            "outputs": dict(outputs),
            "material": material,
        }
        storage.write_json(storage.join(uri, _ENTRY), meta)
        log.info("step cache: %s kept as %s", step, cache_key[:12])
