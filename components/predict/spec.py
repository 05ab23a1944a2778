"""Scoring with a served model: files in process, a Beam batch job, or files as they arrive.

The verbs ``predict``, ``predict-batch`` and ``predict-stream``; each appends what it
scores to the prediction log (``visionpipe.predlog``) unless ``monitor.log`` is off.
"""

from __future__ import annotations

import sys
import tempfile
from typing import TYPE_CHECKING

from visionpipe import storage
from visionpipe.serving import Classifier, Prediction, add_model_argument, resolve_model
from visionpipe.step import Step, StepContext, Verb, named
from visionpipe.tracker import log_stored

if TYPE_CHECKING:
    from components.predict.batch import BatchResult
    from components.predict.stream import StreamState


def batch_size_argument(p) -> None:
    """``--batch-size``: ``predict.batch_size``."""
    p.add_argument("--batch-size", type=int, help="images per model call (predict.batch_size)")


def _overrides(args) -> list[str]:
    out = []
    if getattr(args, "top_k", None) is not None:
        out.append(f"predict.top_k={args.top_k}")
    if args.batch_size is not None:
        out.append(f"predict.batch_size={args.batch_size}")
    return out


def run_batch(
    ctx: StepContext, model: str, data: str, out: str, overwrite: bool = False
) -> BatchResult:
    """Scores a folder, CSV or prefix with a model (a path, serving folder or ``models:/``)."""
    from components.predict.batch import REJECTS_FILE, run_batch_predict

    predict = ctx.config.predict
    with tempfile.TemporaryDirectory(prefix="visionpipe-model-") as tmp:
        model_dir = resolve_model(model, tmp, ctx.registry)
        ctx.tracker.log_params({"model": model, "data": data, "out": out, "top_k": predict.top_k})
        result = run_batch_predict(
            model_dir,
            data,
            out,
            ctx.config,
            overwrite,
            top_k=predict.top_k,
            batch_size=predict.batch_size,
        )
    ctx.tracker.log_metrics(
        {"inputs": result.inputs, "predicted": result.predicted, "rejected": result.rejected}
    )
    if result.rejected:
        log_stored(ctx.tracker, storage.join(out, REJECTS_FILE))
    return result


def _batch_arguments(p) -> None:
    add_model_argument(p)
    p.add_argument(
        "--data", required=True, help="folder or object-store prefix of images, or a CSV of paths"
    )
    p.add_argument("--out", required=True, help="output folder (must be new or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--top-k", type=int, help="classes listed per image (predict.top_k, default 3)")
    batch_size_argument(p)


def _batch_figure(result: BatchResult) -> str:
    return f"{result.inputs} inputs = {result.predicted} predicted + {result.rejected} rejected"


def run_files(ctx: StepContext, model: str, images: list[str]) -> list[Prediction]:
    """Classifies image files; a file that cannot be read gets an error, not a raise."""
    from visionpipe.predlog import open_log

    with tempfile.TemporaryDirectory(prefix="visionpipe-model-") as tmp:
        model_dir = resolve_model(model, tmp, ctx.registry)
        classifier = Classifier(model_dir, monitored=ctx.config.monitor.log)
        sink = open_log(ctx.config, model_dir, "predict") if classifier.monitored else None
        found = classifier.predict_files(images, ctx.config.predict.batch_size, sink=sink)
        if sink is not None:
            sink.close()
    failed = sum(1 for p in found if p.error)
    ctx.tracker.log_params({"model": model})
    ctx.tracker.log_metrics(
        {"inputs": len(found), "predicted": len(found) - failed, "rejected": failed}
    )
    return found


def _predict_arguments(p) -> None:
    add_model_argument(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (local or URIs)")
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per file")
    batch_size_argument(p)


def _show_files(args, predictions: list[Prediction]) -> int:
    import json

    if args.json:
        print(json.dumps([p.to_dict() for p in predictions], indent=2))
    for p in predictions:
        if p.error:
            print(f"visionpipe: error: {p.file}: {p.error}", file=sys.stderr)
        elif not args.json:
            print(f"{p.file}\t{p.class_name}\t{p.probability:.4f}")
    return 1 if any(p.error for p in predictions) else 0


def run_stream(
    ctx: StepContext,
    model: str,
    watch: str,
    out: str,
    poll_seconds: float = 1.0,
    settle_seconds: float = 0.5,
    idle_stop: float = 0.0,
) -> StreamState:
    """Scores new files under ``watch`` into ``out`` until Ctrl-C (or ``idle_stop`` idle)."""
    from components.predict.batch import check_model
    from components.predict.stream import FileStream
    from visionpipe import progress
    from visionpipe.predlog import open_log

    predict = ctx.config.predict
    with tempfile.TemporaryDirectory(prefix="visionpipe-model-") as tmp:
        model_dir = resolve_model(model, tmp, ctx.registry)
        labels = check_model(model_dir)
        classifier = Classifier(model_dir, monitored=ctx.config.monitor.log)
        sink = open_log(ctx.config, model_dir, "stream") if classifier.monitored else None
        stream = FileStream(
            classifier, labels, watch, out, predict.batch_size, predict.top_k, settle_seconds, sink
        )
        ctx.tracker.log_params({"model": model, "watch": watch, "out": out})
        print(
            f"predict-stream: watching {watch} -> {out} (Ctrl-C stops; "
            f"{stream.state.resumed_hashes} files already scored there)",
            file=sys.stderr,
            flush=True,
        )

        def shown(state) -> None:
            progress.report(
                "predict-stream",
                f"{state.predicted} scored, {state.rejected} rejected, "
                f"{state.duplicates} duplicates",
            )

        state = stream.run(poll_seconds, idle_stop, on_batch=shown)
        if sink is not None:
            sink.close()
    ctx.tracker.log_metrics({k: float(v) for k, v in state.to_dict().items()})
    return state


def _stream_arguments(p) -> None:
    add_model_argument(p)
    p.add_argument("--watch", required=True, help="folder or object-store prefix to watch")
    p.add_argument("--out", required=True, help="output folder (resumed when it holds outputs)")
    p.add_argument("--poll-seconds", type=float, default=1.0, help="how often to look (1 s)")
    p.add_argument(
        "--settle-seconds",
        type=float,
        default=0.5,
        help="a file unchanged this long is complete (0.5 s); object stores: 0",
    )
    p.add_argument(
        "--idle-stop", type=float, default=0.0, help="stop after this many idle seconds (0: never)"
    )
    batch_size_argument(p)


def _stream_figure(state: StreamState) -> str:
    return (
        f"{state.predicted} scored, {state.rejected} rejected, {state.duplicates} duplicates "
        f"in {state.batches} batches"
    )


STEPS = (
    Step(
        name="predict-batch",
        order=95,
        run=run_batch,
        doc="Scores ``data`` with ``model`` (default: the registry's champion) into ``out``.",
        params={"model": str, "data": str, "out": str, "overwrite": bool},
        returns=int,
        publish=lambda result, artifacts: result.predicted,
        figure=_batch_figure,
        verb=Verb(
            help="Score a folder, CSV or prefix of images with Beam.",
            arguments=_batch_arguments,
            call=named("model", "data", "out", "overwrite"),
            show=lambda a, r: print(f"{_batch_figure(r)} -> {r.out_uri}"),
            overrides=_overrides,
        ),
    ),
    Step(
        name="predict-stream",
        order=96,
        run=run_stream,
        figure=_stream_figure,
        in_pipeline=False,
        verb=Verb(
            help="Score new image files as they arrive in a folder or prefix.",
            arguments=_stream_arguments,
            call=named("model", "watch", "out", "poll_seconds", "settle_seconds", "idle_stop"),
            show=lambda a, state: print(f"predict-stream: {_stream_figure(state)} -> {a.out}"),
            overrides=_overrides,
        ),
    ),
    Step(
        name="predict",
        order=90,
        run=run_files,
        figure=lambda found: f"{len(found)} files, {sum(1 for p in found if p.error)} errors",
        in_pipeline=False,
        verb=Verb(
            help="Classify image files with a served model.",
            arguments=_predict_arguments,
            call=named("model", "images"),
            show=_show_files,
            overrides=_overrides,
        ),
    ),
)
