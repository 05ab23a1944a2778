"""The KFP v2 pipeline: ingest -> transform -> tune -> train -> evaluate -> push (if blessed)."""

from kfp import compiler, dsl

from components.kfp_components import make_components
from visionpipe.config import Config


def build_pipeline(config: Config):
    """The pipeline function for ``config``: its base image, name and parameter defaults.

    The whole validated config travels as the ``config_json`` parameter, so every step
    sees the same typed configuration; ``data`` and the MLflow coordinates are
    separate parameters because they change per run.
    """
    ops = make_components(config.pipeline.image)

    @dsl.pipeline(name=config.pipeline.name, description="Images in, a served classifier out.")
    def visionpipe(
        data: str,
        config_json: str = config.to_json(),
        mlflow_tracking_uri: str = "",
        mlflow_run_id: str = "",
    ):
        tracking = {
            "config_json": config_json,
            "mlflow_tracking_uri": mlflow_tracking_uri,
            "mlflow_run_id": mlflow_run_id,
        }
        ingest = ops.ingest(data=data, **tracking).set_display_name("ingest")
        transform = ops.transform(
            raw_examples=ingest.outputs["examples"], **tracking
        ).set_display_name("transform")
        tune = ops.tune(
            examples=transform.outputs["examples"],
            transform_graph=transform.outputs["transform_graph"],
            **tracking,
        ).set_display_name("tune")
        train = ops.train(
            examples=transform.outputs["examples"],
            transform_graph=transform.outputs["transform_graph"],
            hyperparameters=tune.outputs["hyperparameters"],
            **tracking,
        ).set_display_name("train")
        evaluate = ops.evaluate(
            raw_examples=ingest.outputs["examples"], model=train.outputs["model"], **tracking
        ).set_display_name("evaluate")
        with dsl.If(evaluate.outputs["Output"] == True, name="blessed"):  # noqa: E712
            ops.push(
                model=train.outputs["model"], blessing=evaluate.outputs["blessing"], **tracking
            ).set_display_name("push")

    return visionpipe


def compile_pipeline(config: Config, out_path: str) -> str:
    """Writes the pipeline as KFP IR YAML."""
    compiler.Compiler().compile(build_pipeline(config), package_path=out_path)
    return out_path
