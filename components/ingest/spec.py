"""The ingest step: images to split TFRecords, counted, with rejects and a fingerprint."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from visionpipe.config import Config
from visionpipe.record import RunRecord
from visionpipe.step import Step, StepContext, Verb

if TYPE_CHECKING:
    from components.ingest.ingest import IngestResult


def run(ctx: StepContext, data: str | list[str], examples: str) -> IngestResult:
    """Runs ingest; logs counts, rejects, near-duplicates and the fingerprint (as the digest)."""
    from components.ingest.ingest import run_ingest
    from visionpipe import features as F
    from visionpipe import storage
    from visionpipe.tracker import dataset_profile, log_stored

    result = run_ingest(data, examples, ctx.config)
    stats = result.stats
    counts = {
        "inputs": stats["inputs"],
        "rejected": stats["rejected"],
        "duplicates": stats["duplicates"],
    }
    near = stats["near_duplicates"]
    ctx.tracker.log_metrics(
        {
            **{f"examples_{s}": n for s, n in result.examples.items()},
            **counts,
            **{
                f"near_duplicate_{k}": near[k]
                for k in ("groups", "conflicting_images")
                if k in near
            },
        }
    )
    ctx.tracker.log_dict(stats, "stats.json")
    if near["checked"]:
        log_stored(ctx.tracker, storage.join(examples, F.NEAR_DUPLICATES_FILE))
    first = data if isinstance(data, str) else data[0]
    source = data if isinstance(data, str) else ",".join(data)
    profile = dataset_profile(result.examples, **counts)
    ctx.tracker.log_dataset(first, stats["fingerprint"], "ingest", profile)
    ctx.pipeline.tracker.log_dataset(first, stats["fingerprint"], "training", profile)
    ctx.tracker.set_tags({"data_source": source, "data_fingerprint": stats["fingerprint"]})
    ctx.pipeline.record(
        examples=result.examples,
        data_source=source,
        data_fingerprint=stats["fingerprint"],
        examples_uri=examples,
        **counts,
    )
    return result


def cache_key(config: Config, ports: Mapping[str, Any]) -> dict[str, Any]:
    """What ingest's output depends on: every image's label, path and content; its settings."""
    from visionpipe.content import sources_digest

    return {"data": sources_digest(ports["data"]), "ingest": config.ingest.model_dump()}


def publish(result: IngestResult, artifacts: dict) -> str:
    """The examples' metadata; returns the fingerprint (what the data check compares)."""
    stats = result.stats
    artifacts["examples"].metadata.update(
        {
            "examples": result.examples,
            "rejected": stats["rejected"],
            "duplicates": stats["duplicates"],
            "fingerprint": stats["fingerprint"],
        }
    )
    return stats["fingerprint"]


def figure(result: IngestResult) -> str:
    """``1500 images, 0 rejected, 0 duplicates, 17 near-duplicates (1 labelled differently)``."""
    stats = result.stats
    written = sum(result.examples.values())
    text = f"{written} images, {stats['rejected']} rejected, {stats['duplicates']} duplicates"
    near = stats["near_duplicates"]
    if near.get("images"):
        text += f", {near['images']} near-duplicates"
        if near["conflicting_groups"]:
            groups = near["conflicting_groups"]
            text += f" ({groups} group{'s' if groups > 1 else ''} labelled differently)"
    return text


def summary(record: RunRecord) -> list[tuple[str, str]]:
    """The images line."""
    split = " / ".join(f"{k} {v}" for k, v in record.examples.items())
    text = f"{sum(record.examples.values())} ingested ({split})"
    if not record.skipped:
        text += f", {record.rejected} rejected, {record.duplicates} duplicates"
    return [("images", text)]


def _arguments(p) -> None:
    p.add_argument(
        "--data",
        required=True,
        nargs="+",
        help="folder of class folders, CSV of path,label, a glob of CSVs, or several of these",
    )
    p.add_argument("--out", required=True, help="output directory of raw examples")


def _show(args, result: IngestResult) -> None:
    import json

    print(json.dumps({"output": args.out, **result.stats}, indent=2))


STEPS = (
    Step(
        name="ingest",
        order=10,
        run=run,
        doc="Ingest images into split TFRecords; returns the data fingerprint.",
        params={"data": str},
        outputs={"examples": "Dataset"},
        returns=str,
        publish=publish,
        figure=figure,
        summary=summary,
        cache_key=cache_key,
        verb=Verb(
            help="Images (folder-per-class or CSV) to split TFRecords.",
            arguments=_arguments,
            call=lambda a: {"data": a.data[0] if len(a.data) == 1 else a.data, "examples": a.out},
            show=_show,
        ),
    ),
)
