"""The evaluate step: candidate and champion on the same test split, and the gate."""

from __future__ import annotations

import logging
import shutil
import tempfile
from typing import TYPE_CHECKING

from visionpipe import features as F
from visionpipe import registry, storage
from visionpipe.record import RunRecord
from visionpipe.step import Step, StepContext, Verb
from visionpipe.tracker import log_run_dataset, log_stored

if TYPE_CHECKING:
    from components.evaluate.gate import Blessing

log = logging.getLogger(__name__)


def run(
    ctx: StepContext,
    raw_examples: str,
    model: str,
    blessing: str,
    champion: str | None = None,
) -> Blessing:
    """Evaluates the candidate against the registry's champion (unless one is given)."""
    from components.evaluate.evaluate import run_evaluate
    from components.evaluate.gallery import GALLERY_HTML, GALLERY_PNG
    from components.evaluate.label_noise import ISSUES_CSV, ISSUES_HTML, ISSUES_PNG
    from components.evaluate.metrics import metric_key
    from components.evaluate.report import CONFUSION_PNG, ROBUSTNESS_PNG
    from components.evaluate.slices import SLICES_FILE, SLICES_PNG

    with tempfile.TemporaryDirectory(prefix="champion-") as download_dir:
        if champion is None and ctx.registry is not None:
            champion = registry.download_champion(
                ctx.registry, ctx.config.push.model_name, download_dir
            )
        result = run_evaluate(raw_examples, model, blessing, ctx.config, champion)
    metrics = {metric_key(f"test_{k}"): v for k, v in result.candidate.items() if k != "examples"}
    if result.champion:
        metrics.update(
            {
                metric_key(f"champion_test_{k}"): v
                for k, v in result.champion.items()
                if k != "examples"
            }
        )
    metrics.update(slice_metrics(result))
    issues_uri = storage.join(blessing, ISSUES_CSV)
    suspects = result.label_issues
    if suspects is not None:
        metrics["label_issues"] = float(suspects)
    metrics["blessed"] = float(result.blessed)
    own = {metric_key(f"test_{k}") for k in result.candidate if k != "examples"}
    model_id = log_candidate(ctx, model, blessing, {k: metrics[k] for k in own})
    ctx.tracker.log_metrics({k: v for k, v in metrics.items() if not model_id or k not in own})
    ctx.tracker.log_dict(result.to_dict(), "blessing.json")
    report = storage.read_bytes(storage.join(blessing, F.REPORT_FILE))  # run_evaluate's
    ctx.tracker.log_text(report.decode(), "evaluation_report.md")
    shown = (CONFUSION_PNG, ROBUSTNESS_PNG, SLICES_PNG, SLICES_FILE, GALLERY_PNG, GALLERY_HTML)
    for name in (*shown, ISSUES_CSV, ISSUES_PNG, ISSUES_HTML, F.PROFILE_FILE):
        if storage.exists(storage.join(blessing, name)):
            log_stored(ctx.tracker, storage.join(blessing, name))
    ctx.tracker.set_tags({"blessing_reason": result.reason})
    log.info("evaluate: %s", result.reason)
    ctx.pipeline.tracker.log_metrics(metrics)
    audited = {} if suspects is None else {"label_issues": suspects, "label_issues_uri": issues_uri}
    ctx.pipeline.record(blessed=result.blessed, blessing_reason=result.reason, **audited)
    return result


def log_candidate(ctx: StepContext, model: str, blessing: str, metrics: dict) -> str:
    """The candidate as a model of this run, its test metrics against it; its id or "".

    The id goes into ``blessing.json`` (``model_id``): push registers that model rather
    than logging the same files again.
    """
    from visionpipe.blessing import example_image, read_blessing, write_blessing
    from visionpipe.layout import model_digest

    record = ctx.pipeline.read()
    fingerprint = record.data_fingerprint
    log_run_dataset(ctx.tracker, record, "test")
    profile = storage.join(blessing, F.PROFILE_FILE)  # push adds it to the served copy too
    model_id = ctx.tracker.log_model(
        model,
        ctx.config.push.model_name,
        model_digest(model),
        metrics,
        example_image(blessing),
        ("images", fingerprint[:32]) if fingerprint else None,
        {F.REFERENCE_PROFILE: profile} if storage.exists(profile) else None,
    )
    if model_id:
        write_blessing(blessing, {**read_blessing(blessing), "model_id": model_id})
        ctx.pipeline.tracker.link_model(model_id, output=True)  # the pipeline run's model
    return model_id


def slice_metrics(result: Blessing) -> dict[str, float]:
    """``test_slice/<slice>=<value>/<metric>`` for every slice, with its interval and size."""
    from components.evaluate.metrics import metric_key

    out = {}
    for r in result.slices:
        prefix = f"test_slice/{r['slice']}={r['value']}"
        out[metric_key(f"{prefix}/examples")] = float(r["examples"])
        for m, v in r["metrics"].items():
            low, high = r["intervals"][m]
            out[metric_key(f"{prefix}/{m}")] = v
            out[metric_key(f"{prefix}/{m}_ci_low")] = low
            out[metric_key(f"{prefix}/{m}_ci_high")] = high
    return out


def publish(result: Blessing, artifacts: dict) -> bool:
    """Metrics, the confusion matrix and the report as KFP artifacts; returns the verdict.

    A single ``bool`` return (KFP output ``Output``) rather than a named output:
    kfp.local 2.17 resolves ``dsl.If`` conditions only on a task's ``Output``.
    """
    for name, value in result.candidate.items():
        artifacts["metrics"].log_metric(name, value)
    for name, value in slice_metrics(result).items():
        artifacts["metrics"].log_metric(name.removeprefix("test_"), value)
    table = result.candidate_report
    artifacts["confusion"].log_confusion_matrix(table["classes"], table["confusion_matrix"])
    blessing = artifacts["blessing"]
    shutil.copy(f"{blessing.path}/{F.REPORT_FILE}", artifacts["report"].path)
    summary = result.to_dict()
    blessing.metadata.update({k: summary[k] for k in ("blessed", "reason", "checks")})
    return result.blessed


def figure(result: Blessing) -> str:
    """``test accuracy 0.9793, blessed``, and the suspect labels when there are any."""
    verdict = "blessed" if result.blessed else "not blessed"
    text = f"test accuracy {result.candidate.get('accuracy', 0.0):.4f}, {verdict}"
    if result.label_issues:
        text += f", {result.label_issues} training labels suspect (visionpipe relabel)"
    return text


def summary(record: RunRecord) -> list[tuple[str, str]]:
    """The test and blessed lines."""
    if record.skipped:
        return []

    def shown(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    test = f"accuracy {shown(record.test_accuracy)}, macro-F1 {shown(record.test_macro_f1)}"
    blessed = f"{'yes' if record.blessed else 'no'} ({record.blessing_reason})"
    return [("test", test), ("blessed", blessed)]


def _arguments(p) -> None:
    p.add_argument("--examples", required=True, help="ingest's output directory")
    p.add_argument("--model", required=True, help="candidate SavedModel directory")
    p.add_argument("--champion", help="champion SavedModel (default: the registry's champion)")
    p.add_argument("--out", required=True, help="output directory (blessing.json)")


def _show(args, result: Blessing) -> None:
    import json

    print(json.dumps(result.to_dict(), indent=2))


STEPS = (
    Step(
        name="evaluate",
        order=60,
        run=run,
        doc="Candidate vs. champion on the same test split; returns whether it is blessed.",
        inputs={"raw_examples": "Dataset", "model": "Model"},
        outputs={
            "metrics": "Metrics",
            "confusion": "ClassificationMetrics",
            "report": "Markdown",
            "blessing": "Artifact",
        },
        returns=bool,
        publish=publish,
        figure=figure,
        summary=summary,
        verb=Verb(
            help="Candidate vs. champion on the test split, and the gate.",
            arguments=_arguments,
            call=lambda a: {
                "raw_examples": a.examples,
                "model": a.model,
                "blessing": a.out,
                "champion": a.champion,
            },
            show=_show,
        ),
    ),
)
