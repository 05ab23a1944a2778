"""What the generated KFP component bodies import: one call each.

Kept apart from ``pipelines.execute`` so that a component body's import is small and
its name stable: the compiled IR names it.
"""

from __future__ import annotations

from typing import Any


def execute(name: str, arguments: dict[str, Any]):
    """A step's component body (``pipelines.execute.execute_component``)."""
    from pipelines.execute import execute_component

    return execute_component(name, arguments)


def configure(arguments: dict[str, Any]) -> str:
    """The ``configure`` component body (``pipelines.pipeline.configure``)."""
    from pipelines.pipeline import configure as apply

    return apply(arguments)
