"""visionpipe benchmarks: one measured run, reported as a table of times and ratios.

Pipeline: the whole local run (kfp.local) on a dataset, with each step's own wall
time (from its MLflow step run) next to the whole run's, so the orchestration
overhead (process start-up, imports, artifact hand-over) is visible.

Ingest: Beam ingest on ~3000 photo-sized JPEGs against a plain single-process loop
doing the same work, and peak memory at 10x the images against 1x
(``benchmarks/ingest_bench.py``).

Transform and serving: transform's images per second next to ingest's, bytes per
transformed example, and the served model on raw bytes against the bare Keras model
on decoded tensors (``benchmarks/serving_bench.py``).

Trainer: the input pipeline alone against training steps, and training with one and
two local workers (``benchmarks/trainer_bench.py``).

Usage: python benchmarks/bench.py --data data/sample [--only pipeline|ingest|serving|trainer]
       [--set k=v ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

STEPS = ("ingest", "transform", "tune", "train", "evaluate", "push")


def step_times(run_id: str) -> dict[str, float]:
    """Seconds each step's MLflow run lasted, for a pipeline run."""
    import mlflow

    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    times = {}
    for child in children:
        step = child.data.tags.get("visionpipe.step")
        if step and child.info.end_time:
            times[step] = (child.info.end_time - child.info.start_time) / 1000
    return times


def bench_pipeline(data: str, overrides: list[str]) -> list[tuple[str, float, str]]:
    """Runs the pipeline once; returns table rows (name, seconds, note)."""
    from pipelines.local import run_local
    from visionpipe.config import load_config

    config = load_config(overrides=overrides)
    started = time.monotonic()
    summary = run_local(data, config)
    total = time.monotonic() - started
    times = step_times(summary.mlflow_run_id)
    rows = [(f"step {s}", times[s], f"{times[s] / total:.1%} of run") for s in STEPS if s in times]
    in_steps = sum(times.values())
    rows.append(("steps together", in_steps, f"{in_steps / total:.1%} of run"))
    overhead = total - in_steps
    rows.append(("orchestration overhead", overhead, f"{overhead / total:.1%} of run"))
    rows.append(
        (
            "whole run (make run's pipeline part)",
            total,
            f"test accuracy {summary.test_accuracy:.4f}",
        )
    )
    return rows


def main() -> int:
    """Runs the benchmarks and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--only", choices=("pipeline", "ingest", "serving", "trainer"))
    parser.add_argument("--photos", type=int, default=3000)
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
        if args.only in (None, "pipeline"):
            os.environ["VISIONPIPE_HOME"] = work  # a fresh store: no champion, no earlier runs
            rows += bench_pipeline(os.path.abspath(args.data), args.set)
    width = max(len(r[0]) for r in rows)
    print(f"\n{'benchmark'.ljust(width)}  {'seconds':>8}  note")
    print(f"{'-' * width}  {'-' * 8}  {'-' * 24}")
    for name, seconds, note in rows:
        print(f"{name.ljust(width)}  {seconds:8.1f}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
