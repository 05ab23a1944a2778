"""Each step's library call wrapped with its record in the tracking store.

The CLI subcommands and the KFP components both call these, so a step records the
same things however it is run: a run of its own (nested under the pipeline run when
there is one), its metrics and artifacts, and its outcome on the pipeline run. They
record through a ``visionpipe.tracking.Tracking`` session (opened on the configured
store when none is given) and the ``Tracker`` of their step run; the library code
they call gets that tracker, or nothing.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import tempfile
from dataclasses import asdict, dataclass

from visionpipe import faults, progress, registry, storage
from visionpipe import features as F
from visionpipe.config import Config
from visionpipe.home import Home
from visionpipe.tracking import KIND_TAG, SKIPPED_TAG, Tracking

log = logging.getLogger(__name__)


def component_context(
    config_json: str, mlflow_tracking_uri: str, mlflow_run_id: str
) -> tuple[Config, Tracking]:
    """Inside a KFP component: the run's config, and the session on the run's store.

    Empty values fall back to what KFP's MLflow integration injects
    (``$MLFLOW_TRACKING_URI``, ``$MLFLOW_RUN_ID``), then to the config's own store.
    """
    config = Config.from_json(config_json)
    return config, Tracking.open(config, mlflow_tracking_uri, mlflow_run_id)


def _session(config: Config, tracking: Tracking | None) -> Tracking:
    return tracking if tracking is not None else Tracking.open(config)


def ingest(
    data_uri: str | list[str], output_uri: str, config: Config, tracking: Tracking | None = None
):
    """Runs ingest; logs counts, rejects and the data fingerprint (as the dataset digest)."""
    from components.ingest.ingest import run_ingest

    session = _session(config, tracking)
    source = data_uri if isinstance(data_uri, str) else ",".join(data_uri)
    with session.step("ingest") as run:
        result = run_ingest(data_uri, output_uri, config)
        stats = result.stats
        counts = {f"examples_{s}": n for s, n in result.examples.items()}
        counts.update(
            rejected=stats["rejected"], duplicates=stats["duplicates"], inputs=stats["inputs"]
        )
        run.log_metrics(counts)
        run.log_dict(stats, "stats.json")
        first = data_uri if isinstance(data_uri, str) else data_uri[0]
        run.log_dataset(first, stats["fingerprint"], context="ingest")
        tags = {"data_source": source, "data_fingerprint": stats["fingerprint"]}
        run.set_tags(tags)
        session.log_outcome(metrics=counts, tags=tags)
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
    fingerprint: str, config: Config, only_if_changed: bool, tracking: Tracking | None = None
) -> DataCheck:
    """Decides whether this pipeline run trains on the data ingest just fingerprinted.

    It always does, unless ``only_if_changed`` (what scheduled runs ask for) and what
    the model depends on is unchanged since the experiment's last successful pipeline
    run: the data fingerprint, the model settings (``Config.model_settings``) and the
    visionpipe version. A change of any trains, and the reason names it. The decision
    and what it was made on are recorded on the pipeline run: tags
    ``visionpipe.skipped``, ``data_check``, ``model_settings``, ``visionpipe_version``.
    """
    session = _session(config, tracking)
    settings, version = config.model_settings(), project_version()
    check = DataCheck(True, "retrains on every run (only_if_data_changed is off)")
    if only_if_changed:
        previous = session.last_successful_pipeline_run()
        check = compare_with_run(fingerprint, settings, version, previous)
    log.info("data check: %s", check.reason)
    progress.done("data-check", ("retrain: " if check.retrain else "skip: ") + check.reason)
    session.log_outcome(
        tags={
            KIND_TAG: "pipeline",  # also when KFP's MLflow integration made the run
            SKIPPED_TAG: str(not check.retrain).lower(),
            "data_check": check.reason,
            SETTINGS_TAG: json.dumps(settings, sort_keys=True),
            VERSION_TAG: version,
        }
    )
    return check


SETTINGS_TAG = "model_settings"
VERSION_TAG = "visionpipe_version"


def project_version() -> str:
    """The installed visionpipe's version."""
    from importlib import metadata

    try:
        return metadata.version("visionpipe")
    except metadata.PackageNotFoundError:
        return "unknown"


def compare_with_run(fingerprint: str, settings: dict, version: str, previous) -> DataCheck:
    """Retrain unless data, model settings and version all equal ``previous`` run's."""
    if previous is None:
        return DataCheck(True, "no earlier successful pipeline run to compare the data with")
    run_id = previous.info.run_id
    tags = previous.data.tags
    before = tags.get("data_fingerprint", "")
    if before != fingerprint:
        change = f"{before[:12] or 'none'} -> {fingerprint[:12]}"
        return DataCheck(True, f"data changed since run {run_id} ({change})", run_id)
    if SETTINGS_TAG not in tags:
        return DataCheck(True, f"config of run {run_id} was not recorded; retraining", run_id)
    now = json.loads(json.dumps(settings))  # compared as recorded: JSON values
    changed = _changed_settings(json.loads(tags[SETTINGS_TAG]), now)
    if changed:
        return DataCheck(True, f"config changed since run {run_id}: {changed}", run_id)
    if tags.get(VERSION_TAG) != version:
        change = f"{tags.get(VERSION_TAG) or 'unknown'} -> {version}"
        return DataCheck(True, f"visionpipe changed since run {run_id} ({change})", run_id)
    return DataCheck(
        False,
        f"data unchanged since run {run_id} (fingerprint {fingerprint[:12]}), "
        "and so are the config and visionpipe's version",
        run_id,
    )


def _changed_settings(before: dict, now: dict, shown: int = 3) -> str:
    """``trainer.epochs 25 -> 30, ...`` for the settings that differ (at most ``shown``)."""
    keys = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    text = ", ".join(
        f"{k} {json.dumps(before.get(k))} -> {json.dumps(now.get(k))}" for k in keys[:shown]
    )
    return text + (f" (and {len(keys) - shown} more)" if len(keys) > shown else "")


def transform(
    raw_examples_uri: str,
    examples_uri: str,
    graph_uri: str,
    config: Config,
    tracking: Tracking | None = None,
):
    """Runs tf.Transform; logs the label vocabulary, its frequencies and pixel statistics."""
    from components.transform.transform import run_transform

    with _session(config, tracking).step("transform") as run:
        result = run_transform(raw_examples_uri, examples_uri, graph_uri, config)
        run.log_metrics({f"transformed_{s}": n for s, n in result.examples.items()})
        run.log_dict({"labels": result.labels}, "label_vocabulary.json")
        run.log_dict(result.statistics, "transform_statistics.json")
        stats = result.statistics
        run.log_metrics(
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
    tracking: Tracking | None = None,
    tuner_workers: int = 0,
    worker_command: list[str] | None = None,
    trial_parent_run_id: str = "",
):
    """Runs the keras-tuner search; every trial is a nested run; logs the best hyperparameters.

    With ``tuner_workers``, this process serves keras-tuner's oracle while that many
    processes run ``worker_command`` (a whole ``visionpipe tune`` argv) and the trials;
    each is told this step's run with ``--trial-parent RUN_ID`` and nests its trial
    runs there. In such a worker process (or a cluster's), only the trials run, under
    ``trial_parent_run_id``: the chief records the step.
    """
    from trainer.tune import run_tune, tuner_role

    session = _session(config, tracking)
    if tuner_role() == "worker":
        parent = session.tracker(trial_parent_run_id) if trial_parent_run_id else None
        return run_tune(examples_uri, graph_uri, output_uri, config, parent)
    with session.step("tune") as run:

        def search():
            return run_tune(examples_uri, graph_uri, output_uri, config, run)

        if tuner_workers:
            from trainer.launch import launch_tuning

            command = [*(worker_command or []), "--trial-parent", run.run_id]
            result = launch_tuning(command, tuner_workers, search)
        else:
            result = search()
        run.log_params({f"best.{k}": v for k, v in result.best_hyperparameters.items()})
        run.log_metrics({"trials": result.trials})
        if result.best_score is not None:
            run.log_metrics({"best_val_accuracy": result.best_score})
        run.log_dict(result.best_hyperparameters, "best_hyperparameters.json")
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
    tracking: Tracking | None = None,
):
    """Trains and exports; per-epoch metrics, curves and summaries land on this step's run.

    Under ``multi_worker`` only the chief records; the other workers train.
    """
    from trainer.callbacks import EpochProgress
    from trainer.distribute import is_chief
    from trainer.train import run_train

    if not is_chief():
        return run_train(examples_uri, graph_uri, hyperparameters_uri, model_uri, config)
    session = _session(config, tracking)
    with (
        session.step("train") as run,
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
            tracker=run,
        )
        run.log_params({f"hp.{k}": v for k, v in result.hyperparameters.items()})
        run.log_params({"model": config.trainer.model, "replicas": result.replicas})
        run.log_metrics({f"final_{k}": v for k, v in result.metrics.items()})
        run.log_metrics(
            {"epochs_run": result.epochs_run, "resumed_from_epoch": result.resumed_from_epoch}
        )
        run.log_dict(result.hyperparameters, "hyperparameters.json")
        run.log_artifact(artifacts)
        session.log_outcome(
            metrics={"trainer_test_accuracy": result.metrics.get("test_accuracy", 0.0)}
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
    tracking: Tracking | None = None,
    champion_model_uri: str | None = None,
):
    """Evaluates candidate against the registry's champion (unless one is given) and gates."""
    from components.evaluate.evaluate import run_evaluate
    from components.evaluate.gallery import GALLERY_HTML, GALLERY_PNG
    from components.evaluate.metrics import metric_key
    from components.evaluate.report import CONFUSION_PNG

    session = _session(config, tracking)
    with (
        session.step("evaluate") as run,
        tempfile.TemporaryDirectory(prefix="champion-") as download_dir,
    ):
        if champion_model_uri is None:
            champion_model_uri = registry.download_champion(
                session.client, config.push.model_name, download_dir
            )
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
        run.log_metrics(metrics)
        run.log_dict(blessing.to_dict(), "blessing.json")
        report = storage.read_bytes(storage.join(output_uri, F.REPORT_FILE))  # run_evaluate's
        run.log_text(report.decode(), "evaluation_report.md")
        for name in (CONFUSION_PNG, GALLERY_PNG, GALLERY_HTML):  # run_evaluate's pictures
            if storage.exists(storage.join(output_uri, name)):
                _log_stored(run, storage.join(output_uri, name))
        run.set_tags({"blessing_reason": blessing.reason})
        log.info("evaluate: %s", blessing.reason)
        session.log_outcome(
            metrics=metrics,
            tags={"blessed": str(blessing.blessed).lower(), "blessing_reason": blessing.reason},
        )
    accuracy = blessing.candidate.get("accuracy", 0.0)
    verdict = "blessed" if blessing.blessed else "not blessed"
    progress.done("evaluate", f"test accuracy {accuracy:.4f}, {verdict}")
    return blessing


def _protected_digests(session: Tracking, model_name: str) -> set[str]:
    """Model digests of the registry's champion and previous: retention keeps them."""
    digests = set()
    for alias in (registry.CHAMPION, registry.PREVIOUS):
        version = registry.version_by_alias(session.client, model_name, alias)
        if version is not None and version.tags.get("model_digest"):
            digests.add(version.tags["model_digest"])
    return digests


def rollback(
    config: Config, model_name: str | None = None, tracking: Tracking | None = None
) -> dict:
    """The previous champion becomes champion again: in the serving root, then the registry.

    The serving root gets the previous champion's files as a new highest version
    (servers load the highest); only then do the registry aliases swap, so a failed
    copy changes nothing.
    """
    from components.push.push import check_writable, rollback_serving, serving_lock

    name = model_name or config.push.model_name
    serving_root = Home.resolve().serving_root_for(config)
    check_writable(serving_root)
    client = _session(config, tracking).client
    with serving_lock(storage.join(serving_root, name)):
        _, previous = registry.rollback_pair(client, name)  # RollbackError before any copy
        digest = previous.tags.get("model_digest", "")
        version, path = rollback_serving(storage.join(serving_root, name), digest)
        faults.point("rollback.republished")
        champion, demoted = registry.swap_champion(
            client, name, {"serving_version": str(version), "serving_path": path}
        )
    return {"champion": champion, "previous": demoted, "serving_version": version, "path": path}


def _log_mlflow_model(run, result, blessing_uri: str) -> None:
    """The pushed version as an MLflow Model (``model/``) on the push step's run."""
    from visionpipe.blessing import example_image
    from visionpipe.mlflow_model import save_mlflow_model

    with tempfile.TemporaryDirectory(prefix="mlflow-model-") as tmp:
        path = os.path.join(tmp, "model")
        save_mlflow_model(result.path, path, example_image(blessing_uri), result.digest)
        run.log_artifact(path, "model")


def push(model_uri: str, blessing_uri: str, config: Config, tracking: Tracking | None = None):
    """Publishes to the serving root and registers the version as ``champion``.

    Every push reconciles the serving root and the registry by the model's digest, in
    an order that a rerun finishes whatever a crash left: the files (a version on disk
    holding the digest, or a new one), then a registry version holding the digest (made
    if missing, with its tags), then the aliases, last. The serving root is
    ``push.serving_root``, or ``<VISIONPIPE_HOME>/serving`` when unset.
    """
    from components.push.push import apply_retention, check_writable, run_push, serving_lock

    serving_root = Home.resolve().serving_root_for(config)
    check_writable(serving_root)  # before any work: a clear error naming the target
    session = _session(config, tracking)
    name = config.push.model_name
    with session.step("push") as run, serving_lock(storage.join(serving_root, name)):
        result = run_push(model_uri, blessing_uri, serving_root, name)
        faults.point("push.renamed")
        existing = registry.version_by_digest(session.client, name, result.digest)
        if existing is None:
            _log_mlflow_model(run, result, blessing_uri)
            tags = _version_tags(session, result, blessing_uri)
            registered = registry.register(session.client, name, run.run_id, "model", tags)
            faults.point("push.registered")
        else:
            registered = str(existing.version)
        moved = registry.promote(session.client, name, registered)
        deleted = apply_retention(
            storage.join(serving_root, name),
            config.push.keep_versions,
            _protected_digests(session, name) | {result.digest},
        )
        if deleted:
            run.set_tags({"retention_deleted_versions": ",".join(map(str, deleted))})
        run.log_metrics({"pushed_version": result.version})
        outcome = {
            "pushed_version": result.version,
            "pushed_path": result.path,
            "registered_version": registered,
        }
        run.set_tags(outcome)
        session.log_outcome(metrics={"pushed_version": result.version}, tags=outcome)
    already = result.already_pushed and existing is not None and not moved
    progress.done("push", f"version {result.version}" + (" (already pushed)" if already else ""))
    return result


def _version_tags(session: Tracking, result, blessing_uri: str) -> dict[str, str]:
    """The registry version's tags: where it is served, its digest, data and test metrics."""
    from visionpipe.blessing import read_blessing

    candidate = read_blessing(blessing_uri).get("candidate", {})
    return {
        "pipeline_run_id": session.pipeline_run_id,
        "serving_path": result.path,
        "serving_version": str(result.version),
        "model_digest": result.digest,
        "data_fingerprint": session.pipeline_tag("data_fingerprint"),
        **{
            f"test_{k}": f"{candidate[k]:.6f}"
            for k in ("accuracy", "macro_f1", "log_loss")
            if k in candidate
        },
    }


def edge_export(
    model: str,
    raw_examples_uri: str,
    out_uri: str,
    config: Config,
    tracking: Tracking | None = None,
    formats: list[str] | None = None,
    overwrite: bool = False,
):
    """Edge exports of a model, each scored in its runtime against the SavedModel.

    The exports and their report are artifacts (``edge/``) of the pipeline run, or of
    this step's run outside a pipeline; the figures become tags of the registry version
    holding the model (found by its digest), so the registry says what each version
    exports to and how well.
    """
    from components.edge.export import EdgeParityError, run_edge_export
    from components.push.push import model_digest
    from trainer.export import naming
    from visionpipe.serving import MODELS_SCHEME, resolve_model

    formats = list(formats or config.pipeline.edge_export)
    session = _session(config, tracking)
    with (
        tempfile.TemporaryDirectory(prefix="visionpipe-edge-") as tmp,
        session.step("edge-export") as run,
    ):
        model_dir = resolve_model(model, tmp, session.uri)
        run.log_params({"model": model, "examples": raw_examples_uri, "formats": ",".join(formats)})
        owner = session.tracker(session.pipeline_run_id) if session.pipeline_run_id else run
        try:
            with naming(model_dir, model):
                report = run_edge_export(
                    model_dir, raw_examples_uri, out_uri, formats, config, overwrite
                )
        except EdgeParityError:
            _log_stored(owner, out_uri, "edge")  # the report
            raise
        _log_stored(owner, out_uri, "edge")
        figures = {}
        for r in report.formats:
            figures.update(
                {
                    f"edge_{r.format}_accuracy": r.accuracy,
                    f"edge_{r.format}_agreement": r.agreement,
                    f"edge_{r.format}_size_bytes": float(r.size_bytes),
                    f"edge_{r.format}_latency_ms": r.latency_ms,
                }
            )
        run.log_metrics({**figures, "edge_savedmodel_accuracy": report.savedmodel["accuracy"]})
        name = config.push.model_name
        if model.startswith(MODELS_SCHEME):
            name = registry.parse_models_uri(model)[0]
        version = registry.version_by_digest(session.client, name, model_digest(model_dir))
        if version is not None:
            tags = {k: f"{v:.6g}" for k, v in figures.items()}
            tags.update({"edge_formats": ",".join(formats), "edge_run_id": run.run_id})
            registry.tag_version(session.client, name, str(version.version), tags)
        session.log_outcome(metrics=figures, tags={"edge_report": report.reason})
    summary = ", ".join(f"{r.format} {r.accuracy:.3f}" for r in report.formats)
    progress.done(
        "edge-export", f"accuracy {summary} (SavedModel {report.savedmodel['accuracy']:.3f})"
    )
    return report


def _log_stored(tracker, uri: str, path: str | None = None) -> None:
    """Logs the file or folder at ``uri`` as artifacts (under ``path``).

    A local one is logged where it is; one in an object store is copied to a temporary
    folder first (MLflow logs local files).
    """
    if "://" not in uri:
        tracker.log_artifact(uri, path)
        return
    with tempfile.TemporaryDirectory(prefix="visionpipe-log-") as tmp:
        local = os.path.join(tmp, posixpath.basename(uri.rstrip("/")))
        if storage.isdir(uri):
            storage.download(uri, local)
        else:
            with open(local, "wb") as f:
                f.write(storage.read_bytes(uri))
        tracker.log_artifact(local, path)


def predict_batch(
    model: str,
    data: str,
    out_uri: str,
    config: Config,
    tracking: Tracking | None = None,
    overwrite: bool = False,
    top_k: int = 3,
    batch_size: int = 64,
):
    """Scores a folder, CSV or prefix with a model (a path, serving folder or ``models:/``).

    Recorded as a run of its own (``predict-batch``) with the counts and the rejects.
    """
    from components.predict.batch import REJECTS_FILE, run_batch_predict
    from visionpipe.serving import resolve_model

    session = _session(config, tracking)
    with (
        tempfile.TemporaryDirectory(prefix="visionpipe-model-") as tmp,
        session.step("predict-batch") as run,
    ):
        model_dir = resolve_model(model, tmp, session.uri)
        run.log_params({"model": model, "data": data, "out": out_uri, "top_k": top_k})
        result = run_batch_predict(
            model_dir, data, out_uri, config, overwrite, top_k=top_k, batch_size=batch_size
        )
        run.log_metrics(
            {"inputs": result.inputs, "predicted": result.predicted, "rejected": result.rejected}
        )
        rejects = storage.join(out_uri, REJECTS_FILE)
        if result.rejected:
            _log_stored(run, rejects)
    progress.done(
        "predict-batch",
        f"{result.inputs} inputs = {result.predicted} predicted + {result.rejected} rejected",
    )
    return result
