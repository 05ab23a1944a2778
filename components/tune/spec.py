"""The tune step: keras-tuner's search, each trial a nested run; the best hyperparameters.

With ``--tuner-workers N`` the CLI process serves keras-tuner's oracle while N
processes of itself (the same argv, ``--trial-parent RUN_ID`` added) run the trials;
in such a worker only the trials record, nested under the chief's step run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainer.roles import tuner_role
from visionpipe import storage
from visionpipe.config import ConfigError
from visionpipe.step import Step, StepContext, Verb
from visionpipe.tracker import log_run_dataset

if TYPE_CHECKING:
    from trainer.tune import TuneResult


def run(
    ctx: StepContext,
    examples: str,
    transform_graph: str,
    hyperparameters: str,
    tuner_workers: int = 0,
    worker_command: list[str] | None = None,
    trial_parent: str = "",
) -> TuneResult:
    """Runs the search; logs the best hyperparameters (in a worker: only the trials)."""
    from trainer.tune import run_tune

    if tuner_role() == "worker":
        parent = ctx.open_run(trial_parent) if trial_parent else None
        return run_tune(examples, transform_graph, hyperparameters, ctx.config, parent)

    def search() -> TuneResult:
        return run_tune(examples, transform_graph, hyperparameters, ctx.config, ctx.tracker)

    if tuner_workers:
        from trainer.launch import launch_tuning

        command = [*(worker_command or []), "--trial-parent", ctx.tracker.run_id]
        result = launch_tuning(command, tuner_workers, search)
    else:
        result = search()
    ctx.tracker.log_params({f"best.{k}": v for k, v in result.best_hyperparameters.items()})
    ctx.tracker.log_metrics({"trials": result.trials})
    if result.best_score is not None:
        ctx.tracker.log_metrics({"best_val_accuracy": result.best_score})
    ctx.tracker.log_dict(result.best_hyperparameters, "best_hyperparameters.json")
    if result.trials:  # trials are scored on the validation split
        log_run_dataset(ctx.tracker, ctx.pipeline.read(), "validation")
    return result


def publish(result: TuneResult, artifacts: dict) -> None:
    """The chosen values as metadata."""
    artifacts["hyperparameters"].metadata.update(
        {"values": result.best_hyperparameters, "trials": result.trials}
    )


def figure(result: TuneResult) -> str:
    """The best score, or that no search ran."""
    if result.best_score is None:
        return "no search: the configured values"
    return f"best val_accuracy {result.best_score:.3f} of {result.trials} trials"


def _arguments(p) -> None:
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


def _call(a) -> dict:
    if a.tuner_workers < 0:
        raise ConfigError(f"--tuner-workers must be 0 or more. Received: {a.tuner_workers}")
    return {
        "examples": storage.join(a.transformed, "examples"),
        "transform_graph": storage.join(a.transformed, "transform_graph"),
        "hyperparameters": a.out,
        "tuner_workers": a.tuner_workers,
        "worker_command": [*a.self_command, *a.argv_without("--tuner-workers")],
        "trial_parent": a.trial_parent,
    }


def _show(args, result: TuneResult) -> None:
    import json

    if tuner_role() == "worker":  # ran trials for a chief, which reports the result
        return
    best = {"best": result.best_hyperparameters, "score": result.best_score}
    print(json.dumps({**best, "trials": result.trials}))


STEPS = (
    Step(
        name="tune",
        order=40,
        run=run,
        doc="keras-tuner search; the best hyperparameters as an artifact.",
        inputs={"examples": "Dataset", "transform_graph": "Artifact"},
        outputs={"hyperparameters": "Artifact"},
        publish=publish,
        figure=figure,
        records=lambda: tuner_role() != "worker",
        training=True,
        verb=Verb(
            help="keras-tuner search for the best hyperparameters.",
            arguments=_arguments,
            call=_call,
            show=_show,
        ),
    ),
)
