"""How kfp.local runs one component: in this process, or in a subprocess of its own.

kfp.local resolves the DAG, ``dsl.If`` conditions and artifact hand-over, and then
runs each lightweight component's command through one function, which
``pipelines.adapters.kfp_local`` (the one user of kfp's internals) swaps, for the
duration of one local run, for ``TaskRunner``:

- ``isolation="process"`` (the default) runs the command's component in this process,
  the way TFX's LocalDagRunner runs its components: the same generated component
  function (``pipelines.kfp_components``), executed by KFP's own ``Executor`` on the
  same executor input, so outputs and artifacts are
  written exactly as the subprocess would write them. TensorFlow, Beam and MLflow are
  imported once per run instead of once per step. Between steps the state a step can
  leave behind is reset: environment variables, working directory, root logging,
  warning filters, random seeds, Keras's global state and TensorFlow's default graph,
  and any MLflow run left active.
- ``isolation="subprocess"`` runs the command as kfp.local does, one Python process
  per step, relaying its output line by line and keeping its last line (a Python
  traceback ends with the exception).
- ``isolation="container"`` runs the same command in the project image, one container
  per step (``pipelines.adapters.containers``), relaying its output the same way. A
  container that exits 0 without having written the component's executor output did not
  run the component: that fails the step.

Either way a ``TaskRunner`` reports each step's start and end to its listener and
remembers the error a step died of, so the console can show the step's own message.
kfp.local retries a failed step as its ``set_retry`` policy says (``pipeline.retries``);
the listener hears ``on_retry`` for each failed attempt with retries left. A step that
failed on bad input (a ``UserError``, in this process) fails the same way again: its
retries return at once, without running it.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import random
import subprocess
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from pipelines.adapters.containers import ContainerCommands
from pipelines.adapters.kfp_local import (
    argument,
    as_compiled,
    embedded_function,
    run_commands_with,
)
from pipelines.catalog import FINISH
from visionpipe import progress

ISOLATIONS = ("process", "subprocess", "container")
QUIET_STEPS = (FINISH,)  # the exit handler: no console line of its own


def step_name(function_name: str) -> str:
    """The pipeline step of a component function (``data_check`` -> ``data-check``)."""
    return function_name.replace("_", "-")


@dataclass
class TaskRunner:
    """Runs component commands; tells ``on_start(step)`` and ``on_end(step, ok)``.

    With ``progress``, each step runs with ``VISIONPIPE_PROGRESS=1`` in its environment
    (its own process's, or this one's while it runs) and so writes progress lines.
    """

    isolation: str = "process"
    progress: bool = False
    on_start: Callable[[str], None] = lambda step: None
    on_end: Callable[[str, bool], None] = lambda step, ok: None
    on_retry: Callable[[str, str, int, int], None] = lambda step, error, attempt, of: None
    errors: dict[str, str] = field(default_factory=dict)
    retries: Mapping[str, int] = field(default_factory=dict)  # step -> retries kfp makes
    attempts: dict[str, int] = field(default_factory=dict)
    settled: set[str] = field(default_factory=set)  # failed on bad input: retrying is moot
    containers: ContainerCommands | None = None  # isolation="container": where commands run

    def __post_init__(self) -> None:
        if self.isolation not in ISOLATIONS:
            raise ValueError(
                f"isolation must be one of {', '.join(ISOLATIONS)}. Received: {self.isolation!r}"
            )
        if (self.isolation == "container") != (self.containers is not None):
            raise ValueError("isolation='container' goes with containers, and only it")

    def __call__(self, full_command: list[str], env_vars: dict | None = None) -> int:
        """Runs one component command; returns its exit status (0: success)."""
        name = argument(full_command, "--function_to_execute")
        step = step_name(name)
        if step in self.settled:  # kfp retries it; the same input fails the same way
            return 1
        attempt = self.attempts[step] = self.attempts.get(step, 0) + 1
        shown = step not in QUIET_STEPS
        if shown:
            self.on_start(step)
        env = {**(env_vars or {}), **({progress.ENV: "1"} if self.progress else {})}
        if self.isolation == "process":
            status = self._in_process(full_command, name, step, env)
        elif self.isolation == "container":
            status = self._in_container(full_command, step, env)
        else:
            status = self._in_subprocess(full_command, step, env)
        retry = status != 0 and step not in self.settled and attempt <= self.retries.get(step, 0)
        if retry and shown:
            self.on_retry(step, self.errors.get(step, ""), attempt, self.retries[step])
        elif shown:
            self.on_end(step, status == 0)
        if status == 0:
            self.errors.pop(step, None)
        return status

    def _in_subprocess(self, full_command: list[str], step: str, env: dict) -> int:
        relay = _Relay()
        with subprocess.Popen(
            full_command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env={**os.environ, **env},
        ) as process:
            for line in process.stdout:
                relay(line)
            status = process.wait()
        if status:
            self._failed(step, relay.last or f"exited with status {status}")
        return status

    def _failed(self, step: str, last_line: str) -> None:
        """A step in a process of its own failed; ``last_line`` is its output's last line.

        A traceback ends with ``module.Class: message``: when the class is one of this
        project's ``UserError``s, the step failed on bad input, as in this process: the
        message alone is its error, and retrying it is moot.
        """
        error = user_error_in(last_line)
        if error is not None:
            self.settled.add(step)
        self.errors[step] = error or last_line

    def _in_container(self, full_command: list[str], step: str, env: dict) -> int:
        output = json.loads(argument(full_command, "--executor_input"))["outputs"]["outputFile"]
        with contextlib.suppress(FileNotFoundError):
            os.remove(output)  # an earlier attempt's: only this attempt's may count
        relay = _Relay()
        status = self.containers.run(as_compiled(full_command), env, relay)
        if status:
            self._failed(step, relay.last or f"its container exited with status {status}")
        elif not os.path.isfile(output):
            self.errors[step] = (
                f"its container exited 0 without writing the executor output {output}: "
                "the component did not run (is the image visionpipe's?)"
            )
            status = 1
        return status

    def _in_process(self, full_command: list[str], name: str, step: str, env: dict) -> int:
        from kfp.dsl import executor

        from pipelines.kfp_components import component_functions
        from pipelines.parameters import PARAMETER_TYPES
        from visionpipe.errors import UserError

        generated = component_functions(tuple(PARAMETER_TYPES.items()))
        executor_input = json.loads(argument(full_command, "--executor_input"))
        with isolated_state({**env, "_KFP_RUNTIME": "true"}):
            try:
                function = generated.get(name) or embedded_function(full_command, name)
                executor.Executor(executor_input, function).execute()
            except Exception as err:  # noqa: BLE001 - any failure fails the step, not the runner
                traceback.print_exc()
                self.errors[step] = describe(err)
                if isinstance(err, UserError):
                    self.settled.add(step)
                return 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
        return 0


PROJECT_PACKAGES = ("visionpipe.", "components.", "trainer.", "pipelines.")


def user_error_in(line: str) -> str | None:
    """The message of ``line`` when it is a traceback's last line naming a ``UserError``."""
    from visionpipe.errors import UserError

    name, colon, message = line.partition(": ")
    module, _, cls = name.rpartition(".")
    if not colon or not cls.isidentifier() or not f"{module}.".startswith(PROJECT_PACKAGES):
        return None
    try:
        found = getattr(importlib.import_module(module), cls, None)
    except ImportError:
        return None
    if isinstance(found, type) and issubclass(found, UserError):
        return message.strip()
    return None


class _Relay:
    """Writes a step's output lines to this process's stdout and keeps the last non-blank."""

    def __init__(self) -> None:
        self.last = ""

    def __call__(self, line: str) -> None:
        sys.stdout.write(line)
        self.last = line.strip() or self.last


@contextlib.contextmanager
def task_runner(runner: TaskRunner) -> Iterator[TaskRunner]:
    """kfp.local runs its components through ``runner`` inside this block."""
    with run_commands_with(runner):
        yield runner


@contextlib.contextmanager
def isolated_state(env: dict[str, str]) -> Iterator[None]:
    """Runs a step with ``env`` added, then puts back what a step may have changed."""
    saved_env = dict(os.environ)
    cwd = os.getcwd()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    filters = warnings.filters[:]
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(cwd)
        root.handlers[:] = handlers
        root.setLevel(level)
        warnings.filters[:] = filters
        reset_frameworks()


def reset_frameworks() -> None:
    """Clears what the frameworks keep between calls in one process."""
    random.seed()
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    if "keras" in sys.modules:
        # Keras's global state: seed generator, dtype policy, layer names; and TF's graph.
        sys.modules["keras"].backend.clear_session()
    if "tensorflow" in sys.modules:
        sys.modules["tensorflow"].random.set_seed(None)
    if "mlflow" in sys.modules:
        mlflow = sys.modules["mlflow"]
        while mlflow.active_run() is not None:
            mlflow.end_run("FAILED")


def describe(err: BaseException) -> str:
    """A failed step's error in one line: a user error's own words, else type and message."""
    from visionpipe.errors import UserError

    text = str(err).strip().splitlines()[:1] or [""]
    if isinstance(err, UserError):
        return text[0]
    return f"{type(err).__name__}: {text[0]}".rstrip(": ")
