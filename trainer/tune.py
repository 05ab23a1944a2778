"""The tune step: a keras-tuner search over ``build_model``'s hyperparameters.

Each trial is an MLflow run nested under the active (tune step) run, with its
hyperparameters, per-epoch metrics and final score. keras-tuner has no MLflow
integration of its own; ``_with_mlflow`` adds it to whichever tuner is configured.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from functools import partial

import keras
import keras_tuner as kt

from trainer.data import make_dataset
from trainer.model import build_model, model_inputs
from trainer.train import MlflowEpochLogger, cosine_schedule
from visionpipe import features as F
from visionpipe import storage
from visionpipe.config import Config

log = logging.getLogger(__name__)

OBJECTIVE = "val_accuracy"

_TUNERS = {
    "random": kt.RandomSearch,
    "bayesian": kt.BayesianOptimization,
    "hyperband": kt.Hyperband,
}


@dataclass(frozen=True)
class TuneResult:
    """What the search found."""

    output_uri: str
    best_hyperparameters: dict
    best_score: float | None
    trials: int


def _with_mlflow(tuner_cls: type) -> type:
    """A subclass of ``tuner_cls`` that records every trial as a nested MLflow run.

    Trials also get the trainer's cosine learning-rate schedule over their epochs, so
    short trials are scored as the final training will run.
    """

    class MlflowTuner(tuner_cls):
        def run_trial(self, trial, *args, **kwargs):
            import mlflow

            rate = float(trial.hyperparameters.get("learning_rate"))
            schedule = cosine_schedule(rate, kwargs.get("epochs") or 1)
            kwargs["callbacks"] = [*kwargs.get("callbacks", []), schedule]
            if not mlflow.active_run():
                return super().run_trial(trial, *args, **kwargs)
            with mlflow.start_run(run_name=f"trial-{trial.trial_id}", nested=True):
                mlflow.set_tag("visionpipe.kind", "trial")
                mlflow.log_params(trial.hyperparameters.values)
                kwargs["callbacks"] = [*kwargs.get("callbacks", []), MlflowEpochLogger()]
                try:
                    result = super().run_trial(trial, *args, **kwargs)
                except Exception:
                    mlflow.set_tag("visionpipe.trial_status", "failed")
                    raise
                score = _best_of(result)
                if score is not None:
                    mlflow.log_metric(f"best_{OBJECTIVE}", score)
                return result

    MlflowTuner.__name__ = f"Mlflow{tuner_cls.__name__}"
    return MlflowTuner


def _best_of(result) -> float | None:
    histories = result if isinstance(result, list) else [result]
    scores = [
        max(h.history[OBJECTIVE])
        for h in histories
        if isinstance(h, keras.callbacks.History) and h.history.get(OBJECTIVE)
    ]
    return max(scores) if scores else None


def run_tune(
    examples_uri: str, transform_graph_uri: str, output_uri: str, config: Config
) -> TuneResult:
    """Searches hyperparameters on train/valid and writes the best to ``hyperparameters.json``.

    With ``tuner.max_trials == 0`` no search runs and the configured defaults are written.
    """
    from components.transform.transform import TransformGraph

    graph = TransformGraph.load(transform_graph_uri)
    build = partial(build_model, **model_inputs(graph), trainer=config.trainer, tuner=config.tuner)
    if config.tuner.max_trials == 0:
        best, score, trials = _defaults(build), None, 0
    else:
        best, score, trials = _search(build, examples_uri, graph.image_shape, config)
    storage.write_json(
        storage.join(output_uri, F.HYPERPARAMETERS_FILE),
        {
            "values": best.values,
            "config": best.get_config(),
            "score": score,
            "objective": OBJECTIVE,
        },
    )
    log.info("tune: best %s (%s=%s) after %d trials", best.values, OBJECTIVE, score, trials)
    return TuneResult(output_uri, dict(best.values), score, trials)


def _defaults(build) -> kt.HyperParameters:
    hp = kt.HyperParameters()
    build(hp)  # registers every hyperparameter with its default
    return hp


def _search(build, examples_uri, image_shape, config: Config):
    cfg = config.tuner
    kwargs = (
        {"max_epochs": cfg.epochs}
        if cfg.algorithm == "hyperband"
        else {"max_trials": cfg.max_trials}
    )
    with tempfile.TemporaryDirectory(prefix="tune-") as workdir:
        tuner = _with_mlflow(_TUNERS[cfg.algorithm])(
            hypermodel=build,
            objective=kt.Objective(OBJECTIVE, direction="max"),
            directory=workdir,
            project_name="search",
            seed=config.trainer.seed,
            overwrite=True,
            **kwargs,
        )
        # batch_size is searched too, but datasets are built once here with the default.
        batch = config.trainer.batch_size
        tuner.search(
            make_dataset(
                examples_uri, "train", image_shape, batch, shuffle=True, seed=config.trainer.seed
            ),
            validation_data=make_dataset(examples_uri, "valid", image_shape, batch),
            epochs=cfg.epochs,
            verbose=0,
        )
        trials = list(tuner.oracle.trials.values())
        completed = [t for t in trials if t.status == "COMPLETED" and t.score is not None]
        if not completed:
            messages = sorted({(t.message or t.status).strip().splitlines()[-1] for t in trials})
            raise RuntimeError(
                f"tune: none of the {len(trials)} trials completed; errors: {messages}"
            )
        best = tuner.oracle.get_best_trials(1)[0]
    return best.hyperparameters, best.score, len(trials)
