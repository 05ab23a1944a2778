"""Batch prediction: a Beam job that scores a folder, a CSV of paths or an object-store prefix.

Each worker loads the served SavedModel once (``DoFn.setup``) and classifies batches of
files (``BatchElements``) through ``serving_default``, the signature every other
prediction path uses, so the answers equal ``visionpipe predict``'s. A file that cannot
be read or decoded becomes a row of ``rejects.jsonl`` with its reason and the job goes
on; ``inputs == predicted + rejected`` is checked from Beam's counters.

The output folder appears whole or not at all: the job writes into a hidden staging
folder next to it and renames it at the end.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import asdict, dataclass

import apache_beam as beam

from visionpipe import features as F
from visionpipe import sources, storage
from visionpipe.beam import beam_pipeline, counter_values, run_job
from visionpipe.config import Config
from visionpipe.errors import UserError
from visionpipe.serving import (
    UNDECODABLE,
    check_images,
    content_hash,
    model_max_pixels,
    read_file,
)

log = logging.getLogger(__name__)

PREDICTIONS = "predictions"  # predictions-SSSSS-of-NNNNN.jsonl
REJECTS_FILE = "rejects.jsonl"
SUMMARY_FILE = "summary.json"


class BatchInputError(UserError, ValueError):
    """The model, the input or the output folder cannot be used; the message says why."""


@dataclass(frozen=True)
class BatchResult:
    """What a batch prediction wrote, and the counts that reconcile."""

    out_uri: str
    inputs: int
    predicted: int
    rejected: int

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


def list_images(data: str) -> list[str]:
    """``visionpipe.sources.list_images``, its error as this step's.

    Raises:
        BatchInputError: the input does not exist or holds no files.
    """
    try:
        return sources.list_images(data)
    except sources.DataError as err:
        raise BatchInputError(str(err)) from None


def check_model(model_dir: str) -> list[str]:
    """The model's labels; refuses a SavedModel this project did not export."""
    record = storage.join(model_dir, F.TRAINING_RECORD)
    if not storage.exists(storage.join(model_dir, "saved_model.pb")):
        raise BatchInputError(f"{model_dir}: not a SavedModel (no saved_model.pb)")
    if not storage.exists(record):
        raise BatchInputError(f"{model_dir}: not a visionpipe model (no {F.TRAINING_RECORD})")
    return list(storage.read_json(record)["labels"])


def run_batch_predict(
    model_dir: str,
    data: str,
    out_uri: str,
    config: Config,
    overwrite: bool = False,
    top_k: int = 3,
    batch_size: int = 64,
) -> BatchResult:
    """Scores every image of ``data`` with the model at ``model_dir`` into ``out_uri``.

    Writes ``predictions-*.jsonl`` (``path``, ``class``, ``probability``, ``top_k``: the
    ``top_k`` most probable classes), ``rejects.jsonl`` (``path``, ``reason``) and
    ``summary.json`` (the counts).

    Raises:
        BatchInputError: the model, the input or the output folder cannot be used
            (before anything is written).
    """
    labels = check_model(model_dir)
    storage.check_output_folder(out_uri, overwrite)
    paths = list_images(data)
    staging = f"{out_uri.rstrip('/')}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        predict = _Predict(model_dir, labels, min(top_k, len(labels)), config)
        counts = _run_pipeline(predict, paths, staging, config, batch_size)
        result = BatchResult(out_uri, len(paths), counts["predicted"], counts["rejected"])
        if result.inputs != result.predicted + result.rejected:
            raise RuntimeError(f"batch prediction lost inputs: {result}")
        storage.write_json(storage.join(staging, SUMMARY_FILE), {**result.to_dict(), "data": data})
        if storage.exists(out_uri):
            storage.remove(out_uri)
        storage.rename(staging, out_uri)
    finally:
        if storage.exists(staging):
            storage.remove(staging)
    log.info("predict-batch: %s", result)
    return result


def _run_pipeline(predict, paths, staging, config: Config, batch_size: int):
    pipeline = beam_pipeline(config.beam, "predict-batch")
    scored = (
        pipeline
        | "Paths" >> beam.Create(paths, reshuffle=False)
        | "Spread" >> beam.Reshuffle()
        | "Batch" >> beam.BatchElements(min_batch_size=batch_size, max_batch_size=batch_size)
        | "Predict" >> beam.ParDo(predict).with_outputs("rejects", main="rows")
    )
    _ = (
        scored.rows
        | "RowJson" >> beam.Map(json.dumps)
        | "WriteRows"
        >> beam.io.WriteToText(storage.join(staging, PREDICTIONS), file_name_suffix=".jsonl")
    )
    _ = (
        scored.rejects
        | "RejectJson" >> beam.Map(json.dumps)
        | "WriteRejects"
        >> beam.io.WriteToText(storage.join(staging, REJECTS_FILE), shard_name_template="")
    )
    counters = counter_values(run_job(pipeline, config.beam, "predict-batch"), "predict")
    return {"predicted": counters.get("predicted", 0), "rejected": counters.get("rejected", 0)}


class _Predict(beam.DoFn):
    """Classifies a batch of files; unreadable, undecodable or too large ones go to ``rejects``.

    Every file's header is checked against the model's pixel bound before anything is
    decoded, so a decompression bomb is a reject with its reason, not a worker out of
    memory; the rest are decoded once, by the model.
    """

    def __init__(self, model_dir: str, labels: list[str], top_k: int, config: Config) -> None:
        self._model_dir = model_dir
        self._config = config  # its monitor section: the prediction log
        self._max_pixels = model_max_pixels(model_dir)
        self._labels = labels
        self._top_k = top_k
        self._predicted = beam.metrics.Metrics.counter("predict", "predicted")
        self._rejected = beam.metrics.Metrics.counter("predict", "rejected")

    def setup(self) -> None:
        """Loads the model once per worker."""
        import tensorflow as tf

        from visionpipe.predlog import open_log

        self._tf = tf
        self._loaded = tf.saved_model.load(self._model_dir)
        signatures = self._loaded.signatures
        self._log = None
        if self._config.monitor.log and F.MONITOR_SIGNATURE in signatures:
            self._log = open_log(self._config, self._model_dir, "predict-batch")
        name = F.MONITOR_SIGNATURE if self._log is not None else F.SERVING_SIGNATURE
        self._serve = signatures[name]

    def finish_bundle(self) -> None:
        """Writes the bundle's log records (a bundle retried by the runner logs again)."""
        if self._log is not None:
            self._log.flush()

    def teardown(self) -> None:
        """Writes any log records left."""
        if getattr(self, "_log", None) is not None:
            self._log.close()

    def process(self, paths: list[str]):
        """Yields one row per classified file, and a tagged reject per other file."""
        read = []
        for path in paths:
            content, reason = read_file(path)
            if reason:
                self._rejected.inc()
                yield beam.pvalue.TaggedOutput("rejects", {"path": path, "reason": reason})
            else:
                read.append((path, content))
        checked = check_images([content for _, content in read], self._max_pixels)
        good, data = [], []
        for (path, content), (reason, _) in zip(read, checked, strict=True):
            if reason:
                self._rejected.inc()
                yield beam.pvalue.TaggedOutput("rejects", {"path": path, "reason": reason})
            else:
                good.append(path)
                data.append(content)
        out = self._classify(data, good) if data else None
        if out is None and data:  # a corrupt file: score one by one, reject only it
            for path, content in zip(good, data, strict=True):
                one = self._classify([content], [path])
                if one is None:
                    self._rejected.inc()
                    yield beam.pvalue.TaggedOutput("rejects", {"path": path, "reason": UNDECODABLE})
                else:
                    self._predicted.inc()
                    yield self._row(path, one, 0)
            return
        for row, path in enumerate(good):
            self._predicted.inc()
            yield self._row(path, out, row)

    def _classify(self, data: list[bytes], paths: list[str]):
        tf = self._tf
        try:
            out = self._serve(**{F.SERVING_INPUT: tf.constant(data, dtype=tf.string)})
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
            return None
        out = {k: v.numpy() for k, v in out.items()}
        if self._log is not None:
            hashes = [content_hash(d) for d in data]
            self._log.add_outputs(out, list(range(len(data))), hashes, paths, data)
        return out

    def _row(self, path: str, out: dict, row: int) -> dict:
        probabilities = out["probabilities"][row]
        names = out["class_name"]
        class_id = int(out["class_id"][row])
        order = probabilities.argsort()[::-1][: self._top_k]
        labels = self._labels
        return {
            "path": path,
            "class": names[row].decode(),
            "class_id": class_id,
            "probability": float(probabilities[class_id]),
            "top_k": [{"class": labels[i], "probability": float(probabilities[i])} for i in order],
        }
