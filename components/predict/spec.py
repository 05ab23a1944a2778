"""Scoring with a served model: ``predict`` (files, in process) and ``predict-batch`` (Beam)."""

from __future__ import annotations

import sys
import tempfile
from typing import TYPE_CHECKING

from visionpipe import storage
from visionpipe.serving import Classifier, Prediction, add_model_argument, resolve_model
from visionpipe.step import Step, StepContext, Verb
from visionpipe.tracker import log_stored

if TYPE_CHECKING:
    from components.predict.batch import BatchResult


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
    with tempfile.TemporaryDirectory(prefix="visionpipe-model-") as tmp:
        model_dir = resolve_model(model, tmp, ctx.registry)
        found = Classifier(model_dir).predict_files(images, ctx.config.predict.batch_size)
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
            call=lambda a: {
                "model": a.model,
                "data": a.data,
                "out": a.out,
                "overwrite": a.overwrite,
            },
            show=lambda a, r: print(f"{_batch_figure(r)} -> {r.out_uri}"),
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
            call=lambda a: {"model": a.model, "images": a.images},
            show=_show_files,
            overrides=_overrides,
        ),
    ),
)
