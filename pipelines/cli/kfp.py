"""Verbs for Kubeflow Pipelines: ``compile``, ``submit``, ``schedule`` (KFP and local)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from visionpipe.config import Config, ConfigError
from visionpipe.sections import RETRAIN_REASONS


def add_verbs(command, sub) -> None:
    """``compile``, ``submit`` and the ``schedule`` actions."""
    p = command("compile", compile_, "Compile a pipeline to KFP IR YAML.")
    p.add_argument("--out", default="pipeline.yaml", help="output YAML file")
    p.add_argument(
        "--pipeline",
        choices=("training", "batch-predict"),
        default="training",
        help="the training pipeline (default), or batch prediction with the champion",
    )

    p = command("submit", submit, "Upload the pipeline to Kubeflow Pipelines and start a run.")
    _kfp_arguments(p)
    p.add_argument("--run-name", help="the run's name (default: <pipeline>-<time>)")
    p.add_argument("--wait", action="store_true", help="follow the run; exit 1 unless it succeeds")
    p.add_argument("--timeout", type=float, default=24 * 3600, help="seconds --wait waits at most")
    p.add_argument("--poll-seconds", type=float, default=10.0, help="how often --wait asks")

    p = sub.add_parser("schedule", help="Retrain on a schedule: KFP recurring runs, or locally.")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = command("create", schedule_create, "Create a KFP recurring run.", actions)
    _kfp_arguments(p)
    _cron_arguments(p)
    p.add_argument("--name", help="the recurring run's name (default: <pipeline>-retrain)")
    p = command("list", schedule_list, "List the KFP recurring runs.", actions)
    p.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://localhost:8080")
    p.add_argument("--experiment", help="only this KFP experiment's recurring runs")
    p.add_argument("--namespace", help="Kubernetes namespace (multi-user KFP)")
    p.add_argument("--json", action="store_true", help="print the recurring runs as JSON")
    for action, text in (("pause", "Pause"), ("resume", "Resume"), ("delete", "Delete")):
        p = command(action, schedule_change, f"{text} a KFP recurring run.", actions)
        p.add_argument("id", metavar="ID", help="recurring run id (see schedule list)")
        p.add_argument("--host", required=True, help="KFP API endpoint")
        p.add_argument("--namespace", help="Kubernetes namespace (multi-user KFP)")
    p = command("run-local", schedule_run_local, "Run the local pipeline on a schedule.", actions)
    _cron_arguments(p)
    p.add_argument("--data", required=True, help="folder of class folders, or CSV of path,label")
    p.add_argument("--max-runs", type=int, help="stop after this many triggers (default: never)")
    p.add_argument(
        "--monitor-log",
        nargs="?",
        const="",
        metavar="URI",
        help="before each run, monitor the champion on the prediction log since the last "
        "trigger (default URI: monitor.log_uri); with drift in --retrain-when (its default "
        "then: data_changed,drift) a drift verdict retrains",
    )


def _kfp_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://localhost:8080")
    p.add_argument("--experiment", help="KFP experiment (default: mlflow.experiment); created")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a pipeline parameter (repeatable), e.g. --param data=gs://bucket/images",
    )
    p.add_argument("--package", help="a compiled pipeline YAML (default: compile the config)")
    p.add_argument("--namespace", help="Kubernetes namespace (multi-user KFP)")


def _cron_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cron",
        required=True,
        help="when: 5 cron fields ('0 3 * * *'), 6 with seconds first, or @daily, @hourly, ...",
    )
    p.add_argument("--force", action="store_true", help="retrain even when nothing has changed")
    p.add_argument(
        "--retrain-when",
        metavar="REASONS",
        help=f"when to train, comma-separated of {', '.join(RETRAIN_REASONS)} (default: "
        "pipeline.retrain_when, or data_changed when that is left at always)",
    )


def compile_(args, config: Config) -> None:
    """Writes a pipeline's KFP IR YAML."""
    from pipelines.pipeline import compile_batch_pipeline, compile_pipeline

    if args.pipeline == "batch-predict":
        compile_batch_pipeline(config, args.out)
    else:
        compile_pipeline(config, args.out)
    print(f"wrote {args.out}")


def _package(args, config: Config, tmp: str):
    from pipelines.kfp_remote import Package
    from pipelines.pipeline import compile_pipeline

    return Package.read(args.package or compile_pipeline(config, os.path.join(tmp, "p.yaml")))


def _warn(messages: list[str]) -> None:
    for message in messages:
        print(f"visionpipe: warning: {message}", file=sys.stderr)


def submit(args, config: Config) -> int:
    """Uploads the pipeline and starts a run (``--wait``: follows it)."""
    import tempfile
    import time

    from pipelines import kfp_remote

    with tempfile.TemporaryDirectory(prefix="visionpipe-submit-") as tmp:
        package = _package(args, config, tmp)
        arguments = package.arguments(args.param)  # checked before the endpoint is called
        client = kfp_remote.connect(args.host, args.namespace)
        name = args.run_name or f"{package.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        experiment = args.experiment or config.mlflow.experiment
        run = kfp_remote.submit(client, args.host, package, experiment, arguments, name)
    _warn(package.cluster_warnings(arguments))
    print(f"run {run.run_id}\n{run.url}")
    if not args.wait:
        return 0
    started = time.monotonic()
    state = kfp_remote.wait(client, args.host, run.run_id, args.timeout, args.poll_seconds)
    print(f"run {run.run_id} {state} after {time.monotonic() - started:.0f} s")
    return 0 if state == "SUCCEEDED" else 1


def retrain_config(config: Config, reasons: str) -> Config:
    """``config`` with ``--retrain-when``'s reasons; a bad one is a ConfigError naming it."""
    return config.with_overrides([retrain_override(reasons)])


def retrain_override(reasons: str) -> str:
    """``pipeline.retrain_when=[...]`` for comma-separated reasons."""
    from pipelines.parameters import PARAMETERS

    return PARAMETERS["retrain_when"].as_override(reasons)


def schedule_create(args, config: Config) -> None:
    """Creates a KFP recurring run that retrains when something changed."""
    import tempfile

    from pipelines import kfp_remote
    from pipelines.schedule import Cron

    cron = Cron.parse(args.cron)
    with tempfile.TemporaryDirectory(prefix="visionpipe-schedule-") as tmp:
        package = _package(args, config, tmp)
        defaults = {"only_if_data_changed": not args.force}
        if args.retrain_when:
            retrain_config(config, args.retrain_when)  # a bad value: one line, nothing sent
            defaults["retrain_when"] = args.retrain_when
        arguments = package.arguments(args.param, defaults)
        client = kfp_remote.connect(args.host, args.namespace)
        experiment = args.experiment or config.mlflow.experiment
        name = args.name or f"{package.name}-retrain"
        made = kfp_remote.create_schedule(
            client, args.host, package, experiment, name, cron.kfp, arguments
        )
    _warn(package.cluster_warnings(arguments))
    print(f"recurring run {made.id} ({made.cron}, {made.status})")
    print(kfp_remote.ui_link(args.host, "recurringrun", made.id))


def schedule_list(args, config: Config) -> None:
    """Lists the KFP recurring runs."""
    from pipelines import kfp_remote

    client = kfp_remote.connect(args.host, args.namespace)
    schedules = kfp_remote.list_schedules(client, args.host, args.experiment)
    if args.json:
        print(json.dumps([s.to_dict() for s in schedules]))
        return
    if not schedules:
        print("no recurring runs")
    for s in schedules:
        print(f"{s.id}\t{s.name}\t{s.cron}\t{s.status}\t{s.created}")


def schedule_change(args, config: Config) -> None:
    """Pauses, resumes or deletes a KFP recurring run."""
    from pipelines import kfp_remote

    client = kfp_remote.connect(args.host, args.namespace)
    kfp_remote.change_schedule(client, args.host, args.action, args.id)
    done = {"pause": "paused", "resume": "resumed", "delete": "deleted"}[args.action]
    print(f"recurring run {args.id} {done}")


def schedule_run_local(args, config: Config) -> int:
    """Runs the local pipeline on a cron schedule until stopped."""
    from pipelines import schedule
    from pipelines.cli import interrupt
    from pipelines.schedule import Cron, HomeLock, LocalScheduler, PipelineTrigger
    from visionpipe import storage
    from visionpipe.home import Home

    cron = Cron.parse(args.cron)
    if args.max_runs is not None and args.max_runs < 1:
        raise ConfigError(f"--max-runs must be at least 1. Received: {args.max_runs}")
    home = Home.resolve().root
    passed_on = []
    if args.config:
        passed_on += ["--config", os.path.abspath(args.config)]
    for item in args.set or []:
        passed_on += ["--set", item]
    reasons = args.retrain_when or ("data_changed,drift" if args.monitor_log is not None else "")
    if reasons:
        retrain_config(config, reasons)  # a bad value: one line, before the schedule starts
        passed_on += ["--set", retrain_override(reasons)]
    monitor = None
    if args.monitor_log is not None:
        monitor = args.monitor_log or Home.resolve().prediction_log_for(config)
    trigger = PipelineTrigger(
        storage.absolute(args.data), passed_on, args.force, home / schedule.RUN_LOGS, monitor
    )
    signal.signal(signal.SIGTERM, interrupt)  # stop like Ctrl-C: the run in progress too
    with HomeLock(home):
        scheduler = LocalScheduler(cron, trigger, log_path=home / schedule.LOG_FILE)
        try:
            outcomes = scheduler.run(args.max_runs)
        except KeyboardInterrupt:
            print("scheduler stopped")
            return 0
    for o in outcomes:
        print(json.dumps(o.to_dict()))
    return 1 if outcomes and outcomes[-1].status == "failed" else 0
