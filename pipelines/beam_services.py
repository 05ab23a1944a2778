"""Beam's portable path on this machine: its Python job service and an SDK worker pool.

This is the job-submission, artifact-staging and Fn API path that Flink and Spark use
(``--runner=PortableRunner``), here with Beam's own job service
(``apache_beam.runners.portability.local_job_service_main``) and an external worker pool
(``apache_beam.runners.worker.worker_pool_main``) on loopback. ``python -m
pipelines.beam_services`` (``make beam-services``) starts both and prints the settings a
run needs; the tests use ``portable_services()``.

The worker pool starts its SDK workers with the ``python`` first on ``PATH``; a system
Python without Beam there fails with ``ModuleNotFoundError`` and the job then waits for
a worker that never comes. Both services are therefore started with this interpreter's
folder first on ``PATH``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

JOB_SERVICE = "apache_beam.runners.portability.local_job_service_main"
WORKER_POOL = "apache_beam.runners.worker.worker_pool_main"


class ServiceError(RuntimeError):
    """A Beam service did not start; the message names it and its last output."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(process: subprocess.Popen, port: int, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = (process.stdout.read() if process.stdout else "")[-2000:]
            raise ServiceError(f"{name} exited ({process.returncode}) before listening: {output}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise ServiceError(f"{name} did not listen on localhost:{port} within {timeout:.0f} s")


def settings(job_port: int, worker_port: int) -> list[str]:
    """The config overrides that run a Beam step on these services."""
    args = [
        f"--job_endpoint=localhost:{job_port}",
        "--environment_type=EXTERNAL",
        f"--environment_config=localhost:{worker_port}",
    ]
    return ["beam.runner=PortableRunner", f"beam.extra_args={args}"]


@contextlib.contextmanager
def portable_services(
    timeout: float = 60.0, worker_env: dict[str, str] | None = None
) -> Iterator[list[str]]:
    """Starts the job service and a worker pool; yields the config overrides; stops them.

    ``worker_env``: variables added to the worker pool's environment (its SDK workers
    inherit it); a ``PATH`` there goes first, before this interpreter's folder.
    """
    path = f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path}
    extra = dict(worker_env or {})
    pool_env = {**env, **extra, "PATH": ":".join(filter(None, [extra.get("PATH"), path]))}
    job_port, worker_port = _free_port(), _free_port()
    started = []
    try:
        for module, flag, port, environment in (
            (JOB_SERVICE, "--port", job_port, env),
            (WORKER_POOL, "--service_port", worker_port, pool_env),
        ):
            process = subprocess.Popen(
                [sys.executable, "-m", module, flag, str(port)],
                env=environment,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            started.append(process)
            _wait(process, port, module.rsplit(".", 1)[-1], timeout)
        yield settings(job_port, worker_port)
    finally:
        for process in started:
            process.terminate()
        for process in started:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def main() -> int:
    """Starts both services and waits; prints the ``--set`` options to use them."""
    with portable_services() as overrides:
        print("Beam job service and worker pool are up; run a step with:")
        print("  " + " ".join(f"--set '{o}'" for o in overrides))
        print("Ctrl-C stops them.", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    sys.exit(main())
