"""visionpipe benchmarks: one measured run, reported as a table of times and ratios.

Pipeline: ``visionpipe run`` on a dataset, once with the components in the runner's
process (the default) and once with one process per component (kfp.local's own way),
each step's wall time (from its MLflow step run) next to the whole run's, so the
orchestration overhead (start-up, imports, artifact hand-over) is visible.

Ingest: Beam ingest on ~3000 photo-sized JPEGs against a plain single-process loop
doing the same work, and peak memory at 10x the images against 1x
(``benchmarks/ingest_bench.py``).

Transform and serving: transform's images per second next to ingest's, bytes per
transformed example, and the served model on raw bytes against the bare Keras model
on decoded tensors (``benchmarks/serving_bench.py``).

Trainer: ``visionpipe train`` and a tuning trial against a plain ``model.fit`` of the
same model on the same data (no strategy, no callbacks), the input pipeline alone, and
one against two local workers (``benchmarks/trainer_bench.py``).

Quality: the default tune + train on generated shapes, glyphs and thumbnails (test
accuracy and seconds), the former default augmentation, and a plain RBF SVM
(``benchmarks/quality_bench.py``).

Predict: ``visionpipe predict-batch`` (Beam) against ``visionpipe predict`` and the
served model in-process (the ceiling), its peak memory at 1x and 10x the images, and
``mlflow models serve`` latency and concurrent throughput
(``benchmarks/predict_bench.py``).

Edge: the default model's TFLite float16, TFLite int8 and ONNX exports against the
SavedModel, each in its own runtime: accuracy, top-1 agreement, size and single-image
latency, on the sample data and on glyphs (``benchmarks/edge_bench.py``).

Guard: refusing a 16,000 x 16,000 PNG bomb (the served signature, ``visionpipe
predict``) against decoding it, each case's peak memory in a fresh process, and the
header check's share of a served call (``benchmarks/guard_bench.py``).

Monitoring: false alarms, the detectors each shift trips and estimated against real
accuracy on two kinds of data; the prediction log's cost on predict-batch, monitor
on 10k and 100k records, streaming latency (``benchmarks/monitor_bench.py``).

Load: ``visionpipe serve`` under 1 and then 16 concurrent clients on loopback, valid
requests mixed with bombs, non-images, empty requests, too many rows and too large
bodies: requests/s, p50/p99, answers by kind, the server's peak memory
(``benchmarks/load_bench.py``).

Audit: label-flip recall and precision of evaluate's label audit against cleanlab on the
network's in-sample probabilities, on shapes and glyphs; robustness of a model trained
without and with brightness/contrast augmentation (``benchmarks/audit_bench.py``). The
ingest rows include perceptual hashing against none.

Scale: the whole default pipeline at 1x and 10x (``--scale 1,10,30`` adds 30x) the
sample's images, each step's time and peak memory beside its plain baseline (a loop,
a ``tf.data`` map, a plain ``model.fit``), and how each grows
(``benchmarks/scale_bench.py``).

Usage: python benchmarks/bench.py --data data/sample
       [--only pipeline|ingest|serving|trainer|quality|predict|edge|guard|load|monitor|
               runners|audit|scale] [--scale 1,10,30]
       [--set k=v ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def step_runs(run_id: str, tracking_uri: str) -> dict[str, dict]:
    """Each step run of a pipeline run: seconds, peak memory (MB), params, metrics, hp.*."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    steps = {}
    for child in children:
        step = child.data.tags.get("visionpipe.step")
        if step and child.info.end_time:
            params, metrics = child.data.params, child.data.metrics
            steps[step] = {
                "seconds": (child.info.end_time - child.info.start_time) / 1000,
                "peak_mb": metrics.get("peak_memory_mb", float("nan")),
                "params": params,
                "metrics": metrics,
                "hyperparameters": {
                    k[3:]: _number(v) for k, v in params.items() if k.startswith("hp.")
                },
            }
    return steps


def _number(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(text, text)


def step_times(run_id: str, tracking_uri: str) -> dict[str, float]:
    """Seconds each step's MLflow run lasted, for a pipeline run in the store given."""
    return {step: run["seconds"] for step, run in step_runs(run_id, tracking_uri).items()}


def bench_pipeline(data: str, overrides: list[str], work: str) -> list[tuple[str, float, str]]:
    """Runs ``visionpipe run`` once per isolation mode, each a fresh process on a fresh home.

    The run's wall time is the CLI process's, from outside (start-up and imports
    included, as a user waits); each step's from its MLflow step run.
    """
    from pipelines.pipeline import pipeline_steps
    from visionpipe.config import load_config

    steps = pipeline_steps(load_config(overrides=overrides))  # the pipeline's own order
    rows = []
    for isolation in ("process", "subprocess"):
        home = os.path.join(work, f"pipeline-{isolation}")  # no champion, no earlier runs
        command = [sys.executable, "-m", "pipelines.cli", "run", "--data", data, "--json"]
        command += ["--isolation", isolation]
        for item in overrides:
            command += ["--set", item]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env["VISIONPIPE_HOME"] = home
        started = time.monotonic()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        total = time.monotonic() - started
        if done.returncode:
            raise RuntimeError(f"visionpipe run --isolation {isolation} failed: {done.stdout}")
        summary = json.loads(done.stdout)
        times = step_times(summary["mlflow_run_id"], f"sqlite:///{home}/mlflow.db")
        label = f"[{isolation}]"
        rows += [
            (f"{label} step {s}", times[s], f"{times[s] / total:.1%} of run")
            for s in steps
            if s in times
        ]
        in_steps = sum(times.values())
        overhead = total - in_steps
        rows.append((f"{label} steps together", in_steps, f"{in_steps / total:.1%} of run"))
        rows.append((f"{label} orchestration overhead", overhead, f"{overhead / total:.1%} of run"))
        accuracy = summary["test_accuracy"]
        rows.append((f"{label} whole `visionpipe run`", total, f"test accuracy {accuracy:.4f}"))
    return rows


def main() -> int:
    """Runs the benchmarks and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument(
        "--only",
        choices=(
            "pipeline",
            "ingest",
            "serving",
            "trainer",
            "quality",
            "predict",
            "edge",
            "guard",
            "load",
            "monitor",
            "runners",
            "audit",
            "scale",
        ),
    )
    parser.add_argument("--photos", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=20, help="runs of the runners' repeat test")
    parser.add_argument(
        "--scale",
        default="1,10",
        help="scale benchmark: factors of the sample's 1,500 images (comma-separated; 30 too "
        "if it fits in 20 minutes here)",
    )
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    rows = []
    with tempfile.TemporaryDirectory(prefix="visionpipe-bench-") as work:
        if args.only in (None, "ingest"):
            from benchmarks.ingest_bench import bench_ingest

            rows += bench_ingest(Path(work) / "ingest", photos=args.photos)
        if args.only in (None, "serving"):
            from benchmarks.serving_bench import bench_transform_and_serving

            serving = Path(work) / "serving"
            rows += bench_transform_and_serving(serving, os.path.abspath(args.data), args.set)
        if args.only in (None, "trainer"):
            from benchmarks.trainer_bench import bench_trainer

            rows += bench_trainer(Path(work) / "trainer", os.path.abspath(args.data), args.set)
        if args.only in (None, "quality"):
            from benchmarks.quality_bench import bench_quality

            rows += bench_quality(Path(work) / "quality", args.set)
        if args.only in (None, "predict"):
            from benchmarks.predict_bench import bench_predict

            work_dir = Path(work) / "predict"
            rows += bench_predict(work_dir, os.path.abspath(args.data), args.set, args.photos)
        if args.only in (None, "edge"):
            from benchmarks.edge_bench import bench_edge

            rows += bench_edge(Path(work) / "edge", os.path.abspath(args.data), args.set)
        if args.only in (None, "guard"):
            from benchmarks.guard_bench import bench_guard

            rows += bench_guard(Path(work) / "guard", os.path.abspath(args.data), args.set)
        if args.only in (None, "load"):
            from benchmarks.load_bench import bench_load

            rows += bench_load(Path(work) / "load", os.path.abspath(args.data), args.set)
        if args.only in (None, "monitor"):
            from benchmarks.monitor_bench import bench_costs, bench_quality

            rows += bench_quality(Path(work) / "monitor-quality", args.set)
            rows += bench_costs(Path(work) / "monitor-costs", args.set, args.photos)
        if args.only in (None, "runners"):
            from benchmarks.runner_bench import bench_runners

            rows += bench_runners(Path(work) / "runners", photos=args.photos, repeats=args.repeats)
        if args.only in (None, "audit"):
            from benchmarks.audit_bench import bench_audit, bench_evaluate_growth

            rows += bench_audit(Path(work) / "audit", args.set)
            rows += bench_evaluate_growth(Path(work) / "evaluate", args.set)
        if args.only in (None, "pipeline"):
            rows += bench_pipeline(os.path.abspath(args.data), args.set, work)
        if args.only in (None, "scale"):
            from benchmarks.scale_bench import ScaleError, bench_scale

            try:
                factors = [int(f) for f in args.scale.split(",")]
            except ValueError:
                parser.error(f"--scale {args.scale!r}: factors are whole numbers, e.g. 1,10,30")
            try:
                rows += bench_scale(Path(work) / "scale", args.set, factors)
            except ScaleError as err:
                print(f"bench: {err}", file=sys.stderr)
                return 2
    width = max(len(r[0]) for r in rows)
    print(f"\n{'benchmark'.ljust(width)}  {'seconds':>8}  note")
    print(f"{'-' * width}  {'-' * 8}  {'-' * 24}")
    for name, seconds, note in rows:
        print(f"{name.ljust(width)}  {seconds:8.1f}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
