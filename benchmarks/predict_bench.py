"""Batch prediction against `visionpipe predict` and the in-process ceiling; `mlflow models serve`.

On ~3000 photo-sized JPEGs (320x240), with a model trained briefly on the sample data:

- ``visionpipe predict`` (one process, every file as an argument) and ``visionpipe
  predict-batch`` (the Beam job), both whole commands, start-up included;
- the ceiling: the served model called in-process on the same bytes, pre-batched by 64,
  after a warm-up (no file reading, no start-up, no output);
- peak memory (max RSS of the process and its children) of predict-batch on 1x and
  10x the images;
- one image through ``mlflow models serve`` on loopback: p50 and p95 latency over 200
  requests, then throughput with 4 concurrent clients.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.ingest_bench import make_photos

MEASURE = (
    "import resource, sys\n"
    "from pipelines.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "usage = [resource.getrusage(w).ru_maxrss for w in "
    "(resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]\n"
    "print('MAXRSS_KB', max(usage), file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def _cli(args: list[str], env: dict) -> tuple[float, int, str]:
    """Runs the CLI in a fresh process: (seconds, peak RSS in MB, stdout)."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, *args], env=env, capture_output=True, text=True
    )
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"{args[0]} failed: {done.stderr[-2000:]}")
    rss = [line for line in done.stderr.splitlines() if line.startswith("MAXRSS_KB")]
    return seconds, int(rss[-1].split()[1]) // 1024, done.stdout


def _train_model(work: Path, data: str, overrides: list[str]) -> str:
    from benchmarks.trainer_bench import prepare
    from trainer.train import run_train

    config, examples, graph = prepare(work, data, [*overrides, "trainer.min_steps=0"])
    config = config.with_overrides(["trainer.epochs=2"])
    return run_train(examples, graph.uri, None, str(work / "model"), config).model_uri


def _ceiling(model_dir: str, paths: list[Path]) -> float:
    from visionpipe.serving import Classifier

    classifier = Classifier(model_dir)
    images = [p.read_bytes() for p in paths]
    batches = [images[i : i + 64] for i in range(0, len(images), 64)]
    classifier.classify(batches[0])  # warm-up: tracing and first-use costs
    started = time.monotonic()
    for batch in batches:
        classifier.classify(batch)
    return len(images) / (time.monotonic() - started)


def _in_process(model_dir: str, paths: list[Path], out: Path) -> tuple[float, float, float]:
    """Images/s of predict's and the batch job's work in this process, imports paid.

    Also the seconds a worker's first bundle pays to load the model and trace its first
    call (what ``DoFn.setup`` does once per worker; the ceiling excludes it).
    """
    from components.predict.batch import run_batch_predict
    from visionpipe.config import load_config
    from visionpipe.serving import Classifier

    files = [str(p) for p in paths]
    started = time.monotonic()
    Classifier(model_dir).classify([p.read_bytes() for p in paths[:64]])
    load = time.monotonic() - started
    classifier = Classifier(model_dir)
    classifier.predict_files(files[:64])  # warm-up
    started = time.monotonic()
    classifier.predict_files(files)
    predict = len(files) / (time.monotonic() - started)
    started = time.monotonic()
    run_batch_predict(model_dir, str(paths[0].parent.parent), str(out), load_config())
    return predict, len(files) / (time.monotonic() - started), load


def bench_predict(work: Path, data: str, overrides: list[str], photos: int = 3000) -> list[tuple]:
    """The rows of the table (name, seconds, note)."""
    env = {**os.environ, "VISIONPIPE_HOME": str(work / "home"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    model = _train_model(work / "train", data, overrides)
    small, large = work / "photos-1x", work / "photos-10x"
    make_photos(small, photos // 10)
    make_photos(large, photos)
    paths = sorted(large.rglob("*.jpg"))
    rows = []
    seconds, _, out = _cli(["predict", "--model", model, "--json", *map(str, paths)], env)
    assert len(json.loads(out)) == len(paths)
    predict_rate = len(paths) / seconds
    rows.append(
        (f"visionpipe predict, {len(paths)} JPEGs 320x240", seconds, f"{predict_rate:.0f} images/s")
    )
    batch = ["predict-batch", "--model", model, "--data"]
    seconds, rss_large, _ = _cli([*batch, str(large), "--out", str(work / "out-10x")], env)
    batch_rate = len(paths) / seconds
    ceiling = _ceiling(model, paths)
    rows.append(
        (
            "visionpipe predict-batch (Beam), same JPEGs",
            seconds,
            f"{batch_rate:.0f} images/s = {batch_rate / predict_rate:.2f}x predict, "
            f"{batch_rate / ceiling:.2f}x the ceiling (whole commands, start-up included)",
        )
    )
    in_predict, in_batch, load = _in_process(model, paths, work / "out-in-process")
    rows.append(
        (
            "in process: Classifier.predict_files (predict's work)",
            len(paths) / in_predict,
            f"{in_predict:.0f} images/s",
        )
    )
    rows.append(
        (
            "in process: run_batch_predict (the Beam job)",
            len(paths) / in_batch,
            f"{in_batch:.0f} images/s = {in_batch / in_predict:.2f}x predict (target >= 3), "
            f"{in_batch / ceiling:.2f}x the ceiling (target >= 0.6)",
        )
    )
    steady = len(paths) / (len(paths) / in_batch - load)
    rows.append(
        (
            f"  the same without the model load ({load:.1f} s, once per worker)",
            len(paths) / steady,
            f"{steady:.0f} images/s = {steady / ceiling:.2f}x the ceiling",
        )
    )
    rows.append(
        (
            "ceiling: served model in-process, batches of 64",
            len(paths) / ceiling,
            f"{ceiling:.0f} images/s",
        )
    )
    _, rss_small, _ = _cli([*batch, str(small), "--out", str(work / "out-1x")], env)
    rows.append(
        (
            f"predict-batch peak memory, {photos // 10} vs {photos} images",
            0.0,
            f"{rss_small} MB vs {rss_large} MB = {rss_large / rss_small:.2f}x (target <= 1.3)",
        )
    )
    rows += _serve(work, model, paths[0].read_bytes(), env)
    return rows


def _serve(work: Path, model: str, image: bytes, env: dict) -> list[tuple]:
    """Registers the model, serves the champion with `mlflow models serve`, measures it."""
    from pipelines.adapters import mlflow_tracking as tracking
    from pipelines.adapters.mlflow_model import serve_command
    from pipelines.execute import run_step
    from visionpipe import features as F
    from visionpipe.config import load_config

    os.environ["VISIONPIPE_HOME"] = env["VISIONPIPE_HOME"]
    blessing = work / "blessing"
    blessing.mkdir(exist_ok=True)
    (blessing / F.BLESSING_FILE).write_text(json.dumps({"blessed": True, "candidate": {}}))
    (blessing / F.EXAMPLE_IMAGE_FILE).write_bytes(image)
    config = load_config(overrides=[f"push.serving_root={work / 'serving'}"])
    run_step("push", config, model=model, blessing=str(blessing))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv, server_env = serve_command(
        f"models:/{config.push.model_name}@champion", tracking.tracking_uri(config), port
    )
    server = subprocess.Popen(
        argv, env=server_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}/invocations"
    body = json.dumps(
        {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(image).decode()]]}}
    ).encode()

    def call() -> float:
        started = time.monotonic()
        request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
        return time.monotonic() - started

    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                call()
                break
            except OSError:
                time.sleep(1)
        for _ in range(10):
            call()  # warm-up
        latencies = sorted(call() for _ in range(200))
        p50 = statistics.median(latencies) * 1000
        p95 = latencies[int(0.95 * len(latencies)) - 1] * 1000
        started = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda _: call(), range(200)))
        concurrent = 200 / (time.monotonic() - started)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return [
        (
            "mlflow models serve, 1 image, 200 requests",
            sum(latencies),
            f"p50 {p50:.1f} ms, p95 {p95:.1f} ms",
        ),
        (
            "mlflow models serve, 4 concurrent clients",
            200 / concurrent,
            f"{concurrent:.0f} requests/s",
        ),
    ]
