"""Monitoring: whether the detectors are right, and what logging and monitoring cost.

Quality, on a model the default pipeline trains, for the sample (shapes) and for a kind
the defaults were not shaped on (glyphs):

- false alarms: windows of fresh images from the training distribution (new seeds);
- each shift (darker, blurred, inverted, unseen classes): the detectors that alarm;
- accuracy estimated without labels against the real accuracy of the same images.

Cost, each against the plain baseline in the same run:

- ``predict-batch`` with the prediction log on against off (the same Beam job);
- ``monitor`` on 10k and 100k log records, against reading the records alone;
- streaming: seconds from a file's arrival to its prediction, against scoring one
  new file with ``visionpipe predict`` (a process per file).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from benchmarks.trainer_bench import prepare

KINDS = {
    "shapes": dict(kind="shapes", classes=5, per_class=300, size=64, seed=0),
    "glyphs": dict(kind="glyphs", classes=6, per_class=200, size=64, seed=1),
}
WINDOWS = 20
ATTEMPTS = 6  # predict-batch with and without the log, each first in half of the pairs


def _trained(work: Path, spec: dict, overrides: list[str]):
    """The default model on one kind, evaluated (its profile made): (config, model, profile)."""
    from components.evaluate.evaluate import run_evaluate
    from pipelines.sample_data import SampleSpec, generate
    from trainer.train import run_train

    data = work / "images"
    generate(data, SampleSpec(**spec))
    config, examples, graph = prepare(work, str(data), overrides)
    model = run_train(examples, graph.uri, None, str(work / "model"), config).model_uri
    run_evaluate(str(work / "raw"), model, str(work / "blessing"), config)
    profile = json.loads((work / "blessing" / "reference_profile.json").read_text())
    return config, model, profile


def _window(classifier, work: Path, name: str, **spec):
    from components.monitor.monitor import observe_files
    from pipelines.sample_data import SampleSpec, generate
    from visionpipe import sources

    folder = work / "windows" / name
    generate(folder, SampleSpec(**spec))
    found = sources.list_sources(str(folder / "labels.csv"))
    obs, _ = observe_files(classifier, [s.uri for s in found], 64)
    truth = {s.uri: s.label for s in found}
    obs.labels = np.array([truth[k] for k in obs.keys], dtype=object)
    return obs


def bench_quality(work: Path, overrides: list[str]) -> list[tuple]:
    """Rows: false alarms, each shift's detectors, estimated against real accuracy."""
    from components.monitor.monitor import settings_of
    from visionpipe.drift import detect
    from visionpipe.serving import Classifier

    rows = []
    for kind, spec in KINDS.items():
        started = time.monotonic()
        config, model, profile = _trained(work / kind, spec, overrides)
        classifier = Classifier(model, monitored=True)
        settings = settings_of(config.monitor)
        base = {"kind": spec["kind"], "classes": spec["classes"], "size": spec["size"]}
        alarms, errors, which = 0, [], Counter()
        for i in range(WINDOWS):
            obs = _window(classifier, work / kind, f"same{i}", **base, per_class=20, seed=100 + i)
            report = detect(profile, obs, settings)
            alarms += report.drift
            which.update(report.alarms)
            errors.append(report.estimated_accuracy - float(np.mean(obs.classes == obs.labels)))
        n = WINDOWS * 20 * spec["classes"]
        rows.append(
            (
                f"monitor {kind}: {WINDOWS} same-distribution windows",
                time.monotonic() - started,
                f"{alarms}/{WINDOWS} alarmed ({alarms / WINDOWS:.0%}"
                + (f": {', '.join(f'{k} {v}' for k, v in which.items())}" if which else "")
                + "); test accuracy "
                f"{profile['test_accuracy']:.3f}; estimated - real accuracy: mean "
                f"{np.mean(errors):+.3f}, max |{np.max(np.abs(errors)):.3f}| ({n} images)",
            )
        )
        shifts = {
            "darker": dict(shift="darker", per_class=20),
            "blurred": dict(shift="blurred", per_class=20),
            "inverted x300": dict(shift="inverted", per_class=300 // spec["classes"]),
        }
        for name, extra in shifts.items():
            started = time.monotonic()
            obs = _window(classifier, work / kind, name, **base, seed=300, **extra)
            report = detect(profile, obs, settings)
            real = float(np.mean(obs.classes == obs.labels))
            rows.append(
                (
                    f"monitor {kind}: {name} ({len(obs)} images)",
                    time.monotonic() - started,
                    f"alarms {', '.join(report.alarms) or 'none'}; estimated accuracy "
                    f"{report.estimated_accuracy:.3f}, real {real:.3f}",
                )
            )
        from pipelines.sample_data import KINDS as GENERATED

        unseen = len(GENERATED[spec["kind"]][0]) - spec["classes"]
        started = time.monotonic()
        extra = dict(kind=spec["kind"], size=spec["size"], first_class=spec["classes"])
        obs = _window(classifier, work / kind, "unseen", **extra, classes=unseen, per_class=25)
        report = detect(profile, obs, settings)
        rows.append(
            (
                f"monitor {kind}: {unseen} unseen classes ({len(obs)} images)",
                time.monotonic() - started,
                f"alarms {', '.join(report.alarms) or 'none'}; estimated accuracy "
                f"{report.estimated_accuracy:.3f} (real: 0, none is a known class)",
            )
        )
    return rows


def bench_costs(work: Path, overrides: list[str], photos: int) -> list[tuple]:
    """Rows: logging overhead, monitor time on 10k and 100k records, streaming latency."""
    from benchmarks.ingest_bench import make_photos
    from components.predict.batch import run_batch_predict
    from visionpipe.home import HOME_ENV

    config, model, profile = _trained(work / "model", KINDS["shapes"], overrides)
    images = work / "photos"
    make_photos(images, photos)
    rows = []
    times = {"off": [], "on": []}
    # One untimed job first: the photos in the page cache, the model's files too. Without
    # it, and with "off" always first, every "on" ran 5-11% faster than its "off".
    os.environ[HOME_ENV] = str(work / "home-warm")
    run_batch_predict(model, str(images), str(work / "out-warm"), config)
    for attempt in range(ATTEMPTS):  # alternated, so drift of the machine hits both alike;
        for mode in ("off", "on") if attempt % 2 == 0 else ("on", "off"):  # order too
            os.environ[HOME_ENV] = str(work / f"home-{mode}-{attempt}")
            run_config = config.with_overrides([f"monitor.log={str(mode == 'on').lower()}"])
            started = time.monotonic()
            run_batch_predict(model, str(images), str(work / f"out-{mode}-{attempt}"), run_config)
            times[mode].append(time.monotonic() - started)
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    pairs = sorted(b / a - 1 for a, b in zip(times["off"], times["on"], strict=True))
    rows.append(
        (
            f"predict-batch {photos} JPEGs 320x240, log on",
            on,
            f"log off (the same job): {off:.1f} s; overhead {on / off - 1:+.1%} (medians of "
            f"{ATTEMPTS}; pairs {', '.join(f'{r:+.0%}' for r in pairs)})",
        )
    )
    logged = sorted((work / "home-on-0" / "predictions").rglob("*.jsonl"))
    records = [json.loads(line) for f in logged for line in f.read_text().splitlines()]
    digest = records[0]["digest"]
    for count in (10_000, 100_000):
        rows.append(_monitor_cost(work / f"log-{count}", records, count, digest, profile, config))
    rows.append(_stream_latency(work / "stream", model, images))
    return rows


def _monitor_cost(folder: Path, records, count: int, digest: str, profile, config) -> tuple:
    """``monitor`` over ``count`` records (the real ones, repeated with new hashes)."""
    from components.monitor.monitor import settings_of
    from visionpipe.drift import Observations, detect
    from visionpipe.predlog import read_log

    folder.mkdir(parents=True)
    per_file = 1000
    for start in range(0, count, per_file):
        lines = []
        for i in range(start, min(start + per_file, count)):
            record = dict(records[i % len(records)], sha256=f"{i:064x}")
            lines.append(json.dumps(record, separators=(",", ":")))
        (folder / f"{start:09d}.jsonl").write_text("\n".join(lines) + "\n")
    started = time.monotonic()
    plain = [
        json.loads(line)
        for f in sorted(folder.glob("*.jsonl"))
        for line in f.read_text().splitlines()
    ]
    baseline = time.monotonic() - started
    started = time.monotonic()
    window = read_log(str(folder), digest)
    read = time.monotonic() - started
    report = detect(profile, Observations.from_records(window.records), settings_of(config.monitor))
    total = time.monotonic() - started
    assert len(plain) == len(window.records) == count
    return (
        f"monitor on {count} log records",
        total,
        f"read {read:.1f} s + detectors {total - read:.1f} s; plain json.loads of the "
        f"records {baseline:.1f} s ({total / baseline:.1f}x); drift {report.drift}",
    )


def _stream_latency(work: Path, model: str, images: Path, files: int = 20) -> tuple:
    """Seconds from a file's arrival to its prediction row, against `visionpipe predict`."""
    from components.predict.batch import check_model
    from components.predict.stream import FileStream
    from visionpipe.serving import Classifier

    watch, out = work / "watch", work / "out"
    watch.mkdir(parents=True)
    labels = check_model(model)
    stream = FileStream(Classifier(model), labels, str(watch), str(out), settle_seconds=0.2)
    runner = threading.Thread(target=stream.run, kwargs={"poll_seconds": 0.2, "idle_stop": 5})
    runner.start()
    sources = sorted(images.rglob("*.jpg"))[:files]
    latencies = []
    for i, source in enumerate(sources):
        arrived = time.monotonic()
        shutil.copy(source, watch / f"new{i}.jpg")
        while stream.state.predicted <= i:
            time.sleep(0.01)
        latencies.append(time.monotonic() - arrived)
    runner.join()
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "predict", "--model", model, str(sources[0])],
        capture_output=True,
        check=True,
    )
    one = time.monotonic() - started
    median = statistics.median(latencies)
    return (
        f"predict-stream: arrival to prediction ({files} files)",
        median,
        f"median {median:.2f} s, max {max(latencies):.2f} s (poll 0.2 s, settle 0.2 s); "
        f"visionpipe predict of one new file: {one:.1f} s ({one / median:.0f}x)",
    )
