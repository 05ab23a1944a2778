"""The tune step: a keras-tuner search over ``build_model``'s hyperparameters.

Each trial is a child of the tracker ``run_tune`` is given (with MLflow: a run nested
under the tune step's run), with its hyperparameters, per-epoch metrics and final
score (or FAILED, with the error). ``_with_tracking`` adds this to whichever
keras-tuner tuner is configured.

The search directory is kept (``<output>/search``): a re-run with the same output
continues the search instead of repeating finished trials. Distributed mode is
keras-tuner's own: a chief process serves the oracle and worker processes run trials,
selected by ``KERASTUNER_TUNER_ID`` (``chief``, ``tuner0``, ...),
``KERASTUNER_ORACLE_IP`` and ``KERASTUNER_ORACLE_PORT``; ``visionpipe tune
--tuner-workers N`` starts them on loopback, and the same variables work across machines.
"""

from __future__ import annotations

import glob
import logging
import os
import tempfile
from dataclasses import dataclass
from functools import partial

import keras
import keras_tuner as kt

from trainer.callbacks import MetricsLogger, cosine_schedule
from trainer.data import split_datasets
from trainer.model import build_model, model_inputs
from trainer.roles import tuner_role  # noqa: F401 - part of this module's API
from visionpipe import features as F
from visionpipe import storage
from visionpipe.config import Config
from visionpipe.tracker import NullTracker, Tracker

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


def _with_tracking(tuner_cls: type, tracker: Tracker) -> type:
    """A subclass of ``tuner_cls`` that records every trial as a child of ``tracker``.

    Trials also get the trainer's cosine learning-rate schedule over their epochs, so
    short trials are scored as the final training will run.
    """

    class TrackedTuner(tuner_cls):
        def run_trial(self, trial, *args, **kwargs):
            _report_trial(self.oracle)
            rate = float(trial.hyperparameters.get("learning_rate"))
            schedule = cosine_schedule(rate, kwargs.get("epochs") or 1)
            run = tracker.child(
                f"trial-{trial.trial_id}",
                tags={
                    "visionpipe.kind": "trial",
                    "visionpipe.tuner_id": os.environ.get("KERASTUNER_TUNER_ID", "standalone"),
                },
            )
            run.log_params(trial.hyperparameters.values)
            callbacks = [*kwargs.get("callbacks", []), schedule, MetricsLogger(run)]
            try:
                result = super().run_trial(trial, *args, **{**kwargs, "callbacks": callbacks})
            except Exception as err:
                run.finish(False, str(err))
                raise
            # The trial's best-epoch weights are never used (train retrains the best
            # hyperparameters); keeping them would make the kept search dir grow per trial.
            for path in glob.glob(os.path.join(self.get_trial_dir(trial.trial_id), "*.h5")):
                os.remove(path)
            score = _best_of(result)
            if score is not None:
                run.log_metrics({f"best_{OBJECTIVE}": score})
            run.finish(True)
            return result

    TrackedTuner.__name__ = f"Tracked{tuner_cls.__name__}"
    return TrackedTuner


def _report_trial(oracle) -> None:
    """``trial i/N`` as the tune step's progress (a distributed worker's oracle is remote)."""
    from visionpipe import progress

    trials = getattr(oracle, "trials", None)
    if trials is None:
        return
    total = getattr(oracle, "max_trials", None) or 0
    index = len(trials)
    fraction = (index - 1) / total if total else None
    progress.report("tune", f"trial {index}/{total}" if total else f"trial {index}", fraction)


def _best_of(result) -> float | None:
    histories = result if isinstance(result, list) else [result]
    scores = [
        max(h.history[OBJECTIVE])
        for h in histories
        if isinstance(h, keras.callbacks.History) and h.history.get(OBJECTIVE)
    ]
    return max(scores) if scores else None


def run_tune(
    examples_uri: str,
    transform_graph_uri: str,
    output_uri: str,
    config: Config,
    tracker: Tracker | None = None,
) -> TuneResult:
    """Searches hyperparameters on train/valid and writes the best to ``hyperparameters.json``.

    With ``tuner.max_trials == 0`` no search runs and the configured defaults are
    written. A distributed worker (``KERASTUNER_TUNER_ID=tunerN``) runs trials and
    writes nothing; the chief writes the result once every trial has ended. Each
    trial is reported as a child of ``tracker``.
    """
    from visionpipe.transform_graph import TransformGraph

    graph = TransformGraph.load(transform_graph_uri)
    build = partial(build_model, **model_inputs(graph), trainer=config.trainer, tuner=config.tuner)
    if config.tuner.max_trials == 0:
        best, score, ranking = _defaults(build), None, []
    else:
        hypermodel = TrialModel(build, examples_uri, graph, config)
        best, score, ranking = _search(hypermodel, output_uri, config, tracker or NullTracker())
        if best is None:  # a worker: the chief reports
            return TuneResult(output_uri, {}, None, len(ranking))
    reason = explain(ranking, config.tuner.search_space)
    storage.write_json(
        storage.join(output_uri, F.HYPERPARAMETERS_FILE),
        {
            "values": best.values,
            "config": best.get_config(),
            "score": score,
            "objective": OBJECTIVE,
            "reason": reason,
            "trials": ranking,
        },
    )
    log.info("tune: %s", reason)
    return TuneResult(output_uri, dict(best.values), score, len(ranking))


def _defaults(build) -> kt.HyperParameters:
    hp = kt.HyperParameters()
    build(hp)  # registers every hyperparameter with its default
    return hp


class TrialModel(kt.HyperModel):
    """``build_model``, fitted on datasets made with the trial's own batch size.

    keras-tuner hands ``fit`` the trial's hyperparameters, so ``batch_size`` is applied
    for real (datasets are made once per batch size and reused by later trials).
    """

    def __init__(self, build, examples_uri: str, graph, config: Config) -> None:
        super().__init__()
        self._build = build
        self._examples_uri = examples_uri
        self._graph = graph
        self._trainer = config.trainer
        self._datasets: dict[int, dict] = {}

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        """The trial's model."""
        return self._build(hp)

    def fit(self, hp: kt.HyperParameters, model: keras.Model, *args, **kwargs):
        """Trains on train, validates on valid, in batches of the trial's ``batch_size``."""
        data = self.datasets(int(hp.get("batch_size")))
        return model.fit(data["train"], validation_data=data["valid"], shuffle=False, **kwargs)

    def datasets(self, batch_size: int) -> dict:
        """The train and valid datasets for a batch size, made as training makes them."""
        if batch_size not in self._datasets:
            self._datasets[batch_size] = split_datasets(
                self._examples_uri,
                self._graph,
                batch_size,
                self._trainer,
                splits=("train", "valid"),
            )
        return self._datasets[batch_size]


def explain(ranking: list[dict], search_space: dict) -> str:
    """Why the best trial was chosen: its score against the runner-up, and what differed."""
    done = [t for t in ranking if t["score"] is not None]
    if not done:
        return "no search (tuner.max_trials=0): the configured trainer values"
    best = done[0]
    text = f"best {OBJECTIVE} {best['score']:.4f} of {len(done)} completed trials"
    searched = {k: v for k, v in best["values"].items() if k in search_space}
    text += f" with {searched}"
    if len(done) > 1:
        second = done[1]
        changed = {
            k: f"{second['values'].get(k)} -> {v}"
            for k, v in searched.items()
            if second["values"].get(k) != v
        }
        text += f"; runner-up {second['score']:.4f} (changed: {changed or 'nothing'})"
    return text


def search_directory(output_uri: str) -> str | None:
    """The kept search directory under a local output, or None for a remote output."""
    if "://" in output_uri:
        return None
    return os.path.join(output_uri, "search")


def _search(hypermodel: TrialModel, output_uri: str, config: Config, tracker: Tracker):
    cfg = config.tuner
    kwargs = (
        {"max_epochs": cfg.epochs}
        if cfg.algorithm == "hyperband"
        else {"max_trials": cfg.max_trials}
    )
    role = tuner_role()
    kept = search_directory(output_uri)
    with tempfile.TemporaryDirectory(prefix="tune-") as scratch:
        tuner = _with_tracking(_TUNERS[cfg.algorithm], tracker)(
            hypermodel=hypermodel,
            objective=kt.Objective(OBJECTIVE, direction="max"),
            directory=kept or scratch,
            project_name="search",
            seed=config.trainer.seed,
            overwrite=False,  # reload the oracle: finished trials are not run again
            max_consecutive_failed_trials=cfg.max_consecutive_failed_trials,
            **kwargs,
        )
        tuner.search(epochs=cfg.epochs, verbose=0)  # TrialModel.fit makes the datasets
        if role == "worker":  # its oracle is the chief's, behind a client
            return None, None, []
        trials = list(tuner.oracle.trials.values())
        completed = [t for t in trials if t.status == "COMPLETED" and t.score is not None]
        failed = [t for t in trials if t.status == "FAILED"]
        if failed:
            log.warning(
                "tune: %d of %d trials failed; the search went on", len(failed), len(trials)
            )
        if not completed:
            messages = sorted({(t.message or t.status).strip().splitlines()[-1] for t in trials})
            raise RuntimeError(
                f"tune: none of the {len(trials)} trials completed; errors: {messages}"
            )
    # Best score first; equal scores (common on small validation splits) in trial order,
    # so a rerun that reloads the search reports the same best trial.
    ranked = sorted(trials, key=lambda t: (-(t.score if t.score is not None else -1.0), t.trial_id))
    best = ranked[0]
    ranking = [
        {
            "trial": t.trial_id,
            "values": t.hyperparameters.values,
            "score": t.score,
            "status": t.status,
        }
        for t in ranked
    ]
    return best.hyperparameters, best.score, ranking
