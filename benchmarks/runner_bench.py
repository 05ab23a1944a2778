"""Beam runners: ingest and transform in process, on 2 worker processes, on the portable path.

Each row is one job in a fresh process (imports not counted: the child starts its clock
after them), at ``photos`` and at 10x as many images. Next to them are the plain
single-process loops a competent engineer would write for the same jobs:
``ingest_bench.plain_loop``, and ``plain_transform`` here (two tf.data passes: pixel
statistics, then resized, normalised examples written as gzipped TFRecords). Every
runner's output is compared with the in-process run's: the same counts, splits and
fingerprint, the same transform statistics.

The repeat test runs ingest ``repeats`` times under ``multi_threading`` (4 threads) and
on the portable worker pool, and counts runs whose outcome differs from the reference
or that failed (ingest's own checks turn a lost record into a failure).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.ingest_bench import make_photos, plain_loop, replicate

_INGEST = """
import json, sys, time
from components.ingest.ingest import run_ingest
from visionpipe.config import load_config
config = load_config(overrides=sys.argv[3:])
started = time.monotonic()
try:
    s = run_ingest(sys.argv[1], sys.argv[2], config).stats
except Exception as err:
    print(json.dumps({"error": f"{type(err).__name__}: {str(err).splitlines()[0]}"}))
    raise SystemExit(0)
keep = ("inputs", "written", "rejected", "duplicates", "per_split", "fingerprint")
print(json.dumps({"seconds": time.monotonic() - started, **{k: s[k] for k in keep}}))
"""

_TRANSFORM = """
import json, sys, time
from components.transform.transform import run_transform
from visionpipe.config import load_config
config = load_config(overrides=sys.argv[3:])
started = time.monotonic()
r = run_transform(sys.argv[1], sys.argv[2] + "/examples", sys.argv[2] + "/graph", config)
print(json.dumps({"seconds": time.monotonic() - started, "examples": r.examples,
                  "statistics": r.statistics}))
"""

MODES = {
    "in process": [],
    "2 worker processes": [
        "beam.direct_num_workers=2",
        "beam.direct_running_mode=multi_processing",
    ],
}
THREADS = ["beam.direct_num_workers=4", "beam.direct_running_mode=multi_threading"]


def _child(code: str, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def plain_transform(raw: Path, out: Path, size: int) -> int:
    """Pixel mean and std over train, then every split resized, normalised and written."""
    import numpy as np
    import tensorflow as tf

    from visionpipe import features as F

    spec = {
        F.IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string),
        F.LABEL_TEXT: tf.io.FixedLenFeature([], tf.string),
    }

    def images(split: str):
        files = tf.io.gfile.glob(F.split_pattern(str(raw), split))
        ds = tf.data.TFRecordDataset(files, compression_type="GZIP")
        ds = ds.map(lambda r: tf.io.parse_single_example(r, spec), tf.data.AUTOTUNE)

        def decode(x):
            image = tf.io.decode_image(x[F.IMAGE_ENCODED], channels=3, expand_animations=False)
            return tf.image.resize(tf.cast(image, tf.float32), (size, size)), x[F.LABEL_TEXT]

        return ds.map(decode, tf.data.AUTOTUNE).batch(64).prefetch(2)

    total, squares, count = np.zeros(3), np.zeros(3), 0
    for batch, _ in images("train"):
        pixels = batch.numpy().reshape(-1, 3)
        total, squares, count = (
            total + pixels.sum(0),
            squares + (pixels**2).sum(0),
            count + len(pixels),
        )
    mean = total / count
    std = np.sqrt(squares / count - mean**2)
    written = 0
    out.mkdir(parents=True, exist_ok=True)
    for split in F.SPLITS:
        options = tf.io.TFRecordOptions(compression_type="GZIP")
        with tf.io.TFRecordWriter(str(out / f"{split}.tfrecord.gz"), options) as writer:
            for batch, labels in images(split):
                normalised = ((batch.numpy() - mean) / std).astype(np.float32)
                for image, label in zip(normalised, labels.numpy(), strict=True):
                    example = tf.train.Example(
                        features=tf.train.Features(
                            feature={
                                "image": tf.train.Feature(
                                    float_list=tf.train.FloatList(value=image.ravel())
                                ),
                                "label": tf.train.Feature(
                                    bytes_list=tf.train.BytesList(value=[label])
                                ),
                            }
                        )
                    )
                    writer.write(example.SerializeToString())
                    written += 1
    return written


def _same(reference: dict, other: dict, keys: tuple[str, ...]) -> str:
    if "error" in other:
        return other["error"]
    differ = [k for k in keys if reference.get(k) != other.get(k)]
    return "outputs equal the in-process run's" if not differ else f"DIFFERS in {differ}"


def bench_runners(work: Path, photos: int = 3000, growth: int = 10, repeats: int = 10) -> list:
    """Table rows: each runner's ingest and transform time, the plain loops, the repeat test."""
    from pipelines.beam_services import portable_services

    small = work / "photos"
    make_photos(small, photos)
    big = work / "photos_x"
    total = replicate(small, big, growth)
    keys = ("inputs", "written", "rejected", "duplicates", "per_split", "fingerprint")
    size = ["transform.image_size=64"]
    rows: list[tuple[str, float, str]] = []

    import tensorflow  # noqa: F401 - imported before timing: the loops are measured, not imports

    with portable_services() as portable:
        modes = {**MODES, "portable worker pool": portable}
        for count, data in ((photos, small), (total, big)):
            plain_loop(data, work / "warm")  # first-use costs out of the measurement
            started = time.monotonic()
            plain_loop(data, work / f"loop-{count}")
            loop_s = time.monotonic() - started
            rows.append(
                (f"{count} images: plain ingest loop", loop_s, f"{count / loop_s:.0f} images/s")
            )
            results = {}
            for name, overrides in modes.items():
                raw = work / f"raw-{count}-{name}"
                results[name] = ingested = _child(_INGEST, str(data), str(raw), *overrides)
                note = _same(results["in process"], ingested, keys)
                rows.append(
                    (
                        f"{count} images: ingest, {name}",
                        ingested.get("seconds", 0.0),
                        f"{loop_s / ingested['seconds']:.2f}x the loop; {note}"
                        if "seconds" in ingested
                        else note,
                    )
                )
            reference = work / f"raw-{count}-in process"
            started = time.monotonic()
            plain_transform(reference, work / f"plain-t-{count}", 64)
            plain_t = time.monotonic() - started
            rows.append((f"{count} images: plain transform loop", plain_t, "2 tf.data passes"))
            transformed = {}
            for name, overrides in modes.items():
                out = work / f"t-{count}-{name}"
                raw = work / f"raw-{count}-{name}"
                transformed[name] = t = _child(_TRANSFORM, str(raw), str(out), *size, *overrides)
                note = _same(transformed["in process"], t, ("examples", "statistics"))
                rows.append(
                    (
                        f"{count} images: transform, {name}",
                        t["seconds"],
                        f"{plain_t / t['seconds']:.2f}x the plain loop; {note}",
                    )
                )

        reference = _child(_INGEST, str(small), str(work / "ref"))
        for name, overrides in (
            ("multi_threading, 4 threads", THREADS),
            ("portable pool", portable),
        ):
            lost = 0
            for i in range(repeats):
                again = _child(_INGEST, str(small), str(work / f"rep-{name}-{i}"), *overrides)
                lost += _same(reference, again, keys) != "outputs equal the in-process run's"
            rows.append(
                (
                    f"repeat test: ingest x{repeats}, {photos} images, {name}",
                    float(lost),
                    f"runs that lost or changed a record (of {repeats})",
                )
            )
    return rows
