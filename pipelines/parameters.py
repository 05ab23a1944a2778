"""The pipeline's run parameters and ``configure``, the component that applies them.

A module of its own, importing no ``kfp``: the ``configure`` component imports it at run
time inside ``kfp.dsl.executor_main``, where importing ``kfp.compiler`` (which
``pipelines.pipeline`` needs) fails on a circular import in kfp 2.17 (``kfp.dsl.
pipeline_context`` half-initialised). In-process runs never saw it (kfp is imported in
full by then); ``--isolation subprocess`` and ``container`` did.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from visionpipe import progress
from visionpipe.config import Config


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
            f"{arguments['epochs'] or 'auto'} epochs",
            f"{arguments['max_trials']} trials",
        ]
    )
    progress.done("configure", shown)
    return config.to_json()
