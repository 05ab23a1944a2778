"""Local multi-worker training: N processes of the same ``visionpipe train`` command.

Each process gets a ``TF_CONFIG`` naming the whole cluster (free loopback ports) and
its own index, and ``trainer.strategy=multi_worker``; worker 0 is the chief, which
exports the model and logs to MLflow. On a cluster the same command runs unchanged
in each worker pod, with ``TF_CONFIG`` set by the job (see ``infra/``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(ports: list[int], index: int, task_type: str = "worker") -> str:
    """The ``TF_CONFIG`` of one task of a loopback cluster of workers."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


def launch_workers(command: list[str], workers: int) -> int:
    """Runs ``command`` (a whole argv: program and arguments) as ``workers`` processes.

    The command is the caller's own (``visionpipe train ...``), so this module does not
    know which program it starts; ``--set trainer.strategy=multi_worker`` is appended.

    Returns the chief's exit status, or the first non-zero status of any worker; when
    one worker fails, the others are stopped (they would wait for it forever).
    """
    ports = free_ports(workers)
    procs = []
    for index in range(workers):
        env = {**os.environ, "TF_CONFIG": tf_config(ports, index)}
        argv = [*command, "--set", "trainer.strategy=multi_worker"]
        # Only the chief's output reaches the terminal; the others' goes to stderr.
        stdout = None if index == 0 else sys.stderr
        procs.append(subprocess.Popen(argv, env=env, stdout=stdout))
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [c for c in codes if c not in (None, 0)]
            if failed:
                _stop(procs)
                return failed[0]
            if all(c == 0 for c in codes):
                return 0
            time.sleep(0.2)
    except KeyboardInterrupt:
        _stop(procs)
        raise


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


@contextlib.contextmanager
def environment(**values: str):
    """Sets environment variables for the duration of the block, then restores them."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def launch_tuning(command: list[str], workers: int, run_chief):
    """keras-tuner's distributed mode on this machine: ``workers`` trial processes.

    The calling process is the chief: ``run_chief()`` serves the oracle (it returns
    when every trial has ended) while each worker process runs ``command`` (a whole
    ``visionpipe tune`` argv, program included) with ``KERASTUNER_TUNER_ID=tunerI``.
    The variables are the ones keras-tuner reads, so the same command runs workers
    on other machines.

    Returns what ``run_chief`` returns.

    Raises:
        RuntimeError: a worker process failed.
    """
    [port] = free_ports(1)
    oracle = {"KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": str(port)}
    procs = []
    for index in range(workers):
        env = {**os.environ, **oracle, "KERASTUNER_TUNER_ID": f"tuner{index}"}
        procs.append(subprocess.Popen(command, env=env, stdout=sys.stderr))
    try:
        with environment(**oracle, KERASTUNER_TUNER_ID="chief"):
            result = run_chief()
    except BaseException:
        _stop(procs)
        raise
    failed = [code for code in (p.wait() for p in procs) if code]
    if failed:
        raise RuntimeError(f"tune: a tuning worker failed (exit status {failed[0]})")
    return result
