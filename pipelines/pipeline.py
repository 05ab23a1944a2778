"""The KFP v2 pipeline: ingest -> validate -> data check -> transform -> ... -> push.

Transform onwards runs only when the data check says so (always, unless the run asks to
train on changed data only), and push only when evaluate blessed the model. With
``pipeline.edge_export`` set, an edge-export step follows push. The components come
from the step specs (``components/<step>/spec.py``); this module only wires them.
"""

# No ``from __future__ import annotations``: kfp reads the pipeline function's annotations.
from typing import Any

from kfp import compiler, dsl
from kfp.pipeline_spec import pipeline_spec_pb2

from pipelines.catalog import FINISH
from pipelines.kfp_components import make_components
from pipelines.parameters import PARAMETER_TYPES, PARAMETERS
from visionpipe.config import Config
from visionpipe.registry import CHAMPION


def build_pipeline(config: Config):
    """The pipeline function for ``config``: its base image, name and parameter defaults.

    The whole validated config travels as the ``config_json`` parameter, so every step
    sees the same typed configuration; ``PARAMETERS`` are parameters of their own.
    ``retrain_when`` (``data_changed``, ``drift``, ``always``, comma-separated) says when
    a run trains; ``only_if_data_changed`` (what schedules set) stands for
    ``data_changed`` when ``retrain_when`` is left at ``always``.
    """
    ops = make_components(config.pipeline.image, PARAMETER_TYPES, config.pipeline.training_image)
    compiled = config.with_overrides(['push.serving_root=""'])
    defaults = {name: p.default(config) for name, p in PARAMETERS.items()}

    @dsl.pipeline(name=config.pipeline.name, description="Images in, a served classifier out.")
    def visionpipe(
        data: str,
        image_size: int = defaults["image_size"],
        epochs: int = defaults["epochs"],
        max_trials: int = defaults["max_trials"],
        min_accuracy: float = defaults["min_accuracy"],
        model_name: str = defaults["model_name"],
        retrain_when: str = defaults["retrain_when"],
        serving_root: str = defaults["serving_root"],
        only_if_data_changed: bool = False,
        config_json: str = compiled.to_json(),
        mlflow_tracking_uri: str = "",
        mlflow_run_id: str = "",
    ):
        run = dict(locals())
        finish = ops[FINISH](
            config_json=config_json,
            mlflow_tracking_uri=mlflow_tracking_uri,
            mlflow_run_id=mlflow_run_id,
        )
        finish.set_caching_options(False)
        with dsl.ExitHandler(finish, name="run"):
            _steps(ops, config, run)

    return visionpipe


def _steps(ops: dict[str, Any], config: Config, run: dict[str, Any]) -> None:
    """The pipeline's steps, inside its exit handler; ``run``: the pipeline's arguments."""

    def task(name: str, **arguments: Any):
        return _policies(ops[name](**arguments), name, config)

    configure = task(
        "configure", config_json=run["config_json"], **{name: run[name] for name in PARAMETERS}
    )
    tracking = {
        "config_json": configure.output,
        "mlflow_tracking_uri": run["mlflow_tracking_uri"],
        "mlflow_run_id": run["mlflow_run_id"],
    }
    ingest = task("ingest", data=run["data"], **tracking)
    validate = task("validate", raw_examples=ingest.outputs["examples"], **tracking)
    check = task(
        "data-check",
        fingerprint=ingest.outputs["Output"],
        only_if_data_changed=run["only_if_data_changed"],
        **tracking,
    ).after(validate)  # a failing anomaly stops the run before the decision to train
    with dsl.If(check.outputs["Output"] == True, name="retrain"):  # noqa: E712
        transform = task("transform", raw_examples=ingest.outputs["examples"], **tracking)
        tune = task(
            "tune",
            examples=transform.outputs["examples"],
            transform_graph=transform.outputs["transform_graph"],
            **tracking,
        )
        train = task(
            "train",
            examples=transform.outputs["examples"],
            transform_graph=transform.outputs["transform_graph"],
            hyperparameters=tune.outputs["hyperparameters"],
            **tracking,
        )
        evaluate = task(
            "evaluate",
            raw_examples=ingest.outputs["examples"],
            model=train.outputs["model"],
            **tracking,
        )
        with dsl.If(evaluate.outputs["Output"] == True, name="blessed"):  # noqa: E712
            push = task(
                "push",
                model=train.outputs["model"],
                blessing=evaluate.outputs["blessing"],
                **tracking,
            )
            if config.pipeline.edge_export:
                task(
                    "edge-export",
                    model=train.outputs["model"],
                    raw_examples=ingest.outputs["examples"],
                    pushed_version=push.outputs["Output"],
                    **tracking,
                )


def _training(name: str) -> bool:
    """Whether ``name`` is a training step (``configure`` and ``finish`` are no steps)."""
    from pipelines import catalog

    return name not in ("configure", FINISH) and catalog.step(name).training


def retries(name: str, config: Config) -> int:
    """How many times step ``name`` is retried after a failure."""
    if _training(name) and not config.pipeline.retry_training:
        return 0
    return config.pipeline.retries


def step_retries(config: Config) -> dict[str, int]:
    """``retries`` of every pipeline step, by name (``configure`` included)."""
    from pipelines import catalog

    names = ["configure", *(s.name for s in catalog.all_steps().values() if s.in_pipeline)]
    return {name: retries(name, config) for name in names}


def _policies(task, name: str, config: Config):
    """A task with its retry policy and, for a training step, its accelerators.

    Every step is retried ``pipeline.retries`` times (backoff ``retry_backoff_s``,
    doubled each time) but the training steps, unless ``pipeline.retry_training``: a
    retried fit repeats hours of accelerator time. KFP's own step cache is off: its key
    covers every argument, the ``mlflow_run_id`` each run passes included, so it never
    hits; ingest and transform use the project's (``pipelines.step_cache``).
    """
    p = config.pipeline
    if retries(name, config):
        task.set_retry(
            num_retries=p.retries, backoff_duration=f"{p.retry_backoff_s}s", backoff_factor=2.0
        )
    task.set_caching_options(False)
    if _training(name) and p.gpus:
        task.set_accelerator_type(p.accelerator_type)
        task.set_accelerator_limit(p.gpus)
    return task


def compile_pipeline(config: Config, out_path: str) -> str:
    """Writes the pipeline as KFP IR YAML."""
    compiler.Compiler().compile(build_pipeline(config), package_path=out_path)
    return out_path


def pipeline_steps(config: Config) -> list[str]:
    """The steps ``build_pipeline(config)`` runs, in the order they run (``configure`` first).

    Read from the compiled pipeline's DAG (nested ``dsl.If`` groups included), so the
    console's step list is the pipeline's, not a second list to keep in step. The exit
    handler's ``finish`` is no step of its own: it is not listed.
    """
    spec = build_pipeline(config).pipeline_spec
    components = spec.components
    exit_task = pipeline_spec_pb2.PipelineTaskSpec.TriggerPolicy.ALL_UPSTREAM_TASKS_COMPLETED
    order: list[str] = []

    def walk(dag) -> None:
        tasks = dict(dag.tasks)
        done: set[str] = set()
        while len(done) < len(tasks):
            for name, task in sorted(tasks.items()):
                if name in done or not set(task.dependent_tasks) <= done:
                    continue
                done.add(name)
                if task.trigger_policy.strategy == exit_task:  # finish: not a step of its own
                    break
                component = components[task.component_ref.name]
                if component.HasField("dag"):
                    walk(component.dag)
                else:
                    order.append(name)
                break

    walk(spec.root.dag)
    return order


def build_batch_pipeline(config: Config):
    """Batch prediction as a pipeline of its own: one Beam job, by default with the champion.

    For a cluster's recurring runs (``visionpipe schedule create`` with this package):
    score whatever landed under ``data`` with the current champion into ``out``.
    """
    ops = make_components(config.pipeline.image, PARAMETER_TYPES, config.pipeline.training_image)
    champion = f"models:/{config.push.model_name}@{CHAMPION}"

    @dsl.pipeline(
        name=f"{config.pipeline.name}-batch-predict",
        description="Images in, predictions (JSONL) and rejects out, with a registered model.",
    )
    def visionpipe_batch_predict(
        data: str,
        out: str,
        model: str = champion,
        overwrite: bool = False,
        config_json: str = config.to_json(),
        mlflow_tracking_uri: str = "",
        mlflow_run_id: str = "",
    ):
        ops["predict-batch"](
            model=model,
            data=data,
            out=out,
            overwrite=overwrite,
            config_json=config_json,
            mlflow_tracking_uri=mlflow_tracking_uri,
            mlflow_run_id=mlflow_run_id,
        )

    return visionpipe_batch_predict


def compile_batch_pipeline(config: Config, out_path: str) -> str:
    """Writes the batch-prediction pipeline as KFP IR YAML."""
    compiler.Compiler().compile(build_batch_pipeline(config), package_path=out_path)
    return out_path
