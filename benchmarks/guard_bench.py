"""What refusing a decompression bomb costs, against decoding it as serving once did.

A real 16,000 x 16,000 grey PNG of zeros (a few hundred KB, built by streaming zlib),
each case in a fresh process so that its peak memory (VmHWM) is its own:

- the served ``serving_default`` signature given four copies of it (refused whole);
- ``Classifier.predict_files`` (what ``visionpipe predict`` runs) on it and a real JPEG;
- the plain baseline: ``tf.io.decode_image`` of the same bytes, the first thing the
  unguarded predict did with a file, and what the unguarded graph did first.

Also the header check's share of a 64-image served call on real JPEGs.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

from benchmarks.trainer_bench import prepare

SIDE = 16_000

_CASE = r"""
import json, resource, sys, time
import tensorflow as tf
sys.path.insert(0, {repo!r})

def rss_mb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024

case, model, bomb, good = sys.argv[1:5]
data = open(bomb, "rb").read()
if case != "decode":
    loaded = tf.saved_model.load(model)
    serve = loaded.signatures["serving_default"]
    serve(image_bytes=tf.constant([open(good, "rb").read()]))  # warm: traced, loaded
base = rss_mb("VmRSS")
started = time.monotonic()
outcome = ""
try:
    if case == "signature":
        serve(image_bytes=tf.constant([data] * 4))
        outcome = "answered"
    elif case == "predict":
        from visionpipe.serving import Classifier
        found = Classifier(model).predict_files([bomb, good])
        outcome = "; ".join(p.error or p.class_name for p in found)
    else:
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        outcome = f"decoded {{tuple(image.shape)}}"
except tf.errors.InvalidArgumentError as err:
    import re
    found = re.search(r"image \d+ declares [^,]*", err.message)
    outcome = "refused: " + (found.group(0) if found else err.message.splitlines()[0])
print(json.dumps({{"base": base, "peak": rss_mb("VmHWM"), "seconds": time.monotonic() - started,
                  "outcome": outcome}}))
"""


def png_of_zeros(path: Path, side: int = SIDE) -> int:
    """Writes a ``side x side`` 8-bit grey PNG of zeros, row by row; returns its size."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    packer = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte, then the pixels
    body = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    data = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", body)
        + chunk(b"IEND", b"")
    )
    path.write_bytes(data)
    return len(data)


def _case(case: str, model: str, bomb: Path, good: Path) -> dict:
    repo = str(Path(__file__).resolve().parent.parent)
    done = subprocess.run(
        [sys.executable, "-c", _CASE.format(repo=repo), case, model, str(bomb), str(good)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _check_share(model: str, jpegs: list[bytes]) -> tuple[float, float]:
    """Milliseconds of a 64-image served call, and of the header check alone on them."""
    import tensorflow as tf

    from visionpipe.pixels import check_declared

    serve = tf.saved_model.load(model).signatures["serving_default"]
    batch = tf.constant(jpegs)
    check = tf.function(lambda b: check_declared(b, 40_000_000))

    def timed(fn, runs: int = 20) -> float:
        fn(batch)
        started = time.perf_counter()
        for _ in range(runs):
            fn(batch)
        return (time.perf_counter() - started) / runs * 1000

    return timed(lambda b: serve(image_bytes=b)), timed(check)


def bench_guard(work: Path, data: str, overrides: list[str]) -> list[tuple]:
    """Table rows (name, seconds, note)."""
    from trainer.train import run_train

    work.mkdir(parents=True, exist_ok=True)
    quick = [*overrides, "trainer.epochs=1", "trainer.min_steps=0"]  # memory, not accuracy
    config, examples, graph = prepare(work, data, quick)
    model = str(work / "model")
    run_train(examples, str(work / "t" / "transform_graph"), None, model, config)
    bomb = work / "bomb.png"
    size = png_of_zeros(bomb)
    good = next(Path(data).rglob("*.jpg"))
    rows = []
    for case, label in (
        ("signature", "served signature, 4 copies in one request"),
        ("predict", "Classifier.predict_files (visionpipe predict), bomb + a photo"),
        ("decode", "plain baseline: tf.io.decode_image of the same bytes"),
    ):
        r = _case(case, model, bomb, good)
        rows.append(
            (
                f"guard: {label}",
                r["seconds"],
                f"peak {r['peak'] - r['base']:.0f} MB above the process's baseline; {r['outcome']}",
            )
        )
    jpegs = [p.read_bytes() for p in sorted(Path(data).rglob("*.jpg"))[:64]]
    call_ms, check_ms = _check_share(model, jpegs)
    rows.append(
        (
            "guard: header check of 64 JPEGs, share of a served call",
            check_ms / 1000,
            f"{check_ms:.1f} ms of {call_ms:.1f} ms ({check_ms / call_ms:.1%}); the PNG is "
            f"{size / 1024:.0f} KB declaring {SIDE}x{SIDE}",
        )
    )
    return rows
