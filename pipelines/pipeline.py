"""The KFP v2 pipeline: ingest -> data check -> transform -> tune -> train -> evaluate -> push.

Transform onwards runs only when the data check says so (always, unless the run asks to
train on changed data only), and push only when evaluate blessed the model. With
``pipeline.edge_export`` set, an edge-export step follows push. The components come
from the step specs (``components/<step>/spec.py``); this module only wires them.
"""

# No ``from __future__ import annotations``: kfp reads the pipeline function's annotations.
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kfp import compiler, dsl

from pipelines.kfp_components import make_components
from visionpipe import progress
from visionpipe.config import Config
from visionpipe.registry import CHAMPION


@dataclass(frozen=True)
class Parameter:
    """A pipeline parameter users set per run, and the config key it stands for."""

    type: type
    key: str  # section.key
    default: Callable[[Config], Any]  # its default in the compiled pipeline
    override: Callable[[Any], str] = json.dumps  # the value as an override's YAML

    def as_override(self, value: Any) -> str:
        """``section.key=value``."""
        return f"{self.key}={self.override(value)}"


# What users change per run, each a parameter of its own with the config's value as
# default; ``configure`` applies them to the config, validated, before any work. A
# local serving root is this machine's path: it is not compiled in.
PARAMETERS: dict[str, Parameter] = {
    "image_size": Parameter(int, "transform.image_size", lambda c: c.transform.image_size),
    "epochs": Parameter(int, "trainer.epochs", lambda c: c.trainer.epochs),
    "max_trials": Parameter(int, "tuner.max_trials", lambda c: c.tuner.max_trials),
    "min_accuracy": Parameter(
        float,
        "evaluate.min_accuracy",
        lambda c: -1.0 if c.evaluate.min_accuracy is None else c.evaluate.min_accuracy,
        lambda v: "null" if v < 0 else json.dumps(v),  # below 0 turns the threshold off
    ),
    "model_name": Parameter(str, "push.model_name", lambda c: c.push.model_name),
    # "data_changed,drift": when a run trains (see the data check); a list in the config.
    "retrain_when": Parameter(
        str,
        "pipeline.retrain_when",
        lambda c: ",".join(c.pipeline.retrain_when),
        lambda v: json.dumps([r.strip() for r in v.split(",") if r.strip()]),
    ),
    "serving_root": Parameter(
        str,
        "push.serving_root",
        lambda c: c.push.serving_root if "://" in c.push.serving_root else "",
    ),
}
PARAMETER_TYPES = {name: p.type for name, p in PARAMETERS.items()}


def configure(arguments: dict[str, Any]) -> str:
    """The ``configure`` component: the compiled-in config with the run's parameters applied.

    Fails (before any step) on a bad value.
    """
    overrides = [p.as_override(arguments[name]) for name, p in PARAMETERS.items()]
    config = Config.from_json(arguments["config_json"]).with_overrides(overrides)
    shown = ", ".join(
        [
            f"image size {arguments['image_size']}",
            f"{arguments['epochs']} epochs",
            f"{arguments['max_trials']} trials",
        ]
    )
    progress.done("configure", shown)
    return config.to_json()


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
        configure = ops["configure"](
            config_json=config_json, **{name: run[name] for name in PARAMETERS}
        )
        tracking = {
            "config_json": configure.output,
            "mlflow_tracking_uri": mlflow_tracking_uri,
            "mlflow_run_id": mlflow_run_id,
        }
        ingest = ops["ingest"](data=data, **tracking)
        check = ops["data-check"](
            fingerprint=ingest.outputs["Output"],
            only_if_data_changed=only_if_data_changed,
            **tracking,
        )
        with dsl.If(check.outputs["Output"] == True, name="retrain"):  # noqa: E712
            transform = ops["transform"](raw_examples=ingest.outputs["examples"], **tracking)
            tune = ops["tune"](
                examples=transform.outputs["examples"],
                transform_graph=transform.outputs["transform_graph"],
                **tracking,
            )
            _accelerators(tune, config)
            train = ops["train"](
                examples=transform.outputs["examples"],
                transform_graph=transform.outputs["transform_graph"],
                hyperparameters=tune.outputs["hyperparameters"],
                **tracking,
            )
            _accelerators(train, config)
            evaluate = ops["evaluate"](
                raw_examples=ingest.outputs["examples"], model=train.outputs["model"], **tracking
            )
            with dsl.If(evaluate.outputs["Output"] == True, name="blessed"):  # noqa: E712
                push = ops["push"](
                    model=train.outputs["model"], blessing=evaluate.outputs["blessing"], **tracking
                )
                if config.pipeline.edge_export:
                    ops["edge-export"](
                        model=train.outputs["model"],
                        raw_examples=ingest.outputs["examples"],
                        pushed_version=push.outputs["Output"],
                        **tracking,
                    )

    return visionpipe


def _accelerators(task, config: Config) -> None:
    """Asks the cluster for ``pipeline.gpus`` accelerators for a training task."""
    if config.pipeline.gpus:
        task.set_accelerator_type(config.pipeline.accelerator_type)
        task.set_accelerator_limit(config.pipeline.gpus)


def compile_pipeline(config: Config, out_path: str) -> str:
    """Writes the pipeline as KFP IR YAML."""
    compiler.Compiler().compile(build_pipeline(config), package_path=out_path)
    return out_path


def pipeline_steps(config: Config) -> list[str]:
    """The steps ``build_pipeline(config)`` runs, in the order they run (``configure`` first).

    Read from the compiled pipeline's DAG (nested ``dsl.If`` groups included), so the
    console's step list is the pipeline's, not a second list to keep in step.
    """
    spec = build_pipeline(config).pipeline_spec
    components = spec.components
    order: list[str] = []

    def walk(dag) -> None:
        tasks = dict(dag.tasks)
        done: set[str] = set()
        while len(done) < len(tasks):
            for name, task in sorted(tasks.items()):
                if name in done or not set(task.dependent_tasks) <= done:
                    continue
                done.add(name)
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
