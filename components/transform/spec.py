"""The transform step: tf.Transform's examples and graph, with the dataset statistics."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from visionpipe import storage
from visionpipe.config import Config
from visionpipe.step import Step, StepContext, Verb

if TYPE_CHECKING:
    from components.transform.transform import TransformResult


def run(
    ctx: StepContext, raw_examples: str, examples: str, transform_graph: str
) -> TransformResult:
    """Runs tf.Transform; logs the label vocabulary, its frequencies and pixel statistics."""
    from components.transform.transform import run_transform

    result = run_transform(raw_examples, examples, transform_graph, ctx.config)
    stats = result.statistics
    ctx.tracker.log_metrics({f"transformed_{s}": n for s, n in result.examples.items()})
    ctx.tracker.log_dict({"labels": result.labels}, "label_vocabulary.json")
    ctx.tracker.log_dict(stats, "transform_statistics.json")
    ctx.tracker.log_metrics(
        {
            **{f"pixel_mean_{c}": v for c, v in zip("rgb", stats["image_mean"], strict=True)},
            **{f"pixel_std_{c}": v for c, v in zip("rgb", stats["image_std"], strict=True)},
            **{
                f"train_count_{re.sub(r'[^0-9A-Za-z_.-]', '_', k)}": n
                for k, n in stats["label_counts"].items()
            },
        }
    )
    return result


def cache_key(config: Config, ports: Mapping[str, Any]) -> dict[str, Any]:
    """What transform's output depends on: the raw examples' files; its settings."""
    from visionpipe.content import tree_digest

    return {
        "raw_examples": tree_digest(ports["raw_examples"]),
        "transform": config.transform.model_dump(),
    }


def publish(result: TransformResult, artifacts: dict) -> None:
    """Counts and labels as metadata."""
    artifacts["examples"].metadata["examples"] = result.examples
    artifacts["transform_graph"].metadata["labels"] = result.labels


def _arguments(p) -> None:
    p.add_argument("--examples", required=True, help="ingest's output directory")
    p.add_argument("--out", required=True, help="output directory (examples/ and transform_graph/)")


def _show(args, result: TransformResult) -> None:
    import json

    print(json.dumps({"examples": result.examples, "labels": result.labels, "output": args.out}))


STEPS = (
    Step(
        name="transform",
        order=30,
        run=run,
        doc="tf.Transform: transformed examples and the transform graph.",
        inputs={"raw_examples": "Dataset"},
        outputs={"examples": "Dataset", "transform_graph": "Artifact"},
        publish=publish,
        figure=lambda r: f"{sum(r.examples.values())} examples, {len(r.labels)} labels",
        cache_key=cache_key,
        verb=Verb(
            help="tf.Transform: transformed examples + transform graph.",
            arguments=_arguments,
            call=lambda a: {
                "raw_examples": a.examples,
                "examples": storage.join(a.out, "examples"),
                "transform_graph": storage.join(a.out, "transform_graph"),
            },
            show=_show,
        ),
    ),
)
