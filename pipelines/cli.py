"""The ``visionpipe`` command line: each pipeline step, the whole local run, and compile.

Every subcommand takes ``--config FILE.yaml`` and repeatable ``--set section.key=value``;
the configuration is validated before any work starts.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Callable

from pipelines.tasks import ISOLATIONS
from visionpipe.config import Config, ConfigError, load_config
from visionpipe.errors import UserError

log = logging.getLogger("visionpipe")

# How this CLI starts itself again: the processes of multi-worker training and tuning.
SELF = [sys.executable, "-m", "pipelines.cli"]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``visionpipe`` console script."""
    parser = _parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    _quiet_libraries()
    try:
        config = load_config(args.config, args.set or [])
        return args.handler(args, config) or 0
    except (UserError, FileNotFoundError) as err:  # the user's to fix: one line, no traceback
        print(f"visionpipe: error: {err}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE.yaml", help="YAML file with config sections")
    common.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="override one config value (repeatable), e.g. --set trainer.epochs=5",
    )
    parser = argparse.ArgumentParser(
        prog="visionpipe",
        description="Labelled images in, a tested, versioned, served classifier out.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable, help_text: str, under=sub) -> argparse.ArgumentParser:
        p = under.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    p = command("sample-data", _sample_data, "Generate a built-in synthetic image dataset.")
    p.add_argument("--out", required=True, help="output folder (folder-per-class + labels.csv)")
    p.add_argument(
        "--kind",
        default="shapes",
        choices=("shapes", "glyphs", "thumbnails"),
        help="shapes (the sample), glyphs (letters and digits that mirroring confuses) or "
        "thumbnails (low-detail layouts upscaled)",
    )
    p.add_argument("--classes", type=int, default=5)
    p.add_argument("--per-class", type=int, default=300)
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0)

    p = command("ingest", _ingest, "Images (folder-per-class or CSV) to split TFRecords.")
    p.add_argument(
        "--data",
        required=True,
        nargs="+",
        help="folder of class folders, CSV of path,label, a glob of CSVs, or several of these",
    )
    p.add_argument("--out", required=True, help="output directory of raw examples")

    p = command("transform", _transform, "tf.Transform: transformed examples + transform graph.")
    p.add_argument("--examples", required=True, help="ingest's output directory")
    p.add_argument("--out", required=True, help="output directory (examples/ and transform_graph/)")

    p = command("tune", _tune, "keras-tuner search for the best hyperparameters.")
    p.add_argument("--transformed", required=True, help="transform's output directory")
    p.add_argument("--out", required=True, help="output directory (hyperparameters.json)")
    p.add_argument(
        "--tuner-workers",
        type=int,
        default=0,
        help="run trials in N worker processes (keras-tuner's distributed mode)",
    )
    p.add_argument(
        "--trial-parent",
        default="",
        metavar="RUN_ID",
        help="in a tuning worker: the tune step's MLflow run, which its trial runs nest under",
    )

    p = command("train", _train, "Train and export the serving SavedModel.")
    p.add_argument("--transformed", required=True, help="transform's output directory")
    p.add_argument("--hyperparameters", help="tune's output directory (default: config values)")
    p.add_argument("--out", required=True, help="model export directory")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="train with N local worker processes under MultiWorkerMirroredStrategy",
    )

    p = command("evaluate", _evaluate, "Candidate vs. champion on the test split, and the gate.")
    p.add_argument("--examples", required=True, help="ingest's output directory")
    p.add_argument("--model", required=True, help="candidate SavedModel directory")
    p.add_argument("--champion", help="champion SavedModel (default: the registry's champion)")
    p.add_argument("--out", required=True, help="output directory (blessing.json)")

    p = command("push", _push, "Publish a blessed model to the serving root and the registry.")
    p.add_argument("--model", required=True, help="SavedModel directory")
    p.add_argument("--blessing", required=True, help="evaluate's output directory")

    p = command(
        "rollback", _rollback, "Make the previous champion the champion again (registry + serving)."
    )
    p.add_argument("--model-name", help="registered model name (default: push.model_name)")

    p = command("predict", _predict, "Classify image files with a served model.")
    p.add_argument(
        "--model",
        required=True,
        metavar="PATH_OR_MODELS_URI",
        help="SavedModel directory, a model folder of a serving root (highest version), "
        "or models:/NAME@ALIAS or models:/NAME/VERSION from the MLflow registry",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (local or URIs)")
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per file")
    p.add_argument("--batch-size", type=int, default=64, help="images per model call")

    p = command(
        "explain", _explain, "Heat maps of why the model classified each image as it did (PNG)."
    )
    _model_argument(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (local or URIs)")
    p.add_argument("--out", required=True, help="folder for one PNG per image and an index")
    p.add_argument(
        "--method",
        choices=("gradcam", "integrated_gradients"),
        default="gradcam",
        help="Grad-CAM on a convolutional layer (default), or integrated gradients on pixels",
    )
    p.add_argument(
        "--layer",
        help="Grad-CAM's layer (default: the last convolutional block, found by itself)",
    )

    p = command(
        "predict-batch", _predict_batch, "Score a folder, CSV or prefix of images with Beam."
    )
    _model_argument(p)
    p.add_argument(
        "--data", required=True, help="folder or object-store prefix of images, or a CSV of paths"
    )
    p.add_argument("--out", required=True, help="output folder (must be new or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--top-k", type=int, default=3, help="classes listed per image (default 3)")
    p.add_argument("--batch-size", type=int, default=64, help="images per model call")

    p = command(
        "export-edge",
        _export_edge,
        "Export a model to TFLite (float16, int8) and ONNX, each scored in its runtime.",
    )
    _model_argument(p)
    p.add_argument(
        "--examples",
        required=True,
        help="ingest's examples (train split: int8 calibration; test split: parity)",
    )
    p.add_argument(
        "--format",
        action="append",
        dest="formats",
        metavar="FORMAT",
        help="tflite_float16, tflite_int8 or onnx; repeat for several (default: all three)",
    )
    p.add_argument("--out", required=True, help="output folder (must be new or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")

    p = command("run", _run, "Run the whole pipeline locally (kfp.local, no cluster).")
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
        help="run the components in this process (default; TensorFlow is imported once) "
        "or each in a Python process of its own",
    )
    p.add_argument(
        "--only-if-data-changed",
        action="store_true",
        help="stop after ingest when the data, model settings and version equal the last "
        "successful run's (as schedules do)",
    )

    p = command("compare", _compare, "Compare pipeline runs from MLflow: a table and a chart.")
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

    p = command("compile", _compile, "Compile a pipeline to KFP IR YAML.")
    p.add_argument("--out", default="pipeline.yaml", help="output YAML file")
    p.add_argument(
        "--pipeline",
        choices=("training", "batch-predict"),
        default="training",
        help="the training pipeline (default), or batch prediction with the champion",
    )

    p = command("submit", _submit, "Upload the pipeline to Kubeflow Pipelines and start a run.")
    _kfp_arguments(p)
    p.add_argument("--run-name", help="the run's name (default: <pipeline>-<time>)")
    p.add_argument("--wait", action="store_true", help="follow the run; exit 1 unless it succeeds")
    p.add_argument("--timeout", type=float, default=24 * 3600, help="seconds --wait waits at most")
    p.add_argument("--poll-seconds", type=float, default=10.0, help="how often --wait asks")

    p = sub.add_parser("schedule", help="Retrain on a schedule: KFP recurring runs, or locally.")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = command("create", _schedule_create, "Create a KFP recurring run.", actions)
    _kfp_arguments(p)
    _cron_arguments(p)
    p.add_argument("--name", help="the recurring run's name (default: <pipeline>-retrain)")
    p = command("list", _schedule_list, "List the KFP recurring runs.", actions)
    p.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://localhost:8080")
    p.add_argument("--experiment", help="only this KFP experiment's recurring runs")
    p.add_argument("--namespace", help="Kubernetes namespace (multi-user KFP)")
    p.add_argument("--json", action="store_true", help="print the recurring runs as JSON")
    for action, text in (("pause", "Pause"), ("resume", "Resume"), ("delete", "Delete")):
        p = command(action, _schedule_change, f"{text} a KFP recurring run.", actions)
        p.add_argument("id", metavar="ID", help="recurring run id (see schedule list)")
        p.add_argument("--host", required=True, help="KFP API endpoint")
        p.add_argument("--namespace", help="Kubernetes namespace (multi-user KFP)")
    p = command("run-local", _schedule_run_local, "Run the local pipeline on a schedule.", actions)
    _cron_arguments(p)
    p.add_argument("--data", required=True, help="folder of class folders, or CSV of path,label")
    p.add_argument("--max-runs", type=int, help="stop after this many triggers (default: never)")
    return parser


def _model_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        metavar="PATH_OR_MODELS_URI",
        help="as for predict: a SavedModel, a serving-root model folder, or models:/...",
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


def _quiet_libraries() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    for name in ("absl", "tensorflow", "apache_beam", "alembic", "mlflow", "kfp", "keras_tuner"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _transformed_paths(root: str) -> tuple[str, str]:
    from visionpipe import storage

    return storage.join(root, "examples"), storage.join(root, "transform_graph")


def _sample_data(args, config: Config) -> None:
    from visionpipe.sample_data import SampleSpec, generate

    try:
        spec = SampleSpec(args.classes, args.per_class, args.size, args.seed, args.kind)
    except ValueError as err:
        raise ConfigError(f"sample-data: {err}") from None
    counts = generate(args.out, spec)
    print(f"wrote {sum(counts.values())} images in {len(counts)} classes to {args.out}")


def _ingest(args, config: Config) -> None:
    from components import steps

    data = args.data[0] if len(args.data) == 1 else args.data
    result = steps.ingest(data, args.out, config)
    print(json.dumps({"output": args.out, **result.stats}, indent=2))


def _transform(args, config: Config) -> None:
    from components import steps

    examples, graph = _transformed_paths(args.out)
    result = steps.transform(args.examples, examples, graph, config)
    print(json.dumps({"examples": result.examples, "labels": result.labels, "output": args.out}))


def _tune(args, config: Config) -> int:
    from components import steps
    from trainer.tune import tuner_role

    examples, graph = _transformed_paths(args.transformed)
    if args.tuner_workers < 0:
        raise ConfigError(f"--tuner-workers must be 0 or more. Received: {args.tuner_workers}")
    result = steps.tune(
        examples,
        graph,
        args.out,
        config,
        tuner_workers=args.tuner_workers,
        worker_command=[*SELF, *_without_option(args.argv, "--tuner-workers")],
        trial_parent_run_id=args.trial_parent,
    )
    if tuner_role() == "worker":  # ran trials for a chief, which reports the result
        return 0
    print(
        json.dumps(
            {
                "best": result.best_hyperparameters,
                "score": result.best_score,
                "trials": result.trials,
            }
        )
    )
    return 0


def _train(args, config: Config) -> int:
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1. Received: {args.workers}")
    if args.workers > 1:
        from trainer.launch import launch_workers

        return launch_workers([*SELF, *_without_option(args.argv, "--workers")], args.workers)
    from components import steps

    examples, graph = _transformed_paths(args.transformed)
    result = steps.train(examples, graph, args.hyperparameters, args.out, config)
    if result.chief:
        print(
            json.dumps(
                {
                    "model": args.out,
                    "metrics": result.metrics,
                    "epochs_run": result.epochs_run,
                    "resumed_from_epoch": result.resumed_from_epoch,
                    "replicas": result.replicas,
                }
            )
        )
    return 0


def _without_option(argv: list[str], name: str) -> list[str]:
    """``argv`` without ``name VALUE`` or ``name=VALUE``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(f"{name}="):
            out.append(arg)
    return out


def _evaluate(args, config: Config) -> None:
    from components import steps

    blessing = steps.evaluate(
        args.examples, args.model, args.out, config, champion_model_uri=args.champion
    )
    print(json.dumps(blessing.to_dict(), indent=2))


def _push(args, config: Config) -> None:
    from components import steps

    result = steps.push(args.model, args.blessing, config)
    print(
        json.dumps(
            {
                "version": result.version,
                "path": result.path,
                "already_pushed": result.already_pushed,
            }
        )
    )


def _rollback(args, config: Config) -> None:
    from components import steps

    print(json.dumps(steps.rollback(config, args.model_name)))


def _predict_batch(args, config: Config) -> int:
    from components import steps

    if args.top_k < 1 or args.batch_size < 1:
        raise ConfigError("--top-k and --batch-size must be at least 1")
    result = steps.predict_batch(
        args.model,
        args.data,
        args.out,
        config,
        overwrite=args.overwrite,
        top_k=args.top_k,
        batch_size=args.batch_size,
    )
    print(
        f"{result.inputs} inputs = {result.predicted} predicted + {result.rejected} rejected"
        f" -> {result.out_uri}"
    )
    return 0


def _predict(args, config: Config) -> int:
    import tempfile

    from visionpipe import tracking
    from visionpipe.serving import Classifier, resolve_model

    with tempfile.TemporaryDirectory(prefix="visionpipe-model-") as tmp:
        model = resolve_model(args.model, tmp, tracking.tracking_uri(config))
        predictions = Classifier(model).predict_files(args.images, args.batch_size)
    if args.json:
        print(json.dumps([p.to_dict() for p in predictions], indent=2))
    for p in predictions:
        if p.error:
            print(f"visionpipe: error: {p.file}: {p.error}", file=sys.stderr)
        elif not args.json:
            print(f"{p.file}\t{p.class_name}\t{p.probability:.4f}")
    return 1 if any(p.error for p in predictions) else 0


def _explain(args, config: Config) -> int:
    from components.explain.explain import explain_model
    from visionpipe import tracking

    explained = explain_model(
        args.model,
        args.images,
        args.out,
        args.method,
        args.layer,
        tracking.tracking_uri(config),
    )
    for e in explained:
        print(f"{e.file}\t{e.class_name}\t{e.probability:.4f}\t{e.picture}")
    return 0


def _export_edge(args, config: Config) -> int:
    from components import steps
    from components.edge.convert import FORMATS, check_formats

    formats = check_formats(args.formats or list(FORMATS))  # before the model is fetched
    report = steps.edge_export(
        args.model, args.examples, args.out, config, formats=formats, overwrite=args.overwrite
    )
    print(report.table().strip())
    print(f"{report.reason} -> {args.out}")
    return 0


def _run(args, config: Config) -> int:
    from pipelines.console import OutputCapture, RunDisplay
    from pipelines.local import StepFailed, check_data, run_local, run_name
    from visionpipe.home import Home

    check_data(args.data, config)  # bad data: one error line, nothing written
    name = run_name(config)
    log_path = Home.resolve().root / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    capture = OutputCapture(str(log_path), echo=args.verbose, console_fd=2 if args.json else 1)
    with capture:
        display = RunDisplay(capture.console, live=False if args.verbose else None)
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
    print(_format_summary(summary))
    print(f"  log         {log_path}")
    return 0


def _log_to_mlflow(run_id: str, log_path, config: Config) -> None:
    """The run's log file as an artifact of its MLflow run (best effort after a failure)."""
    from visionpipe import tracking

    try:
        tracking.client(tracking.tracking_uri(config)).log_artifact(run_id, str(log_path))
    except Exception as err:  # noqa: BLE001 - an unreachable store must not hide the error
        logging.getLogger(__name__).warning("log not stored in MLflow: %s", err)


def _format_summary(s) -> str:
    from visionpipe.home import Home

    home = Home.resolve()
    acc = "n/a" if s.test_accuracy is None else f"{s.test_accuracy:.4f}"
    f1 = "n/a" if s.test_macro_f1 is None else f"{s.test_macro_f1:.4f}"
    pushed = f"version {s.pushed_version} -> {s.pushed_path}" if s.pushed_version else "not pushed"
    total = sum(s.examples.values())
    split = " / ".join(f"{k} {v}" for k, v in s.examples.items())
    if s.skipped:
        return "\n".join(
            [
                "",
                f"visionpipe run skipped after ingest in {s.wall_seconds:.0f} s",
                f"  images      {total} ingested ({split})",
                f"  reason      {s.data_check}",
                f"  MLflow run  {s.mlflow_run_id}",
            ]
        )
    return "\n".join(
        [
            "",
            f"visionpipe run {s.status.lower()} in {s.wall_seconds:.0f} s",
            f"  images      {total} ingested ({split}), "
            f"{s.rejected} rejected, {s.duplicates} duplicates",
            f"  test        accuracy {acc}, macro-F1 {f1}",
            f"  blessed     {'yes' if s.blessed else 'no'} ({s.blessing_reason})",
            f"  pushed      {pushed}",
            f"  MLflow run  {s.mlflow_run_id}",
            f"  MLflow UI   make mlflow-ui   (or: mlflow ui --backend-store-uri {s.tracking_uri} "
            f"--default-artifact-root {home.mlflow_artifacts})",
        ]
    )


def _compare(args, config: Config) -> None:
    from pipelines.compare import compare_runs, format_table, plot
    from visionpipe import tracking
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


def _compile(args, config: Config) -> None:
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


def _submit(args, config: Config) -> int:
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


def _schedule_create(args, config: Config) -> None:
    import tempfile

    from pipelines import kfp_remote
    from pipelines.schedule import Cron

    cron = Cron.parse(args.cron)
    with tempfile.TemporaryDirectory(prefix="visionpipe-schedule-") as tmp:
        package = _package(args, config, tmp)
        defaults = {"only_if_data_changed": not args.force}
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


def _schedule_list(args, config: Config) -> None:
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


def _schedule_change(args, config: Config) -> None:
    from pipelines import kfp_remote

    client = kfp_remote.connect(args.host, args.namespace)
    kfp_remote.change_schedule(client, args.host, args.action, args.id)
    done = {"pause": "paused", "resume": "resumed", "delete": "deleted"}[args.action]
    print(f"recurring run {args.id} {done}")


def _schedule_run_local(args, config: Config) -> int:
    from pipelines import schedule
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
    trigger = PipelineTrigger(
        storage.absolute(args.data), passed_on, args.force, home / schedule.RUN_LOGS
    )
    signal.signal(signal.SIGTERM, _interrupt)  # stop like Ctrl-C: the run in progress too
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


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


INTERRUPT_GRACE_SECONDS = 30.0


def _interrupt_with_deadline(signum, frame) -> None:
    """Ctrl-C: unwind, but never hang.

    The steps mark their runs FAILED and the console says what was kept. A second
    Ctrl-C, or cleanup still running after the grace period, ends the process at once
    with 130: an interrupt that lands inside a library's critical section (a store
    write, a tf.data thread) must not keep the run alive.
    """
    import threading

    if getattr(_interrupt_with_deadline, "armed", False):
        os._exit(130)
    _interrupt_with_deadline.armed = True

    def give_up() -> None:
        sys.stderr.write(
            f"\nvisionpipe: cleanup after the interrupt took over {INTERRUPT_GRACE_SECONDS:.0f}"
            " s; exiting now\n"
        )
        sys.stderr.flush()
        os._exit(130)

    timer = threading.Timer(INTERRUPT_GRACE_SECONDS, give_up)
    timer.daemon = True
    timer.start()
    raise KeyboardInterrupt


def entry() -> None:
    """The console script: ``main``, then an exit without interpreter finalization.

    With TensorFlow and Beam loaded, finalizing the interpreter (module teardown and
    the libraries' C++ destructors) took ~3 s after every command had finished. Output
    is flushed, logging shut down and exit handlers run first; only that teardown is
    skipped. Ctrl-C gets a deadline (``_interrupt_with_deadline``). Tests call ``main``
    and keep the normal exit.
    """
    import atexit
    import logging

    signal.signal(signal.SIGINT, _interrupt_with_deadline)
    code = main()
    atexit._run_exitfuncs()  # MLflow's and Beam's exit handlers, as a normal exit runs them
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
