"""What the Beam steps share: pipeline options and reading a job's counters on any runner."""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions

from visionpipe.config import BeamConfig


def pipeline_options(config: BeamConfig) -> PipelineOptions:
    """Options for the configured runner.

    Locally this is Beam's DirectRunner; any other runner (Dataflow, Flink, Spark) is
    selected with ``beam.runner`` and configured with ``beam.extra_args``.
    """
    args = [f"--runner={config.runner}", *config.extra_args]
    if config.runner == "DirectRunner":
        args += [
            f"--direct_num_workers={config.direct_num_workers}",
            f"--direct_running_mode={config.direct_running_mode}",
        ]
    return PipelineOptions(args)


class MetricsUnavailableError(RuntimeError):
    """The runner reported none of a job's counters."""


def counter_values(result, namespace: str) -> dict[str, int]:
    """A finished job's counters of ``namespace``, by name.

    Committed values where the runner reports them, attempted ones where it does not
    (some runners report only attempted metrics; reading ``committed`` alone gave 0
    there). A counter the runner reports without either is an error, never a 0.

    Raises:
        MetricsUnavailableError: the runner reported no counter of ``namespace`` at all,
            or one without a value; the message names the runner.
    """
    from apache_beam.metrics.metric import MetricsFilter

    runner = type(result).__name__
    try:
        counters = result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]
    except NotImplementedError:
        counters = []
    if not counters:
        raise MetricsUnavailableError(
            f"the Beam runner ({runner}) reported no {namespace!r} counters; "
            "its counts cannot be checked"
        )
    found: dict[str, int] = {}
    for c in counters:
        value = c.committed if c.committed is not None else c.attempted
        if value is None:
            raise MetricsUnavailableError(
                f"the Beam runner ({runner}) reported counter {c.key.metric.name!r} without "
                "a committed or attempted value"
            )
        found[c.key.metric.name] = found.get(c.key.metric.name, 0) + int(value)
    return found
