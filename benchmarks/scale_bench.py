"""Scale: the whole default pipeline at 1x, 10x (and 30x) the sample's images, each step
against the plain code a competent engineer would write for the same job, in one run.

For each factor ``f``: generated shapes, the sample's kind (5 classes x 300·f images),
then ``visionpipe run`` on them in a fresh home, a process of its own as a user runs
it. Each step's wall time and peak memory come from its MLflow step run
(``peak_memory_mb``); the whole run's from outside (wall clock, and ``ru_maxrss`` of
the process from ``os.wait4``). Beside each step, its plain baseline on the same
images, in this process:

- ingest: one loop that reads, checks and writes every image as an example
  (``ingest_bench.plain_loop``);
- transform: a ``tf.data`` map of the same ``decode_and_resize`` over those examples,
  writing the same transformed examples, with the label vocabulary and the pixel sums
  in NumPy;
- train: a plain ``model.fit`` of the same model (``build_model`` with the run's
  hyperparameters) on in-memory arrays of the run's training split, for the epochs the
  run trained, no strategy and no callbacks (loading the arrays is not timed);
- evaluate: ``model.predict`` of that model on the test split and its accuracy;
- push: copying the pushed SavedModel.

The growth of a step is its time at ``f`` over its time at 1x: linear is ``f``.
A factor whose data would not fit the machine's free memory or disk is refused
before anything is generated, with the estimate.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SAMPLE = dict(kind="shapes", classes=5, per_class=300, size=64, seed=0)
# Disk per image, measured on the sample: the JPEG (about 4 KB on disk), ingest's and
# transform's examples, the plain baselines' two copies, and room for the rest.
DISK_PER_IMAGE = 24 * 1024
DISK_FIXED = 400 * 2**20  # models, MLflow's store, logs
MEMORY_FIXED = 2 * 2**30  # the pipeline's own peak at the sample size is about 1.3 GB


class ScaleError(ValueError):
    """A scale factor that does not fit this machine."""


@dataclass(frozen=True)
class Estimate:
    images: int
    disk_bytes: int
    memory_bytes: int


def estimate(factor: int, image_size: int) -> Estimate:
    """What ``factor`` times the sample needs: disk for every copy, memory for the arrays.

    Memory: the pipeline's fixed peak, plus the plain fit's arrays (uint8 images and
    their float32 copy in the batch) of the training split, about 80% of the images.
    """
    images = SAMPLE["classes"] * SAMPLE["per_class"] * factor
    pixels = image_size * image_size * 3
    return Estimate(
        images,
        DISK_FIXED + images * DISK_PER_IMAGE,
        MEMORY_FIXED + int(0.8 * images) * pixels * 5,
    )


def check_fits(factors: list[int], image_size: int, work: Path) -> None:
    """Raises ScaleError, naming the factor and the estimate, unless every factor fits."""
    available = _available_memory()
    free = shutil.disk_usage(_existing(work)).free
    needed_disk = 0
    for factor in factors:
        if factor < 1:
            raise ScaleError(f"scale factor {factor}: must be 1 or more")
        need = estimate(factor, image_size)
        needed_disk += need.disk_bytes  # every factor's files stay until the end
        if need.memory_bytes > available:
            raise ScaleError(
                f"scale factor {factor} ({need.images} images) needs about "
                f"{need.memory_bytes / 2**30:.1f} GiB of memory; {available / 2**30:.1f} GiB "
                "is available"
            )
        if needed_disk > free:
            raise ScaleError(
                f"scale factor {factor} ({need.images} images) needs about "
                f"{needed_disk / 2**30:.1f} GiB of disk under {work} with the factors before "
                f"it; {free / 2**30:.1f} GiB is free"
            )


def _available_memory() -> int:
    with open("/proc/meminfo") as info:
        for line in info:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _existing(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def bench_scale(work: Path, overrides: list[str], factors: list[int]) -> list[tuple]:
    """Table rows per factor and step, and a Markdown table (printed) for the README."""
    from pipelines.sample_data import SampleSpec, generate
    from visionpipe.config import load_config

    config = load_config(overrides=overrides)
    check_fits(factors, config.transform.image_size, work)
    results = {}
    for factor in factors:
        data = work / f"x{factor}" / "images"
        generate(data, SampleSpec(**{**SAMPLE, "per_class": SAMPLE["per_class"] * factor}))
        run = _pipeline(work / f"x{factor}", data, overrides)
        plain = _baselines(work / f"x{factor}", data, run, config)
        results[factor] = (run, plain)
    rows = _rows(results)
    print(_markdown(results), flush=True)
    return rows


STEPS = ("ingest", "validate", "data-check", "transform", "tune", "train", "evaluate", "push")


def _pipeline(work: Path, data: Path, overrides: list[str]) -> dict:
    """``visionpipe run`` in a fresh home: wall time, peak memory, steps, accuracy."""
    from benchmarks.bench import step_runs

    home = work / "home"
    command = [sys.executable, "-m", "pipelines.cli", "run", "--data", str(data), "--json"]
    for item in overrides:
        command += ["--set", item]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["VISIONPIPE_HOME"] = str(home)
    out = work / "run.json"
    started = time.monotonic()
    with open(out, "w") as stdout, open(work / "run.err", "w") as stderr:
        child = subprocess.Popen(command, env=env, stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.monotonic() - started
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"visionpipe run on {data} failed: {(work / 'run.err').read_text()}")
    summary = json.loads(out.read_text())
    steps = step_runs(summary["mlflow_run_id"], f"sqlite:///{home}/mlflow.db")
    [root] = list((home / "pipeline_root").glob("*/transform"))
    return {
        "seconds": seconds,
        "peak_mb": usage.ru_maxrss / 1024,
        "steps": steps,
        "accuracy": summary["test_accuracy"],
        "images": summary.get("examples", {}),
        "transform": root,
        "pushed": summary.get("pushed_path", ""),
    }


def _baselines(work: Path, data: Path, run: dict, config) -> dict[str, dict]:
    """Each step's plain baseline on the same images: seconds and peak memory (MB)."""
    from benchmarks.ingest_bench import plain_loop
    from pipelines.execute import peak_memory_mb, reset_peak_memory

    plain = {}

    def timed(step, fn):
        reset_peak_memory()
        started = time.monotonic()
        value = fn()
        plain[step] = {"seconds": time.monotonic() - started, "peak_mb": peak_memory_mb()}
        return value

    import tensorflow as tf  # noqa: F401  (imported before the clocks start, as in the run)

    raw = work / "plain-ingest"
    timed("ingest", lambda: plain_loop(data, raw))
    timed("transform", lambda: plain_transform(raw, work / "plain-transform", config))
    model, arrays = _load_for_fit(run, config)
    epochs = int(run["steps"]["train"]["metrics"]["epochs_run"])
    timed("train", lambda: _plain_fit(model, arrays, config, epochs))
    accuracy = timed("evaluate", lambda: _plain_evaluate(model, arrays))
    plain["evaluate"]["accuracy"] = accuracy
    plain["train"]["epochs"] = epochs
    if run["pushed"]:
        timed("push", lambda: shutil.copytree(run["pushed"], work / "plain-push"))
    return plain


def plain_transform(raw: Path, out: Path, config) -> int:
    """The plain transform: decode and resize every example, write them, count the stats.

    The same ``decode_and_resize`` and output encoding as the transform step, in a
    ``tf.data`` map (parallel, batched), one output file; the label vocabulary with its
    counts and the per-channel pixel sums in NumPy.
    """
    import numpy as np
    import tensorflow as tf

    from visionpipe import features as F
    from visionpipe.example_codec import encode_example
    from visionpipe.pixels import decode_and_resize

    size, mode = config.transform.image_size, config.transform.resize_mode
    spec = {
        F.IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string),
        F.LABEL_TEXT: tf.io.FixedLenFeature([], tf.string),
    }

    def parse(records):
        parsed = tf.io.parse_example(records, spec)
        return decode_and_resize(parsed[F.IMAGE_ENCODED], size, mode), parsed[F.LABEL_TEXT]

    files = sorted(str(p) for p in raw.glob("*.tfrecord.gz"))
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(256)
    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    sums = np.zeros(3, np.int64)
    squares = np.zeros(3, np.int64)
    written = 0
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    with tf.io.TFRecordWriter(str(out / "data.tfrecord.gz"), options) as writer:
        batches = []
        for pixels, labels in ds:
            batches.append((pixels.numpy(), [label.decode() for label in labels.numpy()]))
        vocabulary = sorted({label for _, names in batches for label in names})
        index = {label: i for i, label in enumerate(vocabulary)}
        for pixels, names in batches:
            values = pixels.reshape(-1, 3).astype(np.int64)
            sums += values.sum(axis=0)
            squares += np.square(values).sum(axis=0)
            for row, name in zip(pixels, names, strict=True):
                counts[name] = counts.get(name, 0) + 1
                writer.write(
                    encode_example(
                        {F.TRANSFORMED_IMAGE: row.tobytes(), F.TRANSFORMED_LABEL: index[name]}
                    )
                )
                written += 1
    pixels_seen = max(int(sum(counts.values())) * size * size, 1)
    statistics = {
        "labels": vocabulary,
        "label_counts": counts,
        "image_mean": (sums / pixels_seen).tolist(),
        "image_std": np.sqrt(squares / pixels_seen - (sums / pixels_seen) ** 2).tolist(),
    }
    (out / "statistics.json").write_text(json.dumps(statistics))
    return written


def _load_for_fit(run: dict, config):
    """The run's model, built afresh with its hyperparameters, and the splits as arrays."""
    import keras_tuner as kt
    import numpy as np

    from trainer.data import make_dataset
    from trainer.model import build_model, model_inputs
    from visionpipe.transform_graph import TransformGraph

    graph = TransformGraph.load(str(run["transform"] / "transform_graph"))
    examples = str(run["transform"] / "examples")
    arrays = {}
    for split in ("train", "test"):
        ds = make_dataset(examples, split, graph.image_shape, 256)
        batches = [(a.numpy(), b.numpy()) for a, b in ds]
        arrays[split] = (
            np.concatenate([a for a, _ in batches]),
            np.concatenate([b for _, b in batches]),
        )
    hp = kt.HyperParameters()
    for name, value in run["steps"]["train"]["hyperparameters"].items():
        hp.Fixed(name, value)
    model = build_model(hp, **model_inputs(graph), trainer=config.trainer, tuner=config.tuner)
    return model, arrays


def _plain_fit(model, arrays, config, epochs: int) -> None:
    x, y = arrays["train"]
    model.fit(x, y, batch_size=config.trainer.batch_size, epochs=epochs, shuffle=True, verbose=0)


def _plain_evaluate(model, arrays) -> float:
    import numpy as np

    x, y = arrays["test"]
    predicted = np.argmax(model.predict(x, batch_size=256, verbose=0), axis=1)
    return float(np.mean(predicted == y))


def _rows(results: dict) -> list[tuple]:
    rows = []
    base_factor = min(results)
    base_run, base_plain = results[base_factor]
    for factor, (run, plain) in results.items():
        tag = f"scale {factor}x ({_count(run)} images)"
        for step in STEPS:
            if step not in run["steps"]:
                continue
            seconds = run["steps"][step]["seconds"]
            note = f"peak {run['steps'][step]['peak_mb']:.0f} MB"
            if step in plain:
                ratio = plain[step]["seconds"] / seconds
                note += f"; plain {plain[step]['seconds']:.1f} s ({ratio:.2f}x the plain speed)"
            if factor != base_factor:
                growth = seconds / base_run["steps"][step]["seconds"]
                note += f"; growth {growth:.1f}x (linear {factor // base_factor})"
            rows.append((f"{tag}: {step}", seconds, note))
        in_steps = sum(s["seconds"] for s in run["steps"].values())
        note = f"peak {run['peak_mb']:.0f} MB; test accuracy {run['accuracy']:.4f}"
        if factor != base_factor:
            note += f"; growth {run['seconds'] / base_run['seconds']:.1f}x"
        rows.append((f"{tag}: orchestration overhead", run["seconds"] - in_steps, ""))
        rows.append((f"{tag}: whole `visionpipe run`", run["seconds"], note))
    return rows


def _count(run: dict) -> int:
    return sum(run["images"].values()) if run["images"] else 0


def _markdown(results: dict) -> str:
    """The README's table: a column pair (visionpipe | plain) per factor, growth at the end."""
    factors = sorted(results)
    base = factors[0]
    head = ["step"]
    for f in factors:
        head += [f"{f}x visionpipe", f"{f}x plain"]
    head += [f"growth {f}x/{base}x" for f in factors[1:]]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for step in (*STEPS, "whole run"):
        cells = [step]
        for f in factors:
            run, plain = results[f]
            if step == "whole run":
                cells += [
                    f"{run['seconds']:.1f} s, {run['peak_mb']:.0f} MB, acc {run['accuracy']:.3f}",
                    f"acc {plain['evaluate']['accuracy']:.3f}",
                ]
                continue
            ours = run["steps"].get(step)
            cells.append(f"{ours['seconds']:.1f} s, {ours['peak_mb']:.0f} MB" if ours else "-")
            theirs = plain.get(step)
            cells.append(f"{theirs['seconds']:.1f} s" if theirs else "-")
        for f in factors[1:]:
            if step == "whole run":
                cells.append(f"{results[f][0]['seconds'] / results[base][0]['seconds']:.1f}x")
                continue
            ours, first = results[f][0]["steps"].get(step), results[base][0]["steps"].get(step)
            cells.append(f"{ours['seconds'] / first['seconds']:.1f}x" if ours and first else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
