"""The ingest step: labelled images in, split and sharded TFRecords of tf.train.Example out.

Every input ends in exactly one place: an output shard, ``rejects.jsonl`` (with its
reason), or the ``duplicates`` count (an identical file under the same label). The
output is staged next to its destination and moved into place only when complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import apache_beam as beam

from components.ingest import near_duplicates
from components.ingest.images import Rejected, inspect, inspect_source
from components.ingest.shards import (
    RollingFileWriteFn,
    commit_shards,
    concatenate_parts,
    tfrecord,
)
from visionpipe import features as F
from visionpipe import storage
from visionpipe.beam import beam_pipeline, run_job
from visionpipe.config import Config, IngestConfig
from visionpipe.example_codec import encode_example
from visionpipe.slicing import check_slice_names
from visionpipe.sources import DataError, attribute_names, check_classes, list_sources
from visionpipe.tfrecord import count_records

log = logging.getLogger(__name__)

_COUNTS_FILE = "_counts.json"
_REJECTS_PARTS = ".rejects"  # where the rejects' part files go, under the staging directory
_PROGRESS_EVERY = 1000
# The metadata of an inspected image, as the tuple _InspectFn emits.
_META_FIELDS = (
    "source",
    "label",
    "sha256",
    "reencoded",
    "format",
    "height",
    "width",
    "channels",
    "phash",
    "attributes",
)
_NEAR_FILE = "_near_duplicates.json"  # the near-duplicate groups, until stats.json has them


class TooManyRejectsError(DataError):
    """More inputs were rejected than ``ingest.max_reject_fraction`` allows."""


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
        TooManyRejectsError: more than ``ingest.max_reject_fraction`` of the inputs
            were rejected; only ``stats.json`` and ``rejects.jsonl`` are written.
    """
    sources = list_sources(data_uri)
    check_classes(data_uri, sources, config.ingest.min_images_per_class)
    attributes = attribute_names(sources)
    check_slice_names(data_uri, config.evaluate.slices, attributes)
    output_uri = output_uri.rstrip("/")
    for stale in storage.glob(f"{output_uri}.staging-*"):  # left by a killed run
        storage.remove(stale)
    staging = f"{output_uri}.staging-{uuid.uuid4().hex[:8]}"
    log.info("ingest: %d images from %s", len(sources), data_uri)
    size = config.ingest.batch_size
    batches = [
        [(s.uri, s.label, s.attributes) for s in sources[i : i + size]]
        for i in range(0, len(sources), size)
    ]
    try:
        pipeline = beam_pipeline(config.beam, "ingest")
        _ = (
            pipeline
            | "Sources" >> beam.Create(batches, reshuffle=True)
            | "Ingest" >> IngestImages(staging, config.ingest)
        )
        run_job(pipeline, config.beam, "ingest")
        raw = storage.read_json(storage.join(staging, _COUNTS_FILE))
        storage.remove(storage.join(staging, _COUNTS_FILE))
        stats = _finish_stats(data_uri, raw, config.ingest)
        stats["near_duplicates"] = _near_duplicate_stats(staging, config.ingest)
        stats["attributes"] = attributes
        stats["shards"] = _commit_all_shards(staging, raw["files"])
        _verify_shards(staging, stats, len(sources))  # before any commit: a loss fails here
        concatenate_parts(
            storage.join(staging, _REJECTS_PARTS),
            [f for f in raw["files"] if f.startswith(storage.join(staging, _REJECTS_PARTS, ""))],
            storage.join(staging, F.REJECTS_FILE),
        )
        storage.write_json(storage.join(staging, F.STATS_FILE), stats)
        if stats["status"] != "complete":
            _commit_report_only(staging, output_uri)
            raise TooManyRejectsError(
                f"{data_uri}: {stats['rejected']} of {stats['inputs']} images rejected "
                f"({stats['rejected'] / stats['inputs']:.1%} > ingest.max_reject_fraction "
                f"{config.ingest.max_reject_fraction:.1%}); see "
                f"{storage.join(output_uri, F.REJECTS_FILE)}"
            )
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


def _near_duplicate_stats(staging: str, config: IngestConfig) -> dict[str, Any]:
    """The near-duplicates' summary; their groups become ``near_duplicates.json``."""
    if config.near_duplicate_distance < 0:
        return {"checked": False}
    staged = storage.join(staging, _NEAR_FILE)
    groups = storage.read_json(staged) if storage.exists(staged) else []
    storage.remove(staged)
    storage.write_json(storage.join(staging, F.NEAR_DUPLICATES_FILE), groups)
    conflicting = [g for g in groups if len(g["labels"]) > 1]
    return {
        "checked": True,
        "distance": config.near_duplicate_distance,
        "groups": len(groups),
        "images": sum(len(g["members"]) for g in groups),
        "conflicting_groups": len(conflicting),
        "conflicting_images": sum(len(g["members"]) for g in conflicting),
        "conflicts": config.near_duplicate_conflicts,
    }


def _commit_all_shards(staging: str, files: list[str]) -> dict[str, int]:
    """Renames each split's completed part files into place; returns shards per split."""
    shards = {}
    for split in F.SPLITS:
        prefix = storage.join(staging, split, "")
        shards[split] = commit_shards(
            storage.join(staging, split), [f for f in files if f.startswith(prefix)]
        )
    return shards


class ShardLossError(RuntimeError):
    """The shards hold other than the records ingest counted as written."""


class InputLossError(ShardLossError):
    """Fewer or more images were accounted for than were listed."""


def _verify_shards(staging: str, stats: dict[str, Any], listed: int) -> None:
    """Checks that every listed image was accounted for, and counts every split's records.

    The records are counted from the shards' framing (``visionpipe.tfrecord.count_records``), as any
    TFRecord reader would find them.

    Raises:
        InputLossError: written + rejected + duplicates is not the number of images
            listed (an outcome was lost or counted twice on the way).
        ShardLossError: a split's shards hold other than ``per_split``'s count.
        Either way nothing is committed (the staging folder is removed).
    """
    if stats["inputs"] != listed:
        raise InputLossError(
            f"ingest: {listed} images were listed but {stats['inputs']} accounted for "
            f"({stats['written']} written, {stats['rejected']} rejected, "
            f"{stats['duplicates']} duplicates); nothing was committed (report it with the "
            "data and the runner)"
        )
    for split in F.SPLITS:
        expected = sum(stats["per_split"][split].values())
        found = count_records(storage.glob(F.split_pattern(staging, split)))
        if found != expected:
            raise ShardLossError(
                f"ingest: the {split} shards hold {found} records but {expected} were "
                "written; nothing was committed (a record was lost between the writer and "
                "the reader: report it with the data and the runner)"
            )


def _commit_report_only(staging: str, output_uri: str) -> None:
    """Leaves only the reports (stats, rejects, near-duplicates) at ``output_uri``: no dataset."""
    storage.remove(output_uri)
    for name in (F.STATS_FILE, F.REJECTS_FILE, F.NEAR_DUPLICATES_FILE):
        if not storage.exists(storage.join(staging, name)):
            continue
        storage.copy_file(storage.join(staging, name), storage.join(output_uri, name))


def assign_split(sha256: str, config: IngestConfig) -> str:
    """The split of an image, from a salted hash of its content (stable across runs)."""
    digest = hashlib.sha256(f"{config.split_salt}:{sha256}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64
    if point < config.train_fraction:
        return "train"
    if point < config.train_fraction + config.valid_fraction:
        return "valid"
    return "test"


def worker_threads(config: IngestConfig) -> int:
    """Threads per Beam worker for the per-image work (``ingest.threads``; 0: one per core)."""
    return config.threads or len(os.sched_getaffinity(0))


@beam.ptransform_fn
def IngestImages(batches, staging: str, config: IngestConfig):  # noqa: N802
    """Reads, validates, de-duplicates, splits and writes batches of ``(uri, label)``.

    The per-image work (reading, hashing, decoding, and building the record)
    runs on a thread pool in each Beam worker: it is almost all in C code that releases
    the GIL, so one process uses every core without the start-up of worker processes.
    """
    inspected = batches | "Inspect" >> beam.ParDo(_InspectFn(config)).with_outputs(
        "rejected", "keys", main="ok"
    )
    plan = []
    if config.near_duplicate_distance >= 0:
        # Only (hash, label, source) of every inspected image meet in one place, a batch
        # per element (one per image, Beam's overhead in this branch was most of what
        # hashing cost ingest). What goes back, as a side input, is each grouped image's
        # split key; it is read where the de-duplicating shuffle's output is read anyway,
        # since a side input of the encoders had Beam store every kept record between
        # two stages (0.7 s of 3.5 s at 30,000 images).
        plan = [
            beam.pvalue.AsSingleton(
                inspected.keys
                | "AllHashes" >> beam.combiners.ToList()
                | "NearDuplicates" >> beam.Map(_plan_near_duplicates, staging, config)
            )
        ]
    unique = (
        inspected.ok
        | "ByContent" >> beam.GroupByKey()
        | "Dedup"
        >> beam.ParDo(_DedupFn(config), *plan).with_outputs("rejected", "duplicate", main="ok")
    )
    # Only metadata went through the de-duplicating shuffle; the kept images are read
    # again by the encoders and streamed to the shard writers, so memory does not grow
    # with data.
    kept = unique.ok | "Batch" >> beam.BatchElements(config.batch_size, config.batch_size)
    encoded = kept | "Encode" >> beam.ParDo(_EncodeFn(config)).with_outputs("rejected", main="ok")
    rejected = (
        inspected.rejected,
        unique.rejected,
        encoded.rejected,
    ) | "AllRejects" >> beam.Flatten()
    written = encoded.ok
    max_bytes = int(config.shard_size_mb * 2**20)
    shard_files = (
        written
        | "Records" >> beam.Map(lambda w: (w.split, w.record))
        | "WriteShards"
        >> beam.ParDo(RollingFileWriteFn(staging, max_bytes, gzip_level=config.gzip_level))
    )
    reject_files = (
        rejected
        | "RejectLines" >> beam.Map(lambda r: (_REJECTS_PARTS, _json_line(r)))
        | "WriteRejects" >> beam.ParDo(RollingFileWriteFn(staging, max_bytes, ".jsonl"))
    )
    _ = (
        (
            written | "WrittenItem" >> beam.Map(lambda w: ("written", w.split, w.label, w.sha256)),
            rejected | "RejectItem" >> beam.Map(lambda r: ("rejected", r["reason"], r["label"])),
            unique.duplicate | "DupItem" >> beam.Map(lambda r: ("duplicate", "", r["label"])),
            (shard_files, reject_files) | "AllFiles" >> beam.Flatten() | beam.Map(_file_item),
        )
        | "AllItems" >> beam.Flatten()
        | "Summarize" >> beam.CombineGlobally(_SummaryFn()).without_defaults()
        | "WriteSummary"
        >> beam.Map(lambda obj: storage.write_json(storage.join(staging, _COUNTS_FILE), obj))
    )


def _file_item(path: str) -> tuple[str, str]:
    return ("file", path)


class _PooledFn(beam.DoFn):
    """A DoFn that maps its per-image work over a thread pool of ``worker_threads``."""

    def __init__(self, config: IngestConfig) -> None:
        self._config = config

    def setup(self) -> None:
        """One pool per DoFn instance, reused across bundles."""
        self._pool = ThreadPoolExecutor(worker_threads(self._config))

    def teardown(self) -> None:
        """Stops the pool's threads."""
        self._pool.shutdown()


class _InspectFn(_PooledFn):
    """Reads and validates a batch of sources; rejects go to the ``rejected`` output."""

    def setup(self) -> None:
        """The pool, the counters and a per-worker progress count."""
        super().setup()
        self._read = beam.metrics.Metrics.counter("ingest", "images_read")
        self._rejected = beam.metrics.Metrics.counter("ingest", "images_rejected")
        self._seen = 0

    def process(self, batch: list[tuple[str, str]]):
        """Yields ``(sha256, metadata tuple)`` for each accepted image, else a tagged reject."""
        inspect_one = partial(inspect_source, config=self._config)
        accepted = []
        for outcome, value in self._pool.map(inspect_one, batch):
            if outcome == "rejected":
                self._rejected.inc()
                yield beam.pvalue.TaggedOutput("rejected", value)
            else:
                accepted.append(value)
        accepted = _with_hashes(accepted)
        yield from accepted
        if self._config.near_duplicate_distance >= 0:
            yield beam.pvalue.TaggedOutput("keys", _hash_keys(accepted))
        self._read.inc(len(batch))
        before, self._seen = self._seen, self._seen + len(batch)
        if self._seen // _PROGRESS_EVERY > before // _PROGRESS_EVERY:
            log.info("ingest: %d images inspected by this worker", self._seen)


def _with_hashes(accepted: list[tuple[str, tuple]]) -> list[tuple[str, tuple]]:
    """The inspected images with their grey pixels replaced by perceptual hashes (one call)."""
    at = _META_FIELDS.index("phash")
    found = near_duplicates.hashes([meta[at] for _, meta in accepted if meta[at] is not None])
    out, k = [], 0
    for sha, meta in accepted:
        phash = ""
        if meta[at] is not None:
            phash, k = found[k], k + 1
        out.append((sha, (*meta[:at], phash, *meta[at + 1 :])))
    return out


@dataclass(frozen=True)
class _Written:
    """One example ready for its split's shards: the gzipped record and what to count."""

    split: str
    label: str
    sha256: str
    record: bytes


class _EncodeFn(_PooledFn):
    """Reads kept images again and builds their gzipped records; a changed file is rejected."""

    def process(self, batch: list[dict[str, Any]]):
        """Yields a ``_Written`` per image, or a tagged reject."""
        for outcome in self._pool.map(partial(_encode, config=self._config), batch):
            if isinstance(outcome, _Written):
                yield outcome
            else:
                yield beam.pvalue.TaggedOutput("rejected", outcome)


def _encode(rec: dict[str, Any], config: IngestConfig) -> _Written | dict[str, str]:
    """The record of one kept image (run on a pool thread), or its reject."""
    try:
        data = storage.read_bytes(rec["source"])
        if hashlib.sha256(data).hexdigest() != rec["sha256"]:
            raise Rejected("changed_during_ingest", "content changed between reads")
        encoded = data
        if rec["reencoded"]:
            encoded = inspect(data, config.max_pixels, config.max_side, config.jpeg_quality).encoded
    except (OSError, Rejected) as err:
        return {
            "source": rec["source"],
            "label": rec["label"],
            "reason": "changed_during_ingest",
            "detail": str(err),
        }
    split = assign_split(rec.get("split_key", rec["sha256"]), config)
    record = tfrecord(_to_example({**rec, "encoded": encoded}))  # the writer compresses
    return _Written(split, rec["label"], rec["sha256"], record)


def _hash_keys(accepted: list[tuple[str, tuple]]) -> list[dict[str, str]]:
    """What the near-duplicate plan needs of a batch of inspected images."""
    fields = ("sha256", "phash", "label", "source")
    at = [_META_FIELDS.index(f) for f in fields]
    return [dict(zip(fields, (meta[i] for i in at), strict=True)) for _, meta in accepted]


def _plan_near_duplicates(batches, staging: str, config: IngestConfig) -> dict[str, tuple]:
    """Groups the near-duplicates (``batches`` of ``_hash_keys``) and writes their report.

    The groups are of the images de-duplication keeps (``_deduplicated``'s rule, applied
    here to every inspected image's keys).

    Returns:
        ``{sha256: (split key, conflicting labels or None)}`` of each image in a group.
    """
    copies: dict[str, list[dict[str, str]]] = {}
    for batch in batches:
        for key in batch:
            copies.setdefault(key["sha256"], []).append(key)
    items = []
    for group in copies.values():
        ordered, labels = _deduplicated(group)
        if len(labels) == 1:
            first = ordered[0]
            items.append((first["sha256"], first["phash"], first["label"], first["source"]))
    plan = near_duplicates.plan(items, config.near_duplicate_distance)
    storage.write_json(storage.join(staging, _NEAR_FILE), plan["groups"])
    return {sha: (key, plan["conflicting"].get(sha)) for sha, key in plan["placement"].items()}


def _deduplicated(copies: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """De-duplication's rule for the copies of one image: sorted, and their labels.

    The first copy by source is kept, unless there is more than one label: then none is.
    """
    return sorted(copies, key=lambda r: r["source"]), sorted({r["label"] for r in copies})


class _DedupFn(beam.DoFn):
    """Keeps one of identical images under one label; rejects all copies under several.

    With a near-duplicate plan (``_plan_near_duplicates``), the kept image of a group
    takes its group's split key, or is rejected when its group's labels conflict and
    ``ingest.near_duplicate_conflicts`` is ``reject``.
    """

    def __init__(self, config: IngestConfig) -> None:
        self._reject_conflicts = config.near_duplicate_conflicts == "reject"

    def process(self, element, plan: dict[str, tuple] | None = None):
        _, packed = element
        records, labels = _deduplicated([dict(zip(_META_FIELDS, t, strict=True)) for t in packed])
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
        yield self._placed(records[0], plan or {})
        for r in records[1:]:
            yield beam.pvalue.TaggedOutput(
                "duplicate",
                {"source": r["source"], "label": r["label"], "kept": records[0]["source"]},
            )

    def _placed(self, rec: dict[str, Any], plan: dict[str, tuple]):
        key, labels = plan.get(rec["sha256"], (None, None))
        if labels and self._reject_conflicts:
            return beam.pvalue.TaggedOutput(
                "rejected",
                {
                    "source": rec["source"],
                    "label": rec["label"],
                    "reason": "near_duplicate_conflict",
                    "detail": f"near-duplicates of this image are labelled {labels}",
                },
            )
        return {**rec, "split_key": key} if key else rec


class _SummaryFn(beam.CombineFn):
    """Outcome counts, the data fingerprint and the completed files, in one pass.

    The fingerprint is an order-independent (multiset) hash of ``sha256:label`` over
    the written examples: a sum of their SHA-256 values modulo 2**256, so it can be
    combined per bundle and merged in any order, in constant memory.
    """

    _MOD = 2**256

    def create_accumulator(self):
        return {"counts": {}, "fingerprint": 0, "files": []}

    def add_input(self, acc, item):
        kind = item[0]
        if kind == "file":
            acc["files"].append(item[1])
            return acc
        key = item[:3]
        acc["counts"][key] = acc["counts"].get(key, 0) + 1
        if kind == "written":
            digest = hashlib.sha256(f"{item[3]}:{item[2]}".encode()).digest()
            acc["fingerprint"] = (acc["fingerprint"] + int.from_bytes(digest, "big")) % self._MOD
        return acc

    def merge_accumulators(self, accs):
        merged = self.create_accumulator()
        for acc in accs:
            for key, n in acc["counts"].items():
                merged["counts"][key] = merged["counts"].get(key, 0) + n
            merged["fingerprint"] = (merged["fingerprint"] + acc["fingerprint"]) % self._MOD
            merged["files"].extend(acc["files"])
        return merged

    def extract_output(self, acc):
        return {
            "counts": [[*key, n] for key, n in sorted(acc["counts"].items())],
            "fingerprint": f"{acc['fingerprint']:064x}",
            "files": sorted(acc["files"]),
        }


def _to_example(rec: dict[str, Any]) -> bytes:
    attributes = {F.ATTRIBUTE_PREFIX + name: value for name, value in rec["attributes"]}
    return encode_example(
        {
            **attributes,
            F.IMAGE_ENCODED: rec["encoded"],
            F.IMAGE_FORMAT: rec["format"],
            F.IMAGE_HEIGHT: rec["height"],
            F.IMAGE_WIDTH: rec["width"],
            F.IMAGE_CHANNELS: rec["channels"],
            F.LABEL_TEXT: rec["label"],
            F.FILENAME: rec["source"],
            F.SHA256: rec["sha256"],
        }
    )


def _json_line(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, sort_keys=True) + "\n").encode()


def _finish_stats(data_uri: str, raw: dict[str, Any], config: IngestConfig) -> dict[str, Any]:
    """stats.json's content from the pipeline's outcome counts and fingerprint."""
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
    inputs = written + rejected + duplicates
    too_many = bool(inputs) and rejected / inputs > config.max_reject_fraction
    classes = sorted({label for split in per_split.values() for label in split})
    missing = {s: [c for c in classes if c not in per_split[s]] for s in F.SPLITS}
    missing = {s: cs for s, cs in missing.items() if cs}
    for split, names in missing.items():
        log.warning("ingest: split %r has no examples of classes %s", split, names)
    return {
        "status": "too_many_rejects" if too_many else "complete",
        "source": data_uri,
        "inputs": inputs,
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
