"""A verb per declared step, derived from its spec: arguments, call and output are the spec's.

Every such verb does its work through ``pipelines.execute.run_step``, so it records the
same way however it is run: a run of its own in the tracking store, its parameters,
metrics and artifacts.
"""

from __future__ import annotations

from pipelines import catalog
from visionpipe.step import Step


def add_verbs(command) -> None:
    """One verb for each step whose spec has a ``Verb``."""
    for step in catalog.all_steps().values():
        if step.verb is not None:
            p = command(step.verb.name or step.name, _handler(step), step.verb.help)
            step.verb.arguments(p)


def _handler(step: Step):
    def handle(args, config) -> int:
        from pipelines.execute import run_step

        verb = step.verb
        config = config.with_overrides(verb.overrides(args))  # validated by Config
        if verb.launch is not None:
            status = verb.launch(args)
            if status is not None:
                return status
        result = run_step(step, config, **verb.call(args))
        return verb.show(args, result) or 0

    return handle
