"""The KFP components, generated from the step specs: one thin body per step.

kfp's lightweight components embed their function's source (``inspect.getsource``),
so a component cannot be a closure over a spec. Each step's function is generated as
source text from its spec (its input artifacts, parameters, the three common
parameters and its output artifacts, in that order, and its return type) whose whole
body is one call, ``execute(name, arguments)`` (``pipelines.execute.execute_component``);
the text is registered with ``linecache`` so that ``inspect`` (and so kfp) reads it like
a file's. The
``configure`` component is generated the same way from the pipeline's parameters.

The exit handler's ``finish`` component is generated likewise (``pipelines.finish``).

``make_components(image)`` binds them to the configured base image; nothing is decided
at import time.
"""

from __future__ import annotations

import functools
import linecache
from collections.abc import Callable, Mapping
from typing import Any

from kfp import dsl

from pipelines import catalog
from pipelines.catalog import FINISH
from pipelines.execute import COMMON_PARAMETERS
from visionpipe.step import ARTIFACT_TYPES, Step

_NAMESPACE_TYPES = {
    name: getattr(dsl, name)
    for name in (*ARTIFACT_TYPES, "Input", "Output", "PipelineTaskFinalStatus")
}


def step_source(step: Step) -> str:
    """The Python source of a step's component function."""
    args = [f"{n}: Input[{t}]" for n, t in step.inputs.items()]
    args += [f"{n}: {t.__name__}" for n, t in step.params.items()]
    args += [f"{n}: str" for n in COMMON_PARAMETERS]
    args += [f"{n}: Output[{t}]" for n, t in step.outputs.items()]
    returns = f" -> {step.returns.__name__}" if step.returns else ""
    body = f"return execute({step.name!r}, arguments)"
    entry = "pipelines.execute import execute_component as execute"
    return _function(step.function_name, args, returns, step.doc or step.name, body, entry)


def configure_source(parameters: Mapping[str, type]) -> str:
    """The ``configure`` component: the compiled-in config with the run's parameters applied."""
    args = [f"{n}: {t.__name__}" for n, t in parameters.items()] + ["config_json: str"]
    doc = (
        "The run's config: the compiled-in config with this run's parameters applied. "
        "Fails (before any step) on a bad value."
    )
    entry = "pipelines.parameters import configure"
    return _function("configure", args, " -> str", doc, "return configure(arguments)", entry)


def finish_source() -> str:
    """The exit handler's component: it gets the run's final status (``pipelines.finish``)."""
    args = ["status: PipelineTaskFinalStatus", *(f"{n}: str" for n in COMMON_PARAMETERS)]
    doc = (
        "Runs when the pipeline ends, failed or not: marks the MLflow pipeline run and "
        "calls pipeline.notify_url."
    )
    entry = "pipelines.finish import finish"
    return _function(FINISH, args, "", doc, "finish(arguments)", entry)


def _function(name: str, args: list[str], returns: str, doc: str, body: str, entry: str) -> str:
    """``def name(args) -> returns``: the docstring, then ``from ENTRY`` and ``body``."""
    signature = "".join(f"    {a},\n" for a in args)
    return (
        f"def {name}(\n{signature}){returns}:\n"
        f"    {doc!r}\n"
        "    arguments = dict(locals())\n"
        f"    from {entry}\n\n"
        f"    {body}\n"
    )


def compile_function(name: str, source: str) -> Callable[..., Any]:
    """Defines the function ``source`` holds, with its source visible to ``inspect``."""
    filename = f"<visionpipe component {name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict[str, Any] = {"__name__": f"visionpipe_component_{name}", **_NAMESPACE_TYPES}
    code = compile(source, filename, "exec", dont_inherit=True)  # real annotations, not text
    exec(code, namespace)  # noqa: S102 - our generated source
    return namespace[name]


@functools.cache
def component_functions(parameters: tuple[tuple[str, type], ...]) -> dict[str, Callable]:
    """Every component function by function name: the pipeline steps' and ``configure``."""
    functions = {
        "configure": compile_function("configure", configure_source(dict(parameters))),
        FINISH: compile_function(FINISH, finish_source()),
    }
    for step in catalog.all_steps().values():
        if step.in_pipeline:
            functions[step.function_name] = compile_function(step.function_name, step_source(step))
    return functions


def make_components(
    image: str, parameters: Mapping[str, type], training_image: str | None = None
) -> dict[str, Any]:
    """The components by step name (and ``configure``), on ``image``.

    Training steps (``Step.training``) run on ``training_image`` when one is given.
    """
    component = dsl.component(base_image=image, install_kfp_package=False)
    training = dsl.component(base_image=training_image or image, install_kfp_package=False)
    functions = component_functions(tuple(parameters.items()))
    made = {name: component(functions[name]) for name in ("configure", FINISH)}
    for step in catalog.all_steps().values():
        if step.in_pipeline:
            wrap = training if step.training else component
            made[step.name] = wrap(functions[step.function_name])
    return made
