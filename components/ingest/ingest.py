"""The ingest step: labelled images in, split and sharded TFRecords of tf.train.Example out.

Every input ends in exactly one place: an output shard, ``rejects.jsonl`` (with its
reason), or the ``duplicates`` count (an identical file under the same label). The
output is staged next to its destination and moved into place only when complete.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import apache_beam as beam

from components.ingest.images import Rejected, inspect
from components.ingest.sources import Source, check_classes, list_sources
from visionpipe import features as F
from visionpipe import storage
from visionpipe.beam import pipeline_options
from visionpipe.config import Config, IngestConfig

log = logging.getLogger(__name__)

_COUNTS_FILE = "_counts.json"


@dataclass(frozen=True)
class IngestResult:
    """What ingest wrote."""

    output_uri: str
    stats: dict[str, Any]

    @property
    def examples(self) -> dict[str, int]:
        """Examples written per split."""
        return {s: sum(self.stats["per_split"].get(s, {}).values()) for s in F.SPLITS}


def run_ingest(data_uri: str, output_uri: str, config: Config) -> IngestResult:
    """Converts a labelled image dataset into split, sharded TFRecords.

    Args:
        data_uri: a folder-per-class tree or a CSV of ``path,label`` (see ``list_sources``).
        output_uri: directory to write; replaced whole when the run succeeds.
        config: the validated configuration (``ingest`` and ``beam`` sections).

    Returns:
        The output location and the statistics also written to ``stats.json``.

    Raises:
        DataError: the dataset is missing, empty, or has too few classes; raised
            before anything is written.
    """
    sources = list_sources(data_uri)
    check_classes(data_uri, sources, config.ingest.min_images_per_class)
    staging = f"{output_uri.rstrip('/')}.staging-{uuid.uuid4().hex[:8]}"
    try:
        with beam.Pipeline(options=pipeline_options(config.beam)) as pipeline:
            _ = (
                pipeline
                | "Sources" >> beam.Create(sources)
                | "Ingest" >> IngestImages(staging, config.ingest)
            )
        stats = _finish_stats(data_uri, staging, config.ingest)
        storage.write_json(storage.join(staging, F.STATS_FILE), stats)
        storage.remove(output_uri)
        storage.rename(staging, output_uri)
    finally:
        storage.remove(staging)
    result = IngestResult(output_uri, stats)
    log.info(
        "ingest: %s examples, %d rejected, %d duplicates",
        result.examples,
        stats["rejected"],
        stats["duplicates"],
    )
    return result


def assign_split(sha256: str, config: IngestConfig) -> str:
    """The split of an image, from a salted hash of its content (stable across runs)."""
    digest = hashlib.sha256(f"{config.split_salt}:{sha256}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64
    if point < config.train_fraction:
        return "train"
    if point < config.train_fraction + config.valid_fraction:
        return "valid"
    return "test"


@beam.ptransform_fn
def IngestImages(sources, staging: str, config: IngestConfig):  # noqa: N802 - Beam style
    """Reads, validates, de-duplicates, splits and writes images; returns nothing useful."""
    inspected = sources | "Inspect" >> beam.ParDo(_InspectFn(config.max_pixels)).with_outputs(
        "rejected", main="ok"
    )
    unique = (
        inspected.ok
        | "ByContent" >> beam.GroupByKey()
        | "Dedup" >> beam.ParDo(_DedupFn()).with_outputs("rejected", "duplicate", main="ok")
    )
    rejected = (inspected.rejected, unique.rejected) | "AllRejects" >> beam.Flatten()
    keyed = unique.ok | "Split" >> beam.Map(lambda rec: (assign_split(rec["sha256"], config), rec))
    parts = keyed | "BySplit" >> beam.Partition(lambda kv, n: F.SPLITS.index(kv[0]), len(F.SPLITS))
    for split, part in zip(F.SPLITS, parts, strict=True):
        _ = (
            part
            | f"Serialize{split}" >> beam.Map(lambda kv: _to_example(kv[1]))
            | f"Write{split}"
            >> beam.io.WriteToTFRecord(
                storage.join(staging, split, "data"),
                file_name_suffix=F.SHARD_SUFFIX,
                num_shards=config.num_shards,
            )
        )
    _ = (
        rejected
        | "RejectJson" >> beam.Map(_json_line)
        | "WriteRejects"
        >> beam.io.WriteToText(storage.join(staging, F.REJECTS_FILE), shard_name_template="")
    )
    outcomes = (
        keyed | "WrittenKey" >> beam.Map(lambda kv: ("written", kv[0], kv[1]["label"])),
        rejected | "RejectKey" >> beam.Map(lambda r: ("rejected", r["reason"], r["label"])),
        unique.duplicate | "DupKey" >> beam.Map(lambda r: ("duplicate", "", r["label"])),
    )
    fingerprint = (
        keyed
        | "FingerprintItems" >> beam.Map(lambda kv: f"{kv[1]['sha256']}:{kv[1]['label']}")
        | "Fingerprint" >> beam.CombineGlobally(_MultisetHashFn())
    )
    _ = (
        outcomes
        | "AllOutcomes" >> beam.Flatten()
        | "CountOutcomes" >> beam.combiners.Count.PerElement()
        | "CollectCounts" >> beam.combiners.ToList()
        | "WithFingerprint"
        >> beam.Map(
            lambda counts, fp: {"counts": [[*k, n] for k, n in counts], "fingerprint": fp},
            fp=beam.pvalue.AsSingleton(fingerprint),
        )
        | "WriteCounts"
        >> beam.Map(lambda obj: storage.write_json(storage.join(staging, _COUNTS_FILE), obj))
    )


class _InspectFn(beam.DoFn):
    """Reads one source and validates it; rejects go to the ``rejected`` output."""

    def __init__(self, max_pixels: int) -> None:
        self._max_pixels = max_pixels
        self._read = beam.metrics.Metrics.counter("ingest", "images_read")
        self._rejected = beam.metrics.Metrics.counter("ingest", "images_rejected")

    def process(self, source: Source):
        self._read.inc()
        try:
            data = storage.read_bytes(source.uri)
            image = inspect(data, self._max_pixels)
        except FileNotFoundError:
            yield self._reject(source, "missing_file", "file does not exist")
            return
        except IsADirectoryError:
            yield self._reject(source, "missing_file", "path is a directory")
            return
        except Rejected as rejection:
            yield self._reject(source, rejection.reason, rejection.detail)
            return
        except OSError as err:
            yield self._reject(source, "unreadable", str(err))
            return
        yield (
            image.sha256,
            {
                "source": source.uri,
                "label": source.label,
                "sha256": image.sha256,
                "encoded": image.encoded,
                "format": image.format,
                "height": image.height,
                "width": image.width,
                "channels": image.channels,
            },
        )

    def _reject(self, source: Source, reason: str, detail: str):
        self._rejected.inc()
        return beam.pvalue.TaggedOutput(
            "rejected",
            {"source": source.uri, "label": source.label, "reason": reason, "detail": detail},
        )


class _DedupFn(beam.DoFn):
    """Keeps one of identical images under one label; rejects all copies under several."""

    def process(self, element):
        _, records = element
        records = sorted(records, key=lambda r: r["source"])
        labels = sorted({r["label"] for r in records})
        if len(labels) > 1:
            for r in records:
                detail = f"the same image is labelled {labels}"
                yield beam.pvalue.TaggedOutput(
                    "rejected",
                    {
                        "source": r["source"],
                        "label": r["label"],
                        "reason": "conflicting_labels",
                        "detail": detail,
                    },
                )
            return
        yield records[0]
        for r in records[1:]:
            yield beam.pvalue.TaggedOutput(
                "duplicate",
                {"source": r["source"], "label": r["label"], "kept": records[0]["source"]},
            )


class _MultisetHashFn(beam.CombineFn):
    """An order-independent hash of a set of strings, in constant memory."""

    _MOD = 2**256

    def create_accumulator(self):
        return 0

    def add_input(self, acc, item):
        return (acc + int.from_bytes(hashlib.sha256(item.encode()).digest(), "big")) % self._MOD

    def merge_accumulators(self, accs):
        return sum(accs) % self._MOD

    def extract_output(self, acc):
        return f"{acc:064x}"


def _to_example(rec: dict[str, Any]) -> bytes:
    import tensorflow as tf

    def b(v: bytes | str):
        return tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[v if isinstance(v, bytes) else v.encode()])
        )

    def i(v: int):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))

    feature = {
        F.IMAGE_ENCODED: b(rec["encoded"]),
        F.IMAGE_FORMAT: b(rec["format"]),
        F.IMAGE_HEIGHT: i(rec["height"]),
        F.IMAGE_WIDTH: i(rec["width"]),
        F.IMAGE_CHANNELS: i(rec["channels"]),
        F.LABEL_TEXT: b(rec["label"]),
        F.FILENAME: b(rec["source"]),
        F.SHA256: b(rec["sha256"]),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _json_line(record: dict[str, Any]) -> str:
    import json

    return json.dumps(record, sort_keys=True)


def _finish_stats(data_uri: str, staging: str, config: IngestConfig) -> dict[str, Any]:
    raw = storage.read_json(storage.join(staging, _COUNTS_FILE))
    storage.remove(storage.join(staging, _COUNTS_FILE))
    per_split: dict[str, dict[str, int]] = {s: {} for s in F.SPLITS}
    by_reason: dict[str, int] = {}
    written = rejected = duplicates = 0
    for kind, key, label, n in raw["counts"]:
        if kind == "written":
            per_split[key][label] = per_split[key].get(label, 0) + n
            written += n
        elif kind == "rejected":
            by_reason[key] = by_reason.get(key, 0) + n
            rejected += n
        else:
            duplicates += n
    classes = sorted({label for split in per_split.values() for label in split})
    missing = {s: [c for c in classes if c not in per_split[s]] for s in F.SPLITS}
    missing = {s: cs for s, cs in missing.items() if cs}
    for split, names in missing.items():
        log.warning("ingest: split %r has no examples of classes %s", split, names)
    return {
        "source": data_uri,
        "inputs": written + rejected + duplicates,
        "written": written,
        "rejected": rejected,
        "duplicates": duplicates,
        "rejected_by_reason": dict(sorted(by_reason.items())),
        "per_split": {s: dict(sorted(c.items())) for s, c in per_split.items()},
        "classes": classes,
        "missing_classes_by_split": missing,
        "fingerprint": raw["fingerprint"],
        "split_fractions": {
            "train": config.train_fraction,
            "valid": config.valid_fraction,
            "test": config.test_fraction,
        },
    }
