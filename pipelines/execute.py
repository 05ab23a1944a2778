"""Running a declared step: its own run in the tracking store, its context, its console line.

``run_step`` is the tracked wrapper every caller shares (the KFP component bodies, the
CLI verbs, tests and benchmarks): a run of the step's own (nested under the pipeline
run when there is one), a ``StepContext`` on the MLflow adapters, and the step's key
figure as a progress line. ``execute_component`` is what a generated KFP body calls:
it maps the KFP artifacts to paths, runs the step, and fills the output artifacts'
metadata through the step's ``publish``.

Each step run also records ``peak_memory_mb``: the process's peak resident memory
(Linux's VmHWM, reset when the step starts) while the step ran. In-process runs share
one process, so the reset is what makes the figure the step's own; worker processes
(``trainer.workers``) and Beam's worker processes are not in it.
"""

from __future__ import annotations

import inspect
from typing import Any

from pipelines import catalog
from pipelines.adapters.mlflow_tracking import Tracking
from pipelines.step_cache import StepCache
from visionpipe import progress
from visionpipe.config import Config
from visionpipe.step import Step, StepContext
from visionpipe.tracker import NullTracker, PipelineRun

# The parameters every pipeline component takes besides its own ports.
COMMON_PARAMETERS = ("config_json", "mlflow_tracking_uri", "mlflow_run_id")


def run_step(
    step: str | Step,
    config: Config,
    tracking: Tracking | None = None,
    *,
    use_cache: bool = False,
    **kwargs: Any,
):
    """Runs ``step`` with ``kwargs`` (its ports and options), recorded in ``tracking``.

    ``tracking`` defaults to the config's store, with the pipeline run that
    ``$MLFLOW_RUN_ID`` names, if any. A step with ``own_run`` records a run of its own,
    FINISHED or FAILED with the error; in a process that does not record (a tuning or
    training worker) the step runs with no run and prints nothing. With ``use_cache``
    (the pipeline's components) a step with a ``cache_key`` is served from the step
    cache when ``pipeline.cache`` is on (``pipelines.step_cache``).
    """
    step = catalog.step(step) if isinstance(step, str) else step
    session = tracking if tracking is not None else Tracking.open(config)
    cache = None
    if use_cache and config.pipeline.cache and step.cache_key is not None and step.own_run:
        cache = StepCache.open(config)

    def call(tracker, pipeline) -> Any:
        ctx = StepContext(config, tracker, pipeline, session.registry(), session.tracker)
        return step.run(ctx, **kwargs)

    def run(tracker, pipeline) -> Any:
        if cache is None:
            return call(tracker, pipeline)
        return cache.run(step, config, kwargs, tracker, pipeline, call)

    if not step.records():  # a worker: its chief records
        return run(NullTracker(), PipelineRun())
    if step.own_run:
        with session.step(step.name) as tracker:
            reset = reset_peak_memory()
            result = run(tracker, session.pipeline())
            peak = peak_memory_mb()
            if reset and peak is not None:
                tracker.log_metrics({"peak_memory_mb": peak})
    else:
        result = run(NullTracker(), session.pipeline())
    figure = step.figure(result)
    if cache is not None and cache.hit:
        figure = f"{figure} (cached)".lstrip()
    progress.done(step.name, figure)
    return result


_STATUS = "/proc/self/status"


def reset_peak_memory() -> bool:
    """Resets this process's peak resident memory to its current one (Linux); False elsewhere."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # 5: reset the peak RSS (proc(5), Linux 4.0+)
        return True
    except OSError:
        return False


def peak_memory_mb() -> float | None:
    """The peak resident memory (VmHWM) of this process in MB; None where there is no /proc."""
    try:
        with open(_STATUS) as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def component_context(
    config_json: str, mlflow_tracking_uri: str, mlflow_run_id: str
) -> tuple[Config, Tracking]:
    """Inside a KFP component: the run's config, and the session on the run's store.

    Empty values fall back to what KFP's MLflow integration injects
    (``$MLFLOW_TRACKING_URI``, ``$MLFLOW_RUN_ID``), then to the config's own store.
    """
    config = Config.from_json(config_json)
    return config, Tracking.open(config, mlflow_tracking_uri, mlflow_run_id)


def execute_component(name: str, arguments: dict[str, Any]):
    """The body of step ``name``'s KFP component, given its arguments (``locals()``).

    Artifacts become their ``.path``; the step's ``run`` gets the ports and parameters
    its signature names; ``publish`` writes the artifacts' metadata and gives the
    component's return value.
    """
    step = catalog.step(name)
    config, session = component_context(*(arguments[k] for k in COMMON_PARAMETERS))
    accepted = inspect.signature(step.run).parameters
    kwargs = {p: arguments[p].path for p in (*step.inputs, *step.outputs) if p in accepted}
    kwargs.update({p: arguments[p] for p in step.params if p in accepted})
    result = run_step(step, config, session, use_cache=True, **kwargs)
    if step.publish is None:
        return None
    ports = {k: v for k, v in arguments.items() if k not in COMMON_PARAMETERS}
    return step.publish(result, ports)
