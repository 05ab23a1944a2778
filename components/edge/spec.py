"""The edge-export step: TFLite and ONNX exports of a model, each scored in its runtime.

The exports and their report are artifacts (``edge/``) of the pipeline run, or of the
step's own run outside a pipeline; the figures become tags of the registry version
holding the model (found by its digest), so the registry says what each version
exports to and how well.
"""

from __future__ import annotations

import tempfile
from typing import TYPE_CHECKING

from visionpipe import registry, storage
from visionpipe.errors import UserError
from visionpipe.layout import model_digest
from visionpipe.sections import EDGE_FORMATS
from visionpipe.serving import add_model_argument, resolve_model
from visionpipe.step import Step, StepContext, Verb
from visionpipe.tracker import log_stored

if TYPE_CHECKING:
    from components.edge.export import EdgeReport


def check_formats(formats: list[str]) -> list[str]:
    """``components.edge.convert.check_formats``: unknown formats fail before any work."""
    from components.edge.convert import check_formats as check

    return check(formats)


class ExamplesNotFoundError(UserError):
    """No --examples, and the model's version does not lead to its pipeline run's."""


def examples_of(ctx: StepContext, model: str) -> str:
    """Ingest's examples of the pipeline run that made a ``models:/`` version.

    Raises:
        ExamplesNotFoundError: ``model`` is no registry URI, its version names no pipeline
            run, or that run's examples are gone; the message says to pass --examples.
    """
    if not model.startswith(registry.MODELS_SCHEME) or ctx.registry is None:
        raise ExamplesNotFoundError(
            f"--examples is needed for {model}: only a models:/ version knows its pipeline run"
        )
    version = registry.resolve_version(ctx.registry, model)
    run_id = version.tags.get("pipeline_run_id", "")
    record = ctx.pipeline.read_run(run_id) if run_id else None
    examples = record.examples_uri if record else ""
    if not examples or not storage.exists(examples):
        where = f"pipeline run {run_id}" if run_id else "no pipeline run"
        raise ExamplesNotFoundError(
            f"{model} (version {version.version}, {where}): its ingested examples "
            f"{'are gone from ' + examples if examples else 'are not recorded'}; pass --examples"
        )
    return examples


def run(
    ctx: StepContext,
    model: str,
    raw_examples: str | None,
    edge: str,
    formats: list[str] | None = None,
    overwrite: bool = False,
) -> EdgeReport:
    """Exports ``model`` in ``formats`` (default: ``pipeline.edge_export``) into ``edge``."""
    from components.edge.export import EdgeParityError, run_edge_export
    from trainer.export import naming

    formats = check_formats(list(formats or ctx.config.pipeline.edge_export))
    raw_examples = raw_examples or examples_of(ctx, model)
    owner = ctx.pipeline.tracker if ctx.pipeline.run_id else ctx.tracker
    with tempfile.TemporaryDirectory(prefix="visionpipe-edge-") as tmp:
        model_dir = resolve_model(model, tmp, ctx.registry)
        params = {"model": model, "examples": raw_examples, "formats": ",".join(formats)}
        ctx.tracker.log_params(params)
        try:
            with naming(model_dir, model):
                report = run_edge_export(
                    model_dir, raw_examples, edge, formats, ctx.config, overwrite
                )
        except EdgeParityError:
            log_stored(owner, edge, "edge")  # the report
            raise
        log_stored(owner, edge, "edge")
        digest = model_digest(model_dir)
    figures = {}
    for r in report.formats:
        figures.update(
            {
                f"edge_{r.format}_accuracy": r.accuracy,
                f"edge_{r.format}_agreement": r.agreement,
                f"edge_{r.format}_size_bytes": float(r.size_bytes),
                f"edge_{r.format}_latency_ms": r.latency_ms,
            }
        )
    ctx.tracker.log_metrics({**figures, "edge_savedmodel_accuracy": report.savedmodel["accuracy"]})
    name = ctx.config.push.model_name
    if model.startswith(registry.MODELS_SCHEME):
        name = registry.parse_models_uri(model)[0]
    if ctx.registry is not None:
        version = registry.version_by_digest(ctx.registry, name, digest)
        if version is not None:
            tags = {k: f"{v:.6g}" for k, v in figures.items()}
            tags.update({"edge_formats": ",".join(formats), "edge_run_id": ctx.tracker.run_id})
            ctx.registry.set_tags(name, version.version, tags)
    ctx.pipeline.tracker.log_metrics(figures)
    ctx.pipeline.tracker.set_tags({"edge_report": report.reason})
    return report


def publish(report: EdgeReport, artifacts: dict) -> str:
    """Accuracies as metadata; returns the verdict."""
    artifacts["edge"].metadata.update(
        {
            "pushed_version": artifacts["pushed_version"],
            "savedmodel_accuracy": report.savedmodel["accuracy"],
            **{f"{r.format}_accuracy": r.accuracy for r in report.formats},
        }
    )
    return report.reason


def figure(report: EdgeReport) -> str:
    """Each format's accuracy beside the SavedModel's."""
    summary = ", ".join(f"{r.format} {r.accuracy:.3f}" for r in report.formats)
    return f"accuracy {summary} (SavedModel {report.savedmodel['accuracy']:.3f})"


def _arguments(p) -> None:
    add_model_argument(p)
    p.add_argument(
        "--examples",
        help="ingest's examples (train split: int8 calibration; test split: parity); "
        "default for a models:/ version: those of the pipeline run that made it",
    )
    p.add_argument(
        "--format",
        action="append",
        dest="formats",
        metavar="FORMAT",
        help=f"{', '.join(EDGE_FORMATS)}; repeat for several (default: all three)",
    )
    p.add_argument("--out", required=True, help="output folder (must be new or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")


def _show(args, report: EdgeReport) -> None:
    print(report.table().strip())
    print(f"{report.reason} -> {args.out}")


STEPS = (
    Step(
        name="edge-export",
        order=80,
        run=run,
        doc="The pushed model in pipeline.edge_export's formats, each scored; returns the "
        "verdict. pushed_version (push's output) orders it after push.",
        inputs={"model": "Model", "raw_examples": "Dataset"},
        params={"pushed_version": int},
        outputs={"edge": "Artifact"},
        returns=str,
        publish=publish,
        figure=figure,
        verb=Verb(
            help="Export a model to TFLite (float16, int8) and ONNX, each scored in its runtime.",
            arguments=_arguments,
            call=lambda a: {
                "model": a.model,
                "raw_examples": a.examples,
                "edge": a.out,
                "formats": check_formats(a.formats or list(EDGE_FORMATS)),  # before the model
                "overwrite": a.overwrite,
            },
            show=_show,
            name="export-edge",
        ),
    ),
)
