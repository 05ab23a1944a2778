"""The KFP v2 pipeline: ingest -> data check -> transform -> tune -> train -> evaluate -> push.

Transform onwards runs only when the data check says so (always, unless the run asks to
train on changed data only), and push only when evaluate blessed the model. With
``pipeline.edge_export`` set, an edge-export step follows push.
"""

from kfp import compiler, dsl

from components.kfp_components import make_components
from visionpipe.config import Config


def build_pipeline(config: Config):
    """The pipeline function for ``config``: its base image, name and parameter defaults.

    The whole validated config travels as the ``config_json`` parameter, so every step
    sees the same typed configuration. What users change per run is a parameter of its
    own with the config's value as default (data, image size, epochs, trials, accuracy
    threshold, model name, serving root); a first ``configure`` step applies them to
    the config, validated, before any work. The MLflow coordinates are parameters too.
    ``only_if_data_changed`` (what schedules set) skips training when the data's
    fingerprint equals the one of the last successful run.
    """
    ops = make_components(config.pipeline.image, config.pipeline.training_image)
    min_accuracy = config.evaluate.min_accuracy
    # A local serving root is this machine's path: it is not compiled in.
    serving_root = config.push.serving_root if "://" in config.push.serving_root else ""
    compiled = config.with_overrides(['push.serving_root=""'])

    @dsl.pipeline(name=config.pipeline.name, description="Images in, a served classifier out.")
    def visionpipe(
        data: str,
        image_size: int = config.transform.image_size,
        epochs: int = config.trainer.epochs,
        max_trials: int = config.tuner.max_trials,
        min_accuracy: float = -1.0 if min_accuracy is None else min_accuracy,
        model_name: str = config.push.model_name,
        serving_root: str = serving_root,
        only_if_data_changed: bool = False,
        config_json: str = compiled.to_json(),
        mlflow_tracking_uri: str = "",
        mlflow_run_id: str = "",
    ):
        configure = ops.configure(
            config_json=config_json,
            image_size=image_size,
            epochs=epochs,
            max_trials=max_trials,
            min_accuracy=min_accuracy,
            model_name=model_name,
            serving_root=serving_root,
        )
        tracking = {
            "config_json": configure.output,
            "mlflow_tracking_uri": mlflow_tracking_uri,
            "mlflow_run_id": mlflow_run_id,
        }
        ingest = ops.ingest(data=data, **tracking)
        check = ops.data_check(
            fingerprint=ingest.outputs["Output"],
            only_if_data_changed=only_if_data_changed,
            **tracking,
        )
        with dsl.If(check.outputs["Output"] == True, name="retrain"):  # noqa: E712
            transform = ops.transform(raw_examples=ingest.outputs["examples"], **tracking)
            tune = ops.tune(
                examples=transform.outputs["examples"],
                transform_graph=transform.outputs["transform_graph"],
                **tracking,
            )
            _accelerators(tune, config)
            train = ops.train(
                examples=transform.outputs["examples"],
                transform_graph=transform.outputs["transform_graph"],
                hyperparameters=tune.outputs["hyperparameters"],
                **tracking,
            )
            _accelerators(train, config)
            evaluate = ops.evaluate(
                raw_examples=ingest.outputs["examples"], model=train.outputs["model"], **tracking
            )
            with dsl.If(evaluate.outputs["Output"] == True, name="blessed"):  # noqa: E712
                push = ops.push(
                    model=train.outputs["model"], blessing=evaluate.outputs["blessing"], **tracking
                )
                if config.pipeline.edge_export:
                    ops.edge_export(
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


def build_batch_pipeline(config: Config):
    """Batch prediction as a pipeline of its own: one Beam job, by default with the champion.

    For a cluster's recurring runs (``visionpipe schedule create`` with this package):
    score whatever landed under ``data`` with the current champion into ``out``.
    """
    ops = make_components(config.pipeline.image, config.pipeline.training_image)
    champion = f"models:/{config.push.model_name}@champion"

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
        ops.predict_batch(
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
