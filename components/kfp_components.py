"""The KFP components: thin wrappers mapping KFP artifacts to ``components.steps`` calls.

Each function body imports the project (it runs in the project image, or locally
under ``kfp.local``), so the functions are written without module-level names.
``make_components(image)`` binds them to the configured base image; nothing is
decided at import time.
"""

from types import SimpleNamespace

from kfp import dsl
from kfp.dsl import (
    Artifact,
    ClassificationMetrics,
    Dataset,
    Input,
    Markdown,
    Metrics,
    Model,
    Output,
)


def configure(
    config_json: str,
    image_size: int,
    epochs: int,
    max_trials: int,
    min_accuracy: float,
    model_name: str,
    serving_root: str,
) -> str:
    """The run's config: the compiled-in config with this run's parameters applied.

    ``min_accuracy`` below 0 turns the accuracy threshold off; an empty
    ``serving_root`` keeps the default. Fails (before any step) on a bad value.
    """
    import json

    from visionpipe import progress
    from visionpipe.config import Config

    overrides = [
        f"transform.image_size={image_size}",
        f"trainer.epochs={epochs}",
        f"tuner.max_trials={max_trials}",
        f"evaluate.min_accuracy={'null' if min_accuracy < 0 else min_accuracy}",
        f"push.model_name={json.dumps(model_name)}",
        f"push.serving_root={json.dumps(serving_root)}",
    ]
    config = Config.from_json(config_json).with_overrides(overrides)
    progress.done("configure", f"image size {image_size}, {epochs} epochs, {max_trials} trials")
    return config.to_json()


def ingest(
    data: str,
    config_json: str,
    mlflow_tracking_uri: str,
    mlflow_run_id: str,
    examples: Output[Dataset],
) -> str:
    """Ingest images into split TFRecords; returns the data fingerprint."""
    from components import steps

    config, tracking = steps.component_context(config_json, mlflow_tracking_uri, mlflow_run_id)
    result = steps.ingest(data, examples.path, config, tracking)
    stats = result.stats
    examples.metadata.update(
        {
            "examples": result.examples,
            "rejected": stats["rejected"],
            "duplicates": stats["duplicates"],
            "fingerprint": stats["fingerprint"],
        }
    )
    return stats["fingerprint"]


def data_check(
    fingerprint: str,
    only_if_data_changed: bool,
    config_json: str,
    mlflow_tracking_uri: str,
    mlflow_run_id: str,
    decision: Output[Artifact],
) -> bool:
    """Whether the run goes on to train.

    False only when the run asks to train on changed data alone and the data's
    fingerprint equals the last successful run's.
    """
    from components import steps

    config, tracking = steps.component_context(config_json, mlflow_tracking_uri, mlflow_run_id)
    check = steps.check_data(fingerprint, config, only_if_data_changed, tracking)
    decision.metadata.update({**check.to_dict(), "fingerprint": fingerprint})
    return check.retrain


def transform(
    raw_examples: Input[Dataset],
    config_json: str,
    mlflow_tracking_uri: str,
    mlflow_run_id: str,
    examples: Output[Dataset],
    transform_graph: Output[Artifact],
):
    """tf.Transform: transformed examples and the transform graph."""
    from components import steps

    config, tracking = steps.component_context(config_json, mlflow_tracking_uri, mlflow_run_id)
    result = steps.transform(
        raw_examples.path,
        examples.path,
        transform_graph.path,
        config,
        tracking,
    )
    examples.metadata["examples"] = result.examples
    transform_graph.metadata["labels"] = result.labels


def tune(
    examples: Input[Dataset],
    transform_graph: Input[Artifact],
    config_json: str,
    mlflow_tracking_uri: str,
    mlflow_run_id: str,
    hyperparameters: Output[Artifact],
):
    """keras-tuner search; the best hyperparameters as an artifact."""
    from components import steps

    config, tracking = steps.component_context(config_json, mlflow_tracking_uri, mlflow_run_id)
    result = steps.tune(
        examples.path,
        transform_graph.path,
        hyperparameters.path,
        config,
        tracking,
    )
    hyperparameters.metadata.update(
        {"values": result.best_hyperparameters, "trials": result.trials}
    )


def train(
    examples: Input[Dataset],
    transform_graph: Input[Artifact],
    hyperparameters: Input[Artifact],
    config_json: str,
    mlflow_tracking_uri: str,
    mlflow_run_id: str,
    model: Output[Model],
):
    """Train with the best hyperparameters; export the serving SavedModel."""
    from components import steps

    config, tracking = steps.component_context(config_json, mlflow_tracking_uri, mlflow_run_id)
    result = steps.train(
        examples.path,
        transform_graph.path,
        hyperparameters.path,
        model.path,
        config,
        tracking,
    )
    model.metadata.update({"hyperparameters": result.hyperparameters, **result.metrics})


def evaluate(
    raw_examples: Input[Dataset],
    model: Input[Model],
    config_json: str,
    mlflow_tracking_uri: str,
    mlflow_run_id: str,
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    report: Output[Markdown],
    blessing: Output[Artifact],
) -> bool:
    """Candidate vs. champion on the same test split; returns whether the model is blessed.

    A single ``bool`` return (KFP output ``Output``) rather than a named output: kfp.local
    2.17 resolves ``dsl.If`` conditions only on a task's ``Output``.
    """
    import shutil

    from components import steps
    from visionpipe import features as F

    config, tracking = steps.component_context(config_json, mlflow_tracking_uri, mlflow_run_id)
    result = steps.evaluate(raw_examples.path, model.path, blessing.path, config, tracking)
    for name, value in result.candidate.items():
        metrics.log_metric(name, value)
    table = result.candidate_report
    confusion.log_confusion_matrix(table["classes"], table["confusion_matrix"])
    shutil.copy(f"{blessing.path}/{F.REPORT_FILE}", report.path)  # written by evaluate
    summary = result.to_dict()
    blessing.metadata.update({k: summary[k] for k in ("blessed", "reason", "checks")})
    return result.blessed


def push(
    model: Input[Model],
    blessing: Input[Artifact],
    config_json: str,
    mlflow_tracking_uri: str,
    mlflow_run_id: str,
    pushed: Output[Artifact],
) -> int:
    """Publish a blessed model; returns the serving version."""
    from components import steps

    config, tracking = steps.component_context(config_json, mlflow_tracking_uri, mlflow_run_id)
    result = steps.push(model.path, blessing.path, config, tracking)
    pushed.metadata.update(
        {"version": result.version, "path": result.path, "digest": result.digest}
    )
    return result.version


def edge_export(
    model: Input[Model],
    raw_examples: Input[Dataset],
    pushed_version: int,
    config_json: str,
    mlflow_tracking_uri: str,
    mlflow_run_id: str,
    edge: Output[Artifact],
) -> str:
    """The pushed model in ``pipeline.edge_export``'s formats, each scored; returns the verdict.

    ``pushed_version`` (push's output) orders it after push: the registry version it
    tags exists by then.
    """
    from components import steps

    config, tracking = steps.component_context(config_json, mlflow_tracking_uri, mlflow_run_id)
    report = steps.edge_export(model.path, raw_examples.path, edge.path, config, tracking)
    edge.metadata.update(
        {
            "pushed_version": pushed_version,
            "savedmodel_accuracy": report.savedmodel["accuracy"],
            **{f"{r.format}_accuracy": r.accuracy for r in report.formats},
        }
    )
    return report.reason


def predict_batch(
    model: str,
    data: str,
    out: str,
    overwrite: bool,
    config_json: str,
    mlflow_tracking_uri: str,
    mlflow_run_id: str,
) -> int:
    """Scores ``data`` with ``model`` (default: the registry's champion) into ``out``."""
    from components import steps

    config, tracking = steps.component_context(config_json, mlflow_tracking_uri, mlflow_run_id)
    result = steps.predict_batch(model, data, out, config, tracking, overwrite=overwrite)
    return result.predicted


def make_components(image: str, training_image: str | None = None) -> SimpleNamespace:
    """The pipeline's components: lightweight Python components on ``image``.

    Tune and train run on ``training_image`` (the GPU image) when one is given.
    """
    component = dsl.component(base_image=image, install_kfp_package=False)
    training = dsl.component(base_image=training_image or image, install_kfp_package=False)
    return SimpleNamespace(
        configure=component(configure),
        ingest=component(ingest),
        data_check=component(data_check),
        transform=component(transform),
        tune=training(tune),
        train=training(train),
        evaluate=component(evaluate),
        push=component(push),
        edge_export=component(edge_export),
        predict_batch=component(predict_batch),
    )
