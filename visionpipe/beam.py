"""What the Beam steps share: the runner, pinned and named; options; counters on any runner.

Beam 2.77's ``DirectRunner`` is a switch: it first tries Prism, which it downloads from
GitHub where a network exists and then runs the whole job on; where the download fails
(offline, as CI here) it falls back, silently, to the in-process FnApiRunner. The same
configuration would so run on one engine in CI and on another on users' machines.
``beam_pipeline`` pins ``DirectRunner`` (the default) to the FnApiRunner, the engine
tested here, on every machine, and logs which runner runs each job. ``PrismRunner``
asks for Prism by name; any other runner name (Dataflow, Flink, Spark, Portable) goes to
Beam as it is.
"""

from __future__ import annotations

import logging

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from visionpipe.config import BeamConfig
from visionpipe.errors import UserError

log = logging.getLogger(__name__)


class BeamRunnerError(UserError, ValueError):
    """``beam.runner`` names a runner Beam does not know."""


class BeamJobError(UserError, RuntimeError):
    """A Beam job could not run where it was sent: the message names the runner and endpoint."""


def run_job(pipeline: beam.Pipeline, config: BeamConfig, job: str):
    """Runs ``pipeline`` to the end; returns its result.

    Raises:
        BeamJobError: the job service does not answer, nothing listens at the worker
            pool's address, or the job ended in another state than DONE; one line naming
            the runner and the endpoint.
    """
    try:
        result = pipeline.run()
        result.wait_until_finish()
    except Exception as err:  # noqa: BLE001 - gRPC and runner errors have many types
        problem = _endpoint_problem(err, config)
        if problem is None:
            raise
        raise BeamJobError(f"Beam job {job} on {config.runner}: {problem}") from None
    state = getattr(result, "state", "DONE")
    if str(state) not in ("DONE", "PipelineState.DONE"):
        raise BeamJobError(f"Beam job {job} on {config.runner} ended {state}, not DONE")
    return result


def _endpoint_problem(err: Exception, config: BeamConfig) -> str | None:
    """What an error says of an endpoint, in one line; None when it is about something else."""
    import re

    flags = dict(a.lstrip("-").split("=", 1) for a in config.extra_args if "=" in a)
    if type(err).__name__ == "FutureTimeoutError":
        endpoint = flags.get("job_endpoint", "the job service")
        timeout = flags.get("job_server_timeout", "60")
        return f"the job service at {endpoint} did not answer within {timeout} s (is it running?)"
    found = re.search(r"failed to connect to all addresses[^\n]*?ipv4:([\d.]+:\d+)", str(err))
    if found:
        address = found.group(1)
        pool_port = flags.get("environment_config", "").rpartition(":")[2]
        whose = " (the SDK worker pool, --environment_config)"
        if not pool_port or address.rpartition(":")[2] != pool_port:
            whose = ""
        return f"nothing listens at {address}{whose}: connection refused"
    return None


def beam_pipeline(config: BeamConfig, job: str) -> beam.Pipeline:
    """A pipeline on the configured runner; the log says which runner runs ``job``.

    Raises:
        BeamRunnerError: ``beam.runner`` is no runner Beam knows (before any work).
    """
    options = pipeline_options(config)
    runner = None
    described = config.runner
    if config.runner == "DirectRunner":
        runner = _in_process_runner(options)
        workers = config.direct_num_workers or "one per core"
        described = (
            f"FnApiRunner, in this process ({config.direct_running_mode}, {workers} "
            "worker(s)); beam.runner DirectRunner is pinned to it, Prism is never tried"
        )
    try:
        pipeline = beam.Pipeline(runner=runner, options=options)
    except ValueError as err:
        if "Unexpected pipeline runner" not in str(err):
            raise
        raise BeamRunnerError(
            f"beam.runner={config.runner!r}: not a runner Beam knows (DirectRunner, "
            "PrismRunner, PortableRunner, DataflowRunner, FlinkRunner, SparkRunner, or a "
            "runner class's full name)"
        ) from None
    log.info("Beam job %s: runner %s", job, described)
    return pipeline


def _in_process_runner(options: PipelineOptions):
    """Beam's FnApiRunner, provisioned as DirectRunner provisions it (its options)."""
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    info = beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)
    return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(info))


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
