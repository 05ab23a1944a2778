"""The explain verb: heat maps of why a model classified each image as it did."""

from __future__ import annotations

import tempfile
from typing import TYPE_CHECKING

from visionpipe.sections import EXPLAIN_METHODS as METHODS
from visionpipe.serving import add_model_argument, resolve_model
from visionpipe.step import Step, StepContext, Verb, named

if TYPE_CHECKING:
    from components.explain.explain import Explanation


def run(
    ctx: StepContext,
    model: str,
    images: list[str],
    out: str,
    method: str = "gradcam",
    layer: str | None = None,
) -> list[Explanation]:
    """``run_explain`` on a model location: a SavedModel, a serving-root folder, ``models:/``."""
    from components.explain.explain import run_explain
    from trainer.export import naming

    with tempfile.TemporaryDirectory(prefix="visionpipe-model-") as tmp:
        model_dir = resolve_model(model, tmp, ctx.registry)
        with naming(model_dir, model):
            explained = run_explain(model_dir, images, out, method, layer)
    ctx.tracker.log_params({"model": model, "method": method, "layer": layer or "auto"})
    failed = sum(1 for e in explained if e.error)
    ctx.tracker.log_metrics({"images": len(explained) - failed, "refused": failed})
    return explained


def _arguments(p) -> None:
    add_model_argument(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (local or URIs)")
    p.add_argument("--out", required=True, help="folder for one PNG per image and an index")
    p.add_argument(
        "--method",
        choices=METHODS,
        default="gradcam",
        help="Grad-CAM on a convolutional layer (default), or integrated gradients on pixels",
    )
    p.add_argument(
        "--layer",
        help="Grad-CAM's layer (default: the last convolutional block, found by itself)",
    )


def _show(args, explained: list[Explanation]) -> int:
    import sys

    for e in explained:
        if e.error:
            print(f"visionpipe: error: {e.file}: {e.error}", file=sys.stderr)
        else:
            print(f"{e.file}\t{e.class_name}\t{e.probability:.4f}\t{e.picture}")
    return 1 if any(e.error for e in explained) else 0


STEPS = (
    Step(
        name="explain",
        order=97,
        run=run,
        figure=lambda explained: f"{sum(1 for e in explained if not e.error)} images explained",
        in_pipeline=False,
        verb=Verb(
            help="Heat maps of why the model classified each image as it did (PNG).",
            arguments=_arguments,
            call=named("model", "images", "out", "method", "layer"),
            show=_show,
        ),
    ),
)
