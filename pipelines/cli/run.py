"""Verbs around whole runs: ``run`` (the local pipeline), ``compare`` and ``sample-data``."""

from __future__ import annotations

import contextlib
import json
import logging
import os

from pipelines.tasks import ISOLATIONS
from visionpipe.config import Config, ConfigError
from visionpipe.sections import RETRAIN_REASONS


def add_sample_data(command) -> None:
    """``sample-data``: a built-in synthetic dataset."""
    from pipelines.sample_data import SHIFTS

    p = command("sample-data", sample_data, "Generate a built-in synthetic image dataset.")
    p.add_argument("--out", required=True, help="output folder (folder-per-class + labels.csv)")
    p.add_argument(
        "--kind",
        default="shapes",
        choices=("shapes", "glyphs", "thumbnails"),
        help="shapes (the sample), glyphs (letters and digits that mirroring confuses) or "
        "thumbnails (low-detail layouts upscaled)",
    )
    p.add_argument("--classes", type=int, default=5, help="how many classes (default 5)")
    p.add_argument("--per-class", type=int, default=300, help="images per class (default 300)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed, the same set")
    p.add_argument(
        "--first-class",
        type=int,
        default=0,
        help="start at this class of the kind's list (classes a model was not trained on)",
    )
    p.add_argument(
        "--shift",
        default="none",
        choices=SHIFTS,
        help="change every image (darker, blurred, inverted): drift to try monitor on",
    )


def add_schema(command, sub) -> None:
    """``schema infer``: the data schema validation checks against, from ingest's output."""
    p = sub.add_parser("schema", help="The data schema validation checks against.")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = command("infer", schema_infer, "Write the schema ingest's examples pass, to edit.", actions)
    p.add_argument("--examples", required=True, help="ingest's output directory")
    p.add_argument("--out", default="schema.yaml", help="the schema YAML to write")


def schema_infer(args, config: Config) -> None:
    """Profiles the examples and writes the schema they pass (``validation.schema_uri``)."""
    from components.validate.profile import measure, summarize
    from components.validate.schema import infer_schema, write_schema
    from visionpipe import storage

    if not storage.exists(args.examples):
        raise ConfigError(f"schema infer: --examples {args.examples}: no such folder")
    schema = infer_schema(summarize(measure(args.examples, config), config))
    write_schema(schema, args.out)
    print(
        f"wrote {args.out}: {len(schema['classes'])} classes, formats "
        f"{', '.join(schema['formats'])}, ranges of {len(schema['ranges'])} properties"
    )


def add_verbs(command) -> None:
    """``run`` and ``compare``."""
    p = command("run", run, "Run the whole pipeline locally (kfp.local, no cluster).")
    p.add_argument("--data", required=True, help="folder of class folders, or CSV of path,label")
    p.add_argument("--json", action="store_true", help="print only the summary, as one JSON object")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="stream every step's output to the console too (it always goes to the log file)",
    )
    p.add_argument(
        "--isolation",
        choices=ISOLATIONS,
        default="process",
        help="run the components in this process (default; TensorFlow is imported once), "
        "each in a Python process of its own, or each in a container of pipeline.image "
        "(Docker or Podman; build it with make image)",
    )
    p.add_argument(
        "--only-if-data-changed",
        action="store_true",
        help="stop after ingest when the data, model settings and version equal the last "
        "successful run's (as schedules do); stands for --retrain-when data_changed",
    )
    p.add_argument(
        "--retrain-when",
        metavar="REASONS",
        help=f"when to train, comma-separated of {', '.join(RETRAIN_REASONS)} (drift: a "
        "monitor run found drift since the last training; default: pipeline.retrain_when)",
    )

    p.add_argument(
        "--no-cache",
        action="store_true",
        help="run ingest and transform even when the step cache has their outputs for "
        "unchanged inputs (pipeline.cache: false)",
    )

    p = command(
        "relabel",
        relabel,
        "Training images whose label is probably wrong, as a CSV to correct; or apply one.",
    )
    p.add_argument(
        "--issues",
        help="a label_issues.csv (evaluate's output; default: the newest pipeline run's)",
    )
    p.add_argument("--apply", metavar="FIXES", help="a corrected path,label,suggested CSV")
    p.add_argument("--data", help="with --apply: the dataset the fixes are for")
    p.add_argument(
        "--out",
        required=True,
        help="the CSV to write: path,label,suggested; with --apply, the whole dataset as "
        "path,label,... to run on",
    )

    p = command("compare", compare, "Compare pipeline runs from MLflow: a table and a chart.")
    p.add_argument("--experiment", help="MLflow experiment (default: mlflow.experiment)")
    p.add_argument("--last", type=int, default=20, help="how many of the latest runs")
    p.add_argument("--metric", default="test_accuracy", help="sort by this pipeline-run metric")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument(
        "--include-skipped",
        action="store_true",
        help="also list runs that stopped after ingest because nothing had changed",
    )
    p.add_argument(
        "--chart",
        help="PNG of the metric across runs and of training curves "
        "(default: <VISIONPIPE_HOME>/compare.png)",
    )


def sample_data(args, config: Config) -> None:
    """Writes a generated dataset."""
    from pipelines.sample_data import SampleSpec, generate

    try:
        spec = SampleSpec(
            args.classes,
            args.per_class,
            args.size,
            args.seed,
            args.kind,
            first_class=args.first_class,
            shift=args.shift,
        )
    except ValueError as err:
        raise ConfigError(f"sample-data: {err}") from None
    counts = generate(args.out, spec)
    print(f"wrote {sum(counts.values())} images in {len(counts)} classes to {args.out}")


def run(args, config: Config) -> int:
    """The whole pipeline under kfp.local: a line per step, a summary, the log in MLflow."""
    from pipelines.local import check_data, local_containers

    if args.retrain_when:
        from pipelines.cli.kfp import retrain_config

        config = retrain_config(config, args.retrain_when)
    if args.no_cache:
        config = config.with_overrides(["pipeline.cache=false"])
    check_data(args.data, config)  # bad data: one error line, nothing written
    with contextlib.ExitStack() as stack:
        containers = None
        if args.isolation == "container":  # no engine, no image: one error line, no run
            containers = stack.enter_context(local_containers(args.data, config))
        return _run(args, config, containers)


def _run(args, config: Config, containers) -> int:
    from pipelines.console import OutputCapture, RunDisplay, format_summary
    from pipelines.local import StepFailed, run_local, run_name
    from pipelines.pipeline import pipeline_steps
    from visionpipe.home import Home

    name = run_name(config)
    log_path = Home.resolve().root / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    steps = pipeline_steps(config)
    capture = OutputCapture(str(log_path), echo=args.verbose, console_fd=2 if args.json else 1)
    with capture:
        live = False if args.verbose else None
        display = RunDisplay(capture.console, steps, live=live, sync=capture.sync)
        capture.on_event = display.event
        if not args.json:
            print(f"visionpipe run {name}  (log: {log_path})", file=capture.console)
        try:
            with display:
                summary = run_local(
                    args.data,
                    config,
                    only_if_data_changed=args.only_if_data_changed,
                    isolation=args.isolation,
                    observer=display,
                    name=name,
                    containers=containers,
                )
        except StepFailed as failed:
            _log_to_mlflow(failed.mlflow_run_id, log_path, config)
            print(
                f"\nvisionpipe: step {failed.step} failed: {failed.message}\nfull log: {log_path}",
                file=capture.console,
            )
            return 1
        except KeyboardInterrupt:
            step = display.current or "the pipeline"
            print(
                f"\nvisionpipe: interrupted during {step}; the finished steps' outputs are "
                f"kept under {Home.resolve().pipeline_root}, the MLflow run is marked FAILED."
                f"\nfull log: {log_path}",
                file=capture.console,
            )
            return 130
    _log_to_mlflow(summary.mlflow_run_id, log_path, config)
    if args.json:
        print(json.dumps({**summary.to_dict(), "log": str(log_path)}))
        return 0
    home = Home.resolve()
    ui_hint = (
        f"make mlflow-ui   (or: mlflow ui --backend-store-uri {summary.tracking_uri} "
        f"--default-artifact-root {home.mlflow_artifacts})"
    )
    print(format_summary(summary, steps, ui_hint, run_page(summary)))
    print(f"  log         {log_path}")
    return 0


LOCAL_UI = "http://127.0.0.1:5000"  # make mlflow-ui


def run_page(summary) -> str:
    """The pipeline run's page in the MLflow UI, in its model-training view.

    MLflow 3.17's UI opens every experiment in its GenAI view (traces, token usage)
    unless the browser chose otherwise or the link says ``workflowType=machine_learning``;
    the experiment's ``mlflow.experimentKind`` tag is not what it reads. A local store's
    page is the one ``make mlflow-ui`` serves; a tracking server's is on that server.
    """
    from pipelines.adapters import mlflow_tracking as tracking

    uri = summary.tracking_uri
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else LOCAL_UI
    try:
        experiment = tracking.client(uri).get_run(summary.mlflow_run_id).info.experiment_id
    except Exception:  # noqa: BLE001 - a link is a convenience, never an error
        return ""
    return (
        f"{base}/#/experiments/{experiment}/runs/{summary.mlflow_run_id}"
        "?workflowType=machine_learning"
    )


def _log_to_mlflow(run_id: str, log_path, config: Config) -> None:
    """The run's log file as an artifact of its MLflow run (best effort after a failure)."""
    from pipelines.adapters import mlflow_tracking as tracking

    try:
        tracking.client(tracking.tracking_uri(config)).log_artifact(run_id, str(log_path))
    except Exception as err:  # noqa: BLE001 - an unreachable store must not hide the error
        logging.getLogger(__name__).warning("log not stored in MLflow: %s", err)


def relabel(args, config: Config) -> None:
    """Exports the suspect labels to correct, or applies corrections to a dataset."""
    from pipelines import relabel as rl

    if args.apply:
        if not args.data:
            raise ConfigError("relabel --apply needs --data, the dataset the fixes are for")
        done = rl.apply(args.apply, args.data, args.out)
        print(
            f"wrote {done.out}: {done.images} images, {done.changed} relabelled; "
            f"train on it: visionpipe run --data {done.out}"
        )
        return
    issues = args.issues or rl.latest_issues(config)
    count = rl.export(issues, args.out)
    print(
        f"wrote {args.out}: {count} training images whose label is probably wrong (from "
        f"{issues}); correct 'suggested' (empty keeps the label), then: visionpipe relabel "
        f"--apply {args.out} --data DATA --out labels.csv"
    )


def compare(args, config: Config) -> None:
    """The table of the last runs, best first, and the chart."""
    from pipelines.adapters import mlflow_tracking as tracking
    from pipelines.compare import compare_runs, format_table, plot
    from visionpipe.home import Home

    if args.last < 1:
        raise ConfigError(f"--last must be at least 1. Received: {args.last}")
    rows = compare_runs(
        tracking.tracking_uri(config),
        args.experiment or config.mlflow.experiment,
        args.last,
        args.metric,
        args.include_skipped,
    )
    chart = args.chart or str(Home.resolve().root / "compare.png")
    if rows:
        os.makedirs(os.path.dirname(os.path.abspath(chart)), exist_ok=True)
        plot(rows, args.metric, chart)
    if args.json:
        print(json.dumps({"runs": [r.to_dict() for r in rows], "chart": chart if rows else None}))
        return
    print(format_table(rows, args.metric) if rows else "no pipeline runs yet")
    if rows:
        print(f"chart: {chart}")
