"""Every step, found from the step folders: ``components/<folder>/spec.py`` ``STEPS``.

A folder with a ``spec.py`` is a step package; nothing else lists the steps. The
pipeline wires them by name, and the CLI, the KFP components and the console are
derived from what this finds. The independence contract in ``pyproject.toml`` names
``components.*``: ``components/`` holds nothing but step packages (a test holds it).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import pkgutil

import components
from visionpipe.step import Step

# The exit handler's component: no step, but a task of the pipeline (pipelines.finish).
FINISH = "finish"


def step_packages() -> tuple[str, ...]:
    """The step packages: ``components.<folder>`` for each folder with a ``spec.py``."""
    found = []
    for module in pkgutil.iter_modules(components.__path__):
        if module.ispkg and importlib.util.find_spec(f"components.{module.name}.spec"):
            found.append(f"components.{module.name}")
    return tuple(sorted(found))


@functools.cache
def all_steps() -> dict[str, Step]:
    """Every declared step by name, in their ``order`` (pipeline steps as they run).

    Raises:
        ValueError: two folders declare a step of the same name.
    """
    steps: dict[str, Step] = {}
    for package in step_packages():
        for step in importlib.import_module(f"{package}.spec").STEPS:
            if step.name in steps:
                raise ValueError(f"step {step.name!r} is declared twice ({package})")
            steps[step.name] = step
    return dict(sorted(steps.items(), key=lambda item: (item[1].order, item[0])))


def step(name: str) -> Step:
    """The step called ``name``.

    Raises:
        KeyError: no step folder declares it (the message lists those that do).
    """
    steps = all_steps()
    if name not in steps:
        raise KeyError(f"no step {name!r}; declared: {', '.join(sorted(steps))}")
    return steps[name]
