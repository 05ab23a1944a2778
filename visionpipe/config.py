"""The one configuration schema: typed, validated, with defaults.

A config comes from the defaults, then an optional YAML file, then repeatable
``section.key=value`` overrides. Every value is validated before any work starts;
errors name the offending key (``ConfigError``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from visionpipe.errors import UserError
from visionpipe.sections import (  # noqa: F401 - the sections are part of the config's API
    BACKBONES,
    CLASS_METRICS,
    EDGE_FORMATS,
    LOWER_IS_BETTER,
    MODEL_METRICS,
    RESIZE_MODES,
    ROBUSTNESS_PREFIX,
    SLICE_METRICS,
    TUNABLE,
    TUNER_ALGORITHMS,
    BeamConfig,
    ChangeThreshold,
    EdgeConfig,
    EvaluateConfig,
    IngestConfig,
    MlflowConfig,
    MonitorConfig,
    PipelineConfig,
    PredictConfig,
    PushConfig,
    SignificanceConfig,
    SliceGap,
    Threshold,
    TrainerConfig,
    TransformConfig,
    TunerConfig,
    ValidateConfig,
    _Section,
)


class ConfigError(UserError, ValueError):
    """A configuration value, key or file is invalid; the message names it."""


MODEL_SECTIONS = ("ingest", "transform", "trainer", "tuner", "evaluate")
# Settings of those sections that change only speed, logging or resumability.
OPERATIONAL = frozenset(
    {
        "ingest.threads",
        "ingest.batch_size",
        "ingest.shard_size_mb",
        "ingest.gzip_level",
        "trainer.cache_max_mb",
        "trainer.checkpoint_every",
        "trainer.tensorboard",
        "evaluate.batch_size",
        "evaluate.gallery_size",
    }
)


class Config(_Section):
    """The whole visionpipe configuration."""

    ingest: IngestConfig = IngestConfig()
    validation: ValidateConfig = ValidateConfig()
    transform: TransformConfig = TransformConfig()
    trainer: TrainerConfig = TrainerConfig()
    tuner: TunerConfig = TunerConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    push: PushConfig = PushConfig()
    mlflow: MlflowConfig = MlflowConfig()
    beam: BeamConfig = BeamConfig()
    edge: EdgeConfig = EdgeConfig()
    predict: PredictConfig = PredictConfig()
    monitor: MonitorConfig = MonitorConfig()
    pipeline: PipelineConfig = PipelineConfig()

    def to_json(self) -> str:
        """Serialises the config; ``Config.from_json`` reads it back."""
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> Config:
        """Reads a config written by ``to_json``."""
        return _validate(json.loads(text), source="config JSON")

    def with_overrides(self, overrides: list[str]) -> Config:
        """A copy with ``section.key=value`` overrides applied, validated again."""
        data = json.loads(self.to_json())
        for item in overrides:
            _apply_override(data, item)
        return _validate(data, source="overrides")

    def flat(self) -> dict[str, Any]:
        """``section.key -> value`` pairs, for logging as MLflow params."""
        out: dict[str, Any] = {}
        for section, values in self.model_dump().items():
            for key, value in values.items():
                out[f"{section}.{key}"] = value
        return out

    def model_settings(self) -> dict[str, Any]:
        """The settings a pipeline run's outcome depends on: what data check compares.

        Every value of the sections that shape the data, the model and the gate
        (``ingest``, ``transform``, ``trainer``, ``tuner``, ``evaluate``) and the
        registered name, less the ones that change only speed or where things go
        (``OPERATIONAL``). Where the run is tracked, served or executed (``mlflow``,
        ``beam``, ``pipeline``, the serving root) does not change the model.
        """
        return {
            key: value
            for key, value in self.flat().items()
            if (key.split(".", 1)[0] in MODEL_SECTIONS or key == "push.model_name")
            and key not in OPERATIONAL
        }


def load_config(path: str | Path | None = None, overrides: list[str] | tuple = ()) -> Config:
    """Builds a validated config from defaults, a YAML file and ``key=value`` overrides.

    Args:
        path: optional YAML file with the same sections as ``Config``.
        overrides: strings ``section.key=value``; values are parsed as YAML
            (so ``3``, ``0.5``, ``true``, ``[a, b]`` have their natural types).

    Returns:
        The validated, frozen ``Config``.

    Raises:
        ConfigError: the file is missing or malformed, a key is unknown, or a
            value has the wrong type or range. The message names the key.
    """
    data: dict[str, Any] = {}
    if path:
        data = _read_yaml(Path(path))
    for item in overrides:
        _apply_override(data, item)
    return _validate(data, source=str(path) if path else "defaults")


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"Config file {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of sections.")
    return data


def _apply_override(data: dict[str, Any], item: str) -> None:
    key, sep, raw = item.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) != 2 or not all(parts):
        raise ConfigError(f"Override must look like section.key=value. Received: {item!r}")
    section, name = parts
    if section not in Config.model_fields:
        raise ConfigError(
            f"Unknown config key '{key}': no section '{section}' "
            f"(sections: {', '.join(Config.model_fields)})."
        )
    fields = Config.model_fields[section].annotation.model_fields
    if name not in fields:
        raise ConfigError(f"Unknown config key '{key}' (keys of '{section}': {', '.join(fields)}).")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"Config key '{key}': cannot parse value {raw!r}: {err}") from err
    if fields[name].annotation is str and not isinstance(value, str):
        value = raw  # e.g. a model name "007" stays a string
    data.setdefault(section, {})
    if not isinstance(data[section], dict):
        raise ConfigError(f"Config section '{section}' must be a mapping.")
    data[section][name] = value


def _validate(data: dict[str, Any], source: str) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"]) or "(top level)"
            if e["type"] == "extra_forbidden":
                problems.append(f"unknown config key '{key}'")
            else:
                problems.append(f"config key '{key}': {e['msg']} (received {e.get('input')!r})")
        raise ConfigError(f"Invalid configuration from {source}: " + "; ".join(problems)) from None
