"""A step, declared once: ``Step`` is what goes in and out; its ``run`` is the code.

Each step folder under ``components/`` has a ``spec.py`` whose ``STEPS`` holds one or
more ``Step`` values (push's folder also declares ``rollback``). Everything else is
derived from them (``pipelines``): the KFP component (a generated thin body with the
step's inputs, outputs and parameters), the tracked wrapper (a run per step, nested
under the pipeline run), the CLI verb (``Verb``), the console line (``figure``) and
the lines of the run summary (``summary``). A step's ``run`` gets a ``StepContext``:
the config and the interfaces it records and registers through, never MLflow itself.

``run(ctx, **ports)`` takes the KFP artifacts by name as paths and the parameters by
value; extra keyword arguments (CLI-only options) have defaults. The KFP body calls it
with the ports its signature names, so a step takes only what it uses.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from visionpipe.config import Config
from visionpipe.record import RunRecord
from visionpipe.registry import Registry
from visionpipe.tracker import NullTracker, PipelineRun, Tracker

# KFP artifact types a port may have (``kfp.dsl`` names).
ARTIFACT_TYPES = ("Artifact", "Dataset", "Model", "Metrics", "ClassificationMetrics", "Markdown")


@dataclass(frozen=True)
class StepContext:
    """What a step's ``run`` works with besides its ports.

    Attributes:
        config: the validated configuration.
        tracker: this step's own run (records nothing when the step has none).
        pipeline: the pipeline run the step belongs to (none outside a pipeline).
        registry: the model registry.
        open_run: a tracker of an existing run by id (tuning workers nest trials there).
    """

    config: Config
    tracker: Tracker = field(default_factory=NullTracker)
    pipeline: PipelineRun = field(default_factory=PipelineRun)
    registry: Registry | None = None
    open_run: Callable[[str], Tracker] = lambda run_id: NullTracker()


def named(*names: str) -> Callable[[argparse.Namespace], dict[str, Any]]:
    """A ``Verb.call`` passing the parsed options of these names to ``run`` as they are."""
    return lambda args: {name: getattr(args, name) for name in names}


@dataclass(frozen=True)
class Verb:
    """A step's CLI verb: its arguments, how they become the step's call, what it prints.

    Attributes:
        help: one line for ``visionpipe --help``.
        arguments: adds the verb's arguments to its parser.
        call: the parsed arguments -> ``run``'s keyword arguments.
        show: prints the result; returns the exit status (None: 0).
        launch: run instead of the step when it returns an exit status (a verb that
            starts worker processes of itself: ``train --workers``).
        name: the verb, when not the step's own name.
        overrides: config overrides (``section.key=value``) that the verb's options
            stand for, applied and validated by ``Config`` before the call: the same
            settings a KFP component gets in its config.
    """

    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    call: Callable[[argparse.Namespace], dict[str, Any]]
    show: Callable[[argparse.Namespace, Any], int | None]
    launch: Callable[[argparse.Namespace], int | None] | None = None
    overrides: Callable[[argparse.Namespace], list[str]] = lambda args: []
    name: str = ""  # the verb's name when it is not the step's (``export-edge``)


@dataclass(frozen=True)
class Step:
    """One step of the pipeline (or a verb that does tracked work on its own).

    Attributes:
        name: the step's name (``data-check``): its run, console line and CLI verb.
        run: ``run(ctx, **ports) -> result``, the step's work.
        doc: the KFP component's description.
        inputs: input artifacts, name -> KFP type name (``ARTIFACT_TYPES``).
        outputs: output artifacts, name -> KFP type name.
        params: input parameters, name -> Python type (str, int, float, bool).
        returns: the component's single output parameter's type, or None.
        publish: ``publish(result, ports) -> return value``: the output artifacts'
            metadata and the component's return value (``ports``: the component's
            arguments by name, artifacts and parameters).
        figure: the console's key figure of a result.
        summary: the run summary's ``(label, text)`` lines from the run's record.
        verb: the CLI verb, or None (a step only the pipeline runs).
        own_run: whether the step records a run of its own (else only on the pipeline).
        records: whether this process records (False in a tuning or training worker).
        training: runs on the training image, with the pipeline's accelerators.
        in_pipeline: a KFP component (False: a CLI verb only).
        order: where the step comes in listings (``visionpipe --help``): the pipeline's
            steps in the order they run, then the verbs that use a model.
        cache_key: for a deterministic step, what its outputs depend on besides its
            name and the project's version: ``cache_key(config, ports) -> dict`` (JSON,
            content digests of its inputs and its settings; ``visionpipe.content``).
            In the pipeline such a step is served from the step cache when that is
            unchanged (``pipelines.step_cache``). None: never cached.
    """

    name: str
    run: Callable[..., Any]
    doc: str = ""
    inputs: Mapping[str, str] = field(default_factory=dict)
    outputs: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, type] = field(default_factory=dict)
    returns: type | None = None
    publish: Callable[[Any, dict[str, Any]], Any] | None = None
    figure: Callable[[Any], str] = lambda result: ""
    summary: Callable[[RunRecord], list[tuple[str, str]]] | None = None
    verb: Verb | None = None
    own_run: bool = True
    records: Callable[[], bool] = lambda: True
    training: bool = False
    in_pipeline: bool = True
    order: int = 100
    cache_key: Callable[[Config, Mapping[str, Any]], dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        for port, kind in {**self.inputs, **self.outputs}.items():
            if kind not in ARTIFACT_TYPES:
                raise ValueError(f"step {self.name}: port {port!r} has unknown type {kind!r}")
        for param, kind in self.params.items():
            if kind not in (str, int, float, bool):
                raise ValueError(f"step {self.name}: parameter {param!r} is a {kind!r}")

    @property
    def function_name(self) -> str:
        """The KFP component's function name (``data_check``)."""
        return self.name.replace("-", "_")
