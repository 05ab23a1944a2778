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

    With an external SDK worker pool (``--environment_type=EXTERNAL``) the pool is first
    asked to start one probe worker (``probe_worker_pool``): Beam's runner would wait
    forever for a worker that never connects.

    Raises:
        BeamJobError: the job service does not answer, nothing listens at the worker
            pool's address, the pool's worker does not connect within
            ``beam.worker_start_timeout_s``, a worker went away mid-job, or the job
            ended in another state than DONE; one line naming the runner and endpoint.
    """
    flags = _flags(config)
    if flags.get("environment_type") == "EXTERNAL" and flags.get("environment_config"):
        problem = probe_worker_pool(flags["environment_config"], config.worker_start_timeout_s)
        if problem:
            raise BeamJobError(f"Beam job {job} on {config.runner}: {problem}")
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


def _flags(config: BeamConfig) -> dict[str, str]:
    """``beam.extra_args``'s ``--name=value`` flags, by name."""
    return dict(a.lstrip("-").split("=", 1) for a in config.extra_args if "=" in a)


def probe_worker_pool(endpoint: str, timeout_s: float) -> str | None:
    """Asks the SDK worker pool at ``endpoint`` for one worker; None once it connects.

    The probe is the Fn API's own handshake: ``BeamFnExternalWorkerPool.StartWorker``
    with this process's endpoints, on a gRPC server that counts any call from the
    worker (the Python harness calls Control; a container's boot program calls
    Provision first) as "it started", then ends the call so the worker exits.

    Returns:
        None when a worker connected within ``timeout_s``; otherwise what went wrong, in
        one line naming the endpoint (nothing listens, the pool refused, no worker came).
    """
    import threading
    from concurrent import futures

    import grpc
    from apache_beam.portability.api import (
        beam_fn_api_pb2,
        beam_fn_api_pb2_grpc,
        beam_provision_api_pb2_grpc,
        endpoints_pb2,
    )

    arrived = threading.Event()

    class Control(beam_fn_api_pb2_grpc.BeamFnControlServicer):
        def Control(self, iterator, context):  # noqa: N802 - the Fn API's name
            arrived.set()
            return iter(())

    class Provision(beam_provision_api_pb2_grpc.ProvisionServiceServicer):
        def GetProvisionInfo(self, request, context):  # noqa: N802
            arrived.set()
            context.abort(grpc.StatusCode.UNAVAILABLE, "visionpipe's worker probe")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    beam_fn_api_pb2_grpc.add_BeamFnControlServicer_to_server(Control(), server)
    beam_provision_api_pb2_grpc.add_ProvisionServiceServicer_to_server(Provision(), server)
    port = server.add_insecure_port("[::]:0")
    server.start()
    here = endpoints_pb2.ApiServiceDescriptor(url=f"{_reachable_host(endpoint)}:{port}")
    request = beam_fn_api_pb2.StartWorkerRequest(
        worker_id="visionpipe-probe",
        control_endpoint=here,
        provision_endpoint=here,
        artifact_endpoint=here,
        logging_endpoint=here,
    )
    try:
        with grpc.insecure_channel(endpoint) as channel:
            pool = beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolStub(channel)
            try:
                response = pool.StartWorker(request, timeout=min(timeout_s, 30))
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.UNAVAILABLE:
                    return (
                        f"nothing listens at {endpoint} (the SDK worker pool): connection refused"
                    )
                return f"the SDK worker pool at {endpoint} did not answer: {err.code().name}"
            if response.error:
                error = response.error.strip().splitlines()[-1]
                return f"the SDK worker pool at {endpoint} could not start a worker: {error}"
            if not arrived.wait(timeout_s):
                return (
                    f"the SDK worker pool at {endpoint} started a worker that did not connect "
                    f"within {timeout_s:g} s (beam.worker_start_timeout_s): is the pool's "
                    "`python` (first on its PATH) one with apache-beam, or its image this "
                    "project's?"
                )
            pool.StopWorker(beam_fn_api_pb2.StopWorkerRequest(worker_id="visionpipe-probe"))
            return None
    finally:
        server.stop(grace=None)


def _reachable_host(endpoint: str) -> str:
    """The name a worker behind ``endpoint`` reaches this machine by (loopback: localhost)."""
    import socket

    host = endpoint.rpartition(":")[0].strip("[]")
    if host in ("localhost", "127.0.0.1", "::1", ""):
        return "localhost"
    return socket.getfqdn()


def _endpoint_problem(err: Exception, config: BeamConfig) -> str | None:
    """What an error says of an endpoint, in one line; None when it is about something else."""
    import re

    flags = _flags(config)
    if "Channel closed prematurely" in str(err):
        pool = flags.get("environment_config", "its SDK worker")
        return f"a worker of {pool} went away mid-job (its connection closed); nothing was kept"
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
