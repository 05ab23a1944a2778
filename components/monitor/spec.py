"""The monitor verb: drift, estimated and live accuracy of a served model, as a tracked run."""

from __future__ import annotations

import sys
import tempfile
import time
from typing import TYPE_CHECKING

from visionpipe.home import Home
from visionpipe.record import KIND_TAG, MONITOR_KIND, monitor_tags
from visionpipe.registry import CHAMPION
from visionpipe.serving import MODEL_LOCATIONS, resolve_model
from visionpipe.step import Step, StepContext, Verb, named
from visionpipe.tracker import log_stored

if TYPE_CHECKING:
    from components.monitor.monitor import MonitorResult


def run(
    ctx: StepContext,
    model: str = "",
    log: str | None = None,
    since: str = "",
    data: str | None = None,
    labels: str | None = None,
    out: str = "",
) -> MonitorResult:
    """Monitors ``model`` (default: the registry's champion) on a log window or images."""
    from components.monitor.monitor import MonitorInputError, run_monitor
    from visionpipe.layout import model_identity

    config = ctx.config
    if log is None and data is None and labels is None:
        raise MonitorInputError("monitor: give --log (the prediction log), --data or --labels")
    if log is not None and data is not None:
        raise MonitorInputError("monitor: --log and --data are two windows; give one")
    model = model or f"models:/{config.push.model_name}@{CHAMPION}"
    try:
        moment = _since(ctx, since) if since else None
    except ValueError as err:
        raise MonitorInputError(str(err)) from None
    log_uri = None if log is None else (log or Home.resolve().prediction_log_for(config))
    out = out or str(Home.resolve().monitor_reports() / time.strftime("%Y%m%d-%H%M%S"))
    with tempfile.TemporaryDirectory(prefix="visionpipe-model-") as tmp:
        model_dir = resolve_model(model, tmp, ctx.registry)
        identity = model_identity(model_dir)
        result = run_monitor(
            model_dir,
            model,
            identity,
            config.monitor,
            config.predict.batch_size,
            log_uri,
            moment,
            data,
            labels,
            out,
        )
    report = result.report
    ctx.tracker.set_tags(
        {KIND_TAG: MONITOR_KIND, **monitor_tags(identity, report.drift, report.reason)}
    )
    ctx.tracker.log_params({"model": model, "source": result.source})
    ctx.tracker.log_metrics(metrics_of(result))
    log_stored(ctx.tracker, out)
    return result


def _since(ctx: StepContext, since: str):
    """``--since``'s time; ``last``: the start of the newest monitor run of the model."""
    import datetime as dt

    from visionpipe.predlog import parse_since

    if since != "last":
        return parse_since(since)
    previous = ctx.pipeline.latest_monitor(ctx.config.push.model_name)
    if previous is None:
        return None  # the first monitor run: the whole log
    return dt.datetime.fromtimestamp(previous.start_time_ms / 1000, dt.UTC)


def metrics_of(result: MonitorResult) -> dict[str, float]:
    """The run's metrics: the verdict, the record count and each detector's figures."""
    report = result.report
    metrics = {"drift": float(report.drift), "records": float(report.records)}
    if report.estimated_accuracy is not None:
        metrics["estimated_accuracy"] = report.estimated_accuracy
        metrics["gate_accuracy"] = report.test_accuracy
    for d in report.detectors:
        key = d.name.replace(":", "_")
        if d.statistic == d.statistic:  # not NaN
            metrics[f"{key}_statistic"] = float(d.statistic)
        if d.p_value is not None:
            metrics[f"{key}_p_value"] = float(d.p_value)
        if d.alarms:
            metrics[f"{key}_drift"] = float(d.drift)
    metrics["unscored"] = float(len(result.unscored))
    metrics["unreadable_records"] = float(result.unreadable_records)
    return metrics


def _arguments(p) -> None:
    p.add_argument(
        "--model",
        default="",
        metavar="PATH_OR_MODELS_URI",
        help=f"{MODEL_LOCATIONS} (default: models:/<push.model_name>@champion)",
    )
    p.add_argument(
        "--log",
        nargs="?",
        const="",
        metavar="URI",
        help="monitor the prediction log (default URI: monitor.log_uri, or <home>/predictions)",
    )
    p.add_argument(
        "--since",
        default="",
        help="log records from then on: an ISO time, a span (24h, 7d), or 'last' (since "
        "the model's previous monitor run)",
    )
    p.add_argument("--data", metavar="DIR_OR_CSV", help="monitor these images instead of a log")
    p.add_argument(
        "--labels",
        metavar="DIR_OR_CSV",
        help="freshly labelled images (folder per class, or CSV path,label): live accuracy",
    )
    p.add_argument("--out", default="", help="report folder (default: <home>/monitor/<time>)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _show(args, result: MonitorResult) -> int:
    import json

    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    report, model = result.report, result.model
    print(f"monitor {model['name']} v{model['version'] or '?'}: {result.source}; {result.window}")
    for d in report.detectors:
        if d.drift:
            print(f"  DRIFT {d.name}: {d.detail}")
    if report.estimated_accuracy is not None:
        print(
            f"  estimated accuracy {report.estimated_accuracy:.4f} (no labels); "
            f"gate {report.test_accuracy:.4f}"
        )
    if report.live:
        print(f"  live accuracy {report.live['accuracy']:.4f} on {report.live['images']} images")
    for file, reason in result.unscored:
        print(f"visionpipe: warning: {file}: {reason}", file=sys.stderr)
    print(("drift" if report.drift else "no drift") + f" -> {result.out_dir}")
    return 0


STEPS = (
    Step(
        name="monitor",
        order=97,
        run=run,
        figure=lambda r: r.report.reason,
        in_pipeline=False,
        verb=Verb(
            help="Drift, estimated and live accuracy of a served model (log or images).",
            arguments=_arguments,
            call=named("model", "log", "since", "data", "labels", "out"),
            show=_show,
        ),
    ),
)
