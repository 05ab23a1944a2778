"""Each step's library call wrapped with its MLflow record.

The CLI subcommands and the KFP components both call these, so a step logs the
same things however it is run: a run of its own (nested under the pipeline run when
there is one), its metrics and artifacts, and its outcome on the pipeline run.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from dataclasses import asdict, dataclass

from visionpipe import features as F
from visionpipe import progress, registry, storage, tracking
from visionpipe.config import Config

log = logging.getLogger(__name__)


def component_config(config_json: str, mlflow_tracking_uri: str) -> Config:
    """Inside a KFP component: the run's config, with MLflow pointed at the run's store.

    An empty ``mlflow_tracking_uri`` leaves ``$MLFLOW_TRACKING_URI`` (as KFP's MLflow
    integration injects it) or the config's own setting in charge.
    """
    if mlflow_tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = mlflow_tracking_uri
    return Config.from_json(config_json)


def ingest(data_uri: str | list[str], output_uri: str, config: Config, parent_run_id: str = ""):
    """Runs ingest; logs counts, rejects and the data fingerprint (as the dataset digest)."""
    import mlflow

    from components.ingest.ingest import run_ingest

    source = data_uri if isinstance(data_uri, str) else ",".join(data_uri)
    with tracking.step_run(config, "ingest", parent_run_id):
        result = run_ingest(data_uri, output_uri, config)
        stats = result.stats
        counts = {f"examples_{s}": n for s, n in result.examples.items()}
        counts.update(
            rejected=stats["rejected"], duplicates=stats["duplicates"], inputs=stats["inputs"]
        )
        mlflow.log_metrics(counts)
        mlflow.log_dict(stats, "stats.json")
        first = data_uri if isinstance(data_uri, str) else data_uri[0]
        log_dataset(first, stats["fingerprint"], context="ingest")
        tags = {"data_source": source, "data_fingerprint": stats["fingerprint"]}
        mlflow.set_tags(tags)
        tracking.log_outcome(parent_run_id, metrics=counts, tags=tags)
    written = sum(result.examples.values())
    progress.done(
        "ingest",
        f"{written} images, {stats['rejected']} rejected, {stats['duplicates']} duplicates",
    )
    return result


@dataclass(frozen=True)
class DataCheck:
    """Whether a pipeline run goes on to train, and why."""

    retrain: bool
    reason: str
    previous_run_id: str = ""

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


def check_data(
    fingerprint: str, config: Config, only_if_changed: bool, parent_run_id: str = ""
) -> DataCheck:
    """Decides whether this pipeline run trains on the data ingest just fingerprinted.

    It always does, unless ``only_if_changed`` (what scheduled runs ask for) and the
    fingerprint equals the one of the experiment's last successful pipeline run. The
    decision is recorded on the pipeline run: tags ``visionpipe.skipped`` and
    ``data_check``.
    """
    experiment_id = tracking.configure(config)
    parent = tracking.parent_run_id(parent_run_id)
    check = DataCheck(True, "retrains on every run (only_if_data_changed is off)")
    if only_if_changed:
        previous = tracking.last_successful_pipeline_run(experiment_id, exclude_run_id=parent)
        check = _compare_fingerprints(fingerprint, previous)
    log.info("data check: %s", check.reason)
    progress.done("data-check", ("retrain: " if check.retrain else "skip: ") + check.reason)
    if parent:
        tags = {
            tracking.KIND_TAG: "pipeline",  # also when KFP's MLflow integration made the run
            tracking.SKIPPED_TAG: str(not check.retrain).lower(),
            "data_check": check.reason,
        }
        tracking.log_outcome(parent, tags=tags)
    return check


def _compare_fingerprints(fingerprint: str, previous) -> DataCheck:
    if previous is None:
        return DataCheck(True, "no earlier successful pipeline run to compare the data with")
    run_id = previous.info.run_id
    before = previous.data.tags.get("data_fingerprint", "")
    if before == fingerprint:
        return DataCheck(
            False, f"data unchanged since run {run_id} (fingerprint {fingerprint[:12]})", run_id
        )
    change = f"{before[:12] or 'none'} -> {fingerprint[:12]}"
    return DataCheck(True, f"data changed since run {run_id} ({change})", run_id)


def log_dataset(data_uri: str, fingerprint: str, context: str) -> None:
    """Records the input dataset on the active run, with the fingerprint as its digest.

    MLflow's digest column holds 36 characters: the first 32 hex digits go there, the
    whole fingerprint is the ``data_fingerprint`` tag.
    """
    import warnings

    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "source can be interpreted in multiple ways"
        source = resolve_dataset_source(data_uri)
    dataset = MetaDataset(source=source, name="images", digest=fingerprint[:32])
    mlflow.log_input(dataset, context=context)


def transform(
    raw_examples_uri: str,
    examples_uri: str,
    graph_uri: str,
    config: Config,
    parent_run_id: str = "",
):
    """Runs tf.Transform; logs the label vocabulary, its frequencies and pixel statistics."""
    import mlflow

    from components.transform.transform import run_transform

    with tracking.step_run(config, "transform", parent_run_id):
        result = run_transform(raw_examples_uri, examples_uri, graph_uri, config)
        mlflow.log_metrics({f"transformed_{s}": n for s, n in result.examples.items()})
        mlflow.log_dict({"labels": result.labels}, "label_vocabulary.json")
        mlflow.log_dict(result.statistics, "transform_statistics.json")
        stats = result.statistics
        mlflow.log_metrics(
            {
                **{f"pixel_mean_{c}": v for c, v in zip("rgb", stats["image_mean"], strict=True)},
                **{f"pixel_std_{c}": v for c, v in zip("rgb", stats["image_std"], strict=True)},
                **{
                    f"train_count_{re.sub(r'[^0-9A-Za-z_.-]', '_', k)}": n
                    for k, n in stats["label_counts"].items()
                },
            }
        )
    total = sum(result.examples.values())
    progress.done("transform", f"{total} examples, {len(result.labels)} labels")
    return result


def tune(
    examples_uri: str,
    graph_uri: str,
    output_uri: str,
    config: Config,
    parent_run_id: str = "",
    tuner_workers: int = 0,
    worker_command: list[str] | None = None,
):
    """Runs the keras-tuner search; every trial is a nested run; logs the best hyperparameters.

    With ``tuner_workers``, this process serves keras-tuner's oracle while that many
    processes run ``worker_command`` (a ``visionpipe tune`` argv) and the trials; they
    nest their trial runs under this step's run. In such a worker process (or a
    cluster's), only the trials run: the chief records the step.
    """
    import mlflow

    from trainer.tune import run_tune, tuner_role

    if tuner_role() == "worker":
        return run_tune(examples_uri, graph_uri, output_uri, config)
    with tracking.step_run(config, "tune", parent_run_id) as run:

        def search():
            return run_tune(examples_uri, graph_uri, output_uri, config)

        if tuner_workers:
            from trainer.launch import environment, launch_tuning

            with environment(MLFLOW_RUN_ID=run.info.run_id):  # the workers' trial parent
                result = launch_tuning(worker_command or [], tuner_workers, search)
        else:
            result = search()
        mlflow.log_params({f"best.{k}": v for k, v in result.best_hyperparameters.items()})
        mlflow.log_metric("trials", result.trials)
        if result.best_score is not None:
            mlflow.log_metric("best_val_accuracy", result.best_score)
        mlflow.log_dict(result.best_hyperparameters, "best_hyperparameters.json")
    if result.best_score is None:
        progress.done("tune", "no search: the configured values")
    else:
        progress.done(
            "tune", f"best val_accuracy {result.best_score:.3f} of {result.trials} trials"
        )
    return result


def train(
    examples_uri: str,
    graph_uri: str,
    hyperparameters_uri: str | None,
    model_uri: str,
    config: Config,
    parent_run_id: str = "",
):
    """Trains and exports; per-epoch metrics, curves and summaries land on this step's run.

    Under ``multi_worker`` only the chief records to MLflow; the other workers train.
    """
    import mlflow

    from trainer.train import EpochProgress, is_chief, run_train

    if not is_chief():
        return run_train(examples_uri, graph_uri, hyperparameters_uri, model_uri, config)
    with (
        tracking.step_run(config, "train", parent_run_id),
        tempfile.TemporaryDirectory(prefix="train-artifacts-") as artifacts,
    ):
        result = run_train(
            examples_uri,
            graph_uri,
            hyperparameters_uri,
            model_uri,
            config,
            artifacts,
            callbacks=[EpochProgress("train")] if progress.enabled() else None,
        )
        mlflow.log_params({f"hp.{k}": v for k, v in result.hyperparameters.items()})
        mlflow.log_params({"model": config.trainer.model, "replicas": result.replicas})
        mlflow.log_metrics({f"final_{k}": v for k, v in result.metrics.items()})
        mlflow.log_metric("epochs_run", result.epochs_run)
        mlflow.log_metric("resumed_from_epoch", result.resumed_from_epoch)
        mlflow.log_dict(result.hyperparameters, "hyperparameters.json")
        mlflow.log_artifacts(artifacts)
        tracking.log_outcome(
            parent_run_id,
            metrics={"trainer_test_accuracy": result.metrics.get("test_accuracy", 0.0)},
        )
    valid = result.metrics.get("val_accuracy")
    figure = f"{result.epochs_run} epochs"
    progress.done("train", figure + (f", val_accuracy {valid:.3f}" if valid is not None else ""))
    return result


def evaluate(
    raw_examples_uri: str,
    model_uri: str,
    output_uri: str,
    config: Config,
    parent_run_id: str = "",
    champion_model_uri: str | None = None,
):
    """Evaluates candidate against the registry's champion (unless one is given) and gates."""
    import mlflow

    from components.evaluate.evaluate import (
        confusion_png,
        metric_key,
        run_evaluate,
    )

    with (
        tracking.step_run(config, "evaluate", parent_run_id),
        tempfile.TemporaryDirectory(prefix="champion-") as download_dir,
    ):
        if champion_model_uri is None:
            champion_model_uri = registry.download_champion(config.push.model_name, download_dir)
        blessing = run_evaluate(raw_examples_uri, model_uri, output_uri, config, champion_model_uri)
        metrics = {
            metric_key(f"test_{k}"): v for k, v in blessing.candidate.items() if k != "examples"
        }
        if blessing.champion:
            metrics.update(
                {
                    metric_key(f"champion_test_{k}"): v
                    for k, v in blessing.champion.items()
                    if k != "examples"
                }
            )
        metrics["blessed"] = float(blessing.blessed)
        mlflow.log_metrics(metrics)
        mlflow.log_dict(blessing.to_dict(), "blessing.json")
        report = storage.read_bytes(storage.join(output_uri, F.REPORT_FILE))  # run_evaluate's
        mlflow.log_text(report.decode(), "evaluation_report.md")
        png = os.path.join(download_dir, "confusion_matrix.png")
        confusion_png(blessing.candidate_report, png)
        mlflow.log_artifact(png)
        mlflow.set_tag("blessing_reason", blessing.reason)
        log.info("evaluate: %s", blessing.reason)
        tracking.log_outcome(
            parent_run_id,
            metrics=metrics,
            tags={"blessed": str(blessing.blessed).lower(), "blessing_reason": blessing.reason},
        )
    accuracy = blessing.candidate.get("accuracy", 0.0)
    verdict = "blessed" if blessing.blessed else "not blessed"
    progress.done("evaluate", f"test accuracy {accuracy:.4f}, {verdict}")
    return blessing


def _pipeline_tag(run_id: str, key: str) -> str:
    """A tag of the pipeline run, or "" without one."""
    import mlflow

    if not run_id:
        return ""
    return mlflow.MlflowClient().get_run(run_id).data.tags.get(key, "")


def _protected_digests(model_name: str) -> set[str]:
    """Model digests of the registry's champion and previous: retention keeps them."""
    digests = set()
    for alias in (registry.CHAMPION, registry.PREVIOUS):
        version = registry.version_by_alias(model_name, alias)
        if version is not None and version.tags.get("model_digest"):
            digests.add(version.tags["model_digest"])
    return digests


def rollback(config: Config, model_name: str | None = None) -> dict:
    """The previous champion becomes champion again: in the serving root, then the registry.

    The serving root gets the previous champion's files as a new highest version
    (servers load the highest); only then do the registry aliases swap, so a failed
    copy changes nothing.
    """
    from components.push.push import check_writable, rollback_serving
    from visionpipe.home import Home

    name = model_name or config.push.model_name
    serving_root = Home.resolve().serving_root_for(config)
    check_writable(serving_root)
    tracking.configure(config)
    _, previous = registry.rollback_pair(name)  # RollbackError before any copy
    digest = previous.tags.get("model_digest", "")
    version, path = rollback_serving(storage.join(serving_root, name), digest)
    champion, demoted = registry.swap_champion(
        name, {"serving_version": str(version), "serving_path": path}
    )
    return {"champion": champion, "previous": demoted, "serving_version": version, "path": path}


def push(model_uri: str, blessing_uri: str, config: Config, parent_run_id: str = ""):
    """Publishes to the serving root and registers the version as ``champion``.

    The serving root is ``push.serving_root``, or ``<VISIONPIPE_HOME>/serving`` when unset.
    """
    import mlflow

    from components.push.push import apply_retention, check_writable, run_push
    from visionpipe.blessing import read_blessing
    from visionpipe.home import Home

    serving_root = Home.resolve().serving_root_for(config)
    check_writable(serving_root)  # before any work: a clear error naming the target
    with tracking.step_run(config, "push", parent_run_id) as run:
        result = run_push(model_uri, blessing_uri, serving_root, config.push.model_name)
        registered = None
        if not result.already_pushed:
            mlflow.log_artifacts(result.path, "model")
            blessing = read_blessing(blessing_uri)
            parent = tracking.parent_run_id(parent_run_id)
            tags = {
                "pipeline_run_id": parent,
                "serving_path": result.path,
                "serving_version": str(result.version),
                "model_digest": result.digest,
                "data_fingerprint": _pipeline_tag(parent, "data_fingerprint"),
                **{
                    f"test_{k}": f"{blessing['candidate'][k]:.6f}"
                    for k in ("accuracy", "macro_f1", "log_loss")
                    if k in blessing["candidate"]
                },
            }
            registered = registry.register(config.push.model_name, run.info.run_id, "model", tags)
        deleted = apply_retention(
            storage.join(serving_root, config.push.model_name),
            config.push.keep_versions,
            _protected_digests(config.push.model_name) | {result.digest},
        )
        if deleted:
            mlflow.set_tag("retention_deleted_versions", ",".join(map(str, deleted)))
        mlflow.log_metric("pushed_version", result.version)
        outcome = {"pushed_version": result.version, "pushed_path": result.path}
        if registered:
            outcome["registered_version"] = registered
        mlflow.set_tags(outcome)
        tracking.log_outcome(
            parent_run_id, metrics={"pushed_version": result.version}, tags=outcome
        )
    progress.done(
        "push", f"version {result.version}" + (" (already pushed)" if result.already_pushed else "")
    )
    return result
