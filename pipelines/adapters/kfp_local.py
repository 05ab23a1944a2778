"""The one place that uses kfp.local's internals: the hook that runs a component's command.

kfp.local (2.17) has no public way to plug in how a task is executed: its
``SubprocessRunner`` hands every lightweight component's command to
``kfp.local.subprocess_task_handler.run_local_subprocess(full_command, env_vars)``.
``run_commands_with`` swaps that function for the duration of one local run, and
``embedded_function`` reads a component's function back from its command. What this
relies on is checked by ``check_internals`` (and by a test that fails when a kfp
release changes it): the function's name and signature, and the command's
``--function_to_execute NAME`` and ``--executor_input JSON`` arguments.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
import warnings
from collections.abc import Callable, Iterator

HOOK = "run_local_subprocess"
HOOK_PARAMETERS = ("full_command", "env_vars")


class KfpInternalsChanged(RuntimeError):
    """The installed kfp no longer has the hook this adapter swaps."""


def check_internals() -> None:
    """Raises KfpInternalsChanged unless kfp.local still runs commands through ``HOOK``."""
    from kfp.local import subprocess_task_handler

    hook = getattr(subprocess_task_handler, HOOK, None)
    if hook is None:
        raise KfpInternalsChanged(f"kfp.local.subprocess_task_handler has no {HOOK}()")
    parameters = tuple(inspect.signature(hook).parameters)
    if parameters != HOOK_PARAMETERS:
        raise KfpInternalsChanged(f"{HOOK}{parameters}: expected the parameters {HOOK_PARAMETERS}")


def argument(command: list[str], flag: str) -> str:
    """The value after ``flag`` in a component command.

    Raises:
        ValueError: the command has no ``flag`` (not a lightweight component's command).
    """
    try:
        return command[command.index(flag) + 1]
    except (ValueError, IndexError):
        raise ValueError(f"not a lightweight component command: no {flag} in it") from None


def embedded_function(command: list[str], name: str):
    """The component function a lightweight component's command embeds, defined anew.

    kfp 2.17 builds the command as ``sh -ec SCRIPT SOURCE --executor_input ...``: the
    function's module source is the argument after the script. Used for components
    this project did not generate (its own are looked up, not re-compiled).
    """
    if len(command) < 4 or command[:2] != ["sh", "-ec"] or f"def {name}(" not in command[3]:
        raise KfpInternalsChanged(
            f"component {name}: its command no longer embeds the function as kfp 2.17 did"
        )
    namespace: dict = {"__name__": f"visionpipe_component_{name}"}
    exec(compile(command[3], f"<component {name}>", "exec", dont_inherit=True), namespace)  # noqa: S102
    return namespace[name]


@contextlib.contextmanager
def run_commands_with(runner: Callable[[list[str], dict | None], int]) -> Iterator[None]:
    """kfp.local runs its components' commands through ``runner`` inside this block."""
    from kfp.local import subprocess_task_handler

    check_internals()
    previous = getattr(subprocess_task_handler, HOOK)
    setattr(subprocess_task_handler, HOOK, runner)
    try:
        with warnings.catch_warnings():
            # kfp.local warns for every image whose name lacks "python"; the project image
            # is built FROM python:3.11-slim (infra/Dockerfile), so the warning is a no-op.
            warnings.filterwarnings(
                "ignore", message=".*non-Python base image", category=RuntimeWarning
            )
            yield
    finally:
        setattr(subprocess_task_handler, HOOK, previous)


def as_compiled(command: list[str]) -> list[str]:
    """A lightweight component's command with ``python3`` where kfp.local put this interpreter.

    kfp.local's ``SubprocessRunner(use_venv=False)`` replaces ``python3`` in the command's
    launcher script (``sh -ec SCRIPT``) with ``sys.executable`` before the hook sees it;
    a container has its own ``python3`` (the image's), so the launcher gets it back.
    """
    if len(command) < 3 or command[:2] != ["sh", "-ec"]:
        raise KfpInternalsChanged("a lightweight component's command no longer starts sh -ec")
    return [*command[:2], command[2].replace(sys.executable, "python3"), *command[3:]]
