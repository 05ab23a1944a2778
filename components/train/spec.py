"""The train step: trains with the chosen hyperparameters and exports the served model.

Per-epoch metrics, curves and summaries land on the step's run. Under
``multi_worker`` only the chief records; ``visionpipe train --workers N`` starts N
local worker processes of itself instead of training in this one.
"""

from __future__ import annotations

import tempfile
from typing import TYPE_CHECKING

from trainer.roles import is_chief
from visionpipe import progress, storage
from visionpipe.config import ConfigError
from visionpipe.step import Step, StepContext, Verb
from visionpipe.tracker import log_run_dataset

if TYPE_CHECKING:
    from trainer.train import TrainResult


def run(
    ctx: StepContext,
    examples: str,
    transform_graph: str,
    hyperparameters: str | None,
    model: str,
) -> TrainResult:
    """Trains and exports; on the chief, records the run's curves and figures."""
    from trainer.train import run_train

    if not is_chief():
        return run_train(examples, transform_graph, hyperparameters, model, ctx.config)
    from trainer.callbacks import EpochProgress

    with tempfile.TemporaryDirectory(prefix="train-artifacts-") as artifacts:
        result = run_train(
            examples,
            transform_graph,
            hyperparameters,
            model,
            ctx.config,
            artifacts,
            callbacks=[EpochProgress("train")] if progress.enabled() else None,
            tracker=ctx.tracker,
        )
        ctx.tracker.log_params({f"hp.{k}": v for k, v in result.hyperparameters.items()})
        ctx.tracker.log_params(
            {
                "model": ctx.config.trainer.model,
                "replicas": result.replicas,
                "epochs_planned": result.epochs_planned,
                "epochs_reason": result.epochs_reason,
            }
        )
        ctx.tracker.log_metrics({f"final_{k}": v for k, v in result.metrics.items()})
        ctx.tracker.log_metrics(
            {"epochs_run": result.epochs_run, "resumed_from_epoch": result.resumed_from_epoch}
        )
        ctx.tracker.log_dict(result.hyperparameters, "hyperparameters.json")
        log_run_dataset(ctx.tracker, ctx.pipeline.read(), "training")
        ctx.tracker.log_artifact(artifacts)
    ctx.pipeline.record(trainer_test_accuracy=result.metrics.get("test_accuracy", 0.0))
    return result


def publish(result: TrainResult, artifacts: dict) -> None:
    """Hyperparameters and final metrics as the model's metadata."""
    artifacts["model"].metadata.update(
        {"hyperparameters": result.hyperparameters, **result.metrics}
    )


def figure(result: TrainResult) -> str:
    """``20 epochs (auto, 780 steps), val_accuracy 0.940``; ``12 of 30 epochs`` on an early stop."""
    valid = result.metrics.get("val_accuracy")
    run, planned = result.epochs_run, result.epochs_planned
    text = (
        f"{run} epochs"
        if run >= planned or result.resumed_from_epoch
        else f"{run} of {planned} epochs"
    )
    if result.epochs_reason and result.epochs_reason != "trainer.epochs":
        text += f" ({result.epochs_reason})"
    return text + (f", val_accuracy {valid:.3f}" if valid is not None else "")


def _arguments(p) -> None:
    p.add_argument("--transformed", required=True, help="transform's output directory")
    p.add_argument("--hyperparameters", help="tune's output directory (default: config values)")
    p.add_argument("--out", required=True, help="model export directory")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="train with N local worker processes under MultiWorkerMirroredStrategy",
    )


def _launch(args) -> int | None:
    """``--workers N`` (N > 1): this process starts N workers of itself and waits."""
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1. Received: {args.workers}")
    if args.workers == 1:
        return None
    from trainer.launch import launch_workers

    return launch_workers([*args.self_command, *args.argv_without("--workers")], args.workers)


def _show(args, result: TrainResult) -> None:
    import json

    if not result.chief:
        return
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


STEPS = (
    Step(
        name="train",
        order=50,
        run=run,
        doc="Train with the best hyperparameters; export the serving SavedModel.",
        inputs={
            "examples": "Dataset",
            "transform_graph": "Artifact",
            "hyperparameters": "Artifact",
        },
        outputs={"model": "Model"},
        publish=publish,
        figure=figure,
        records=is_chief,
        training=True,
        verb=Verb(
            help="Train and export the serving SavedModel.",
            arguments=_arguments,
            call=lambda a: {
                "examples": storage.join(a.transformed, "examples"),
                "transform_graph": storage.join(a.transformed, "transform_graph"),
                "hyperparameters": a.hyperparameters,
                "model": a.out,
            },
            show=_show,
            launch=_launch,
        ),
    ),
)
