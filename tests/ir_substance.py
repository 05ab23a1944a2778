"""The substance of a compiled KFP pipeline: what runs, what goes in and out, and the DAG.

Not the bytes: the embedded component source and the config's default JSON change
with every refactoring and every new config key, and say nothing of the wiring.
"""

from __future__ import annotations

import yaml


def _definitions(spec: dict) -> dict:
    out = {}
    for side in ("inputDefinitions", "outputDefinitions"):
        d = spec.get(side, {})
        out[side] = {
            "parameters": {
                k: v.get("parameterType") for k, v in sorted(d.get("parameters", {}).items())
            },
            "artifacts": {
                k: v["artifactType"]["schemaTitle"]
                for k, v in sorted(d.get("artifacts", {}).items())
            },
        }
    return out


def _dag(dag: dict) -> dict:
    tasks = {}
    for name, task in sorted(dag.get("tasks", {}).items()):
        inputs = task.get("inputs", {})
        tasks[name] = {
            "component": task["componentRef"]["name"],
            "after": sorted(task.get("dependentTasks", [])),
            "condition": task.get("triggerPolicy", {}).get("condition", ""),
            "parameters": {
                k: {kk: vv for kk, vv in v.items() if kk != "runtimeValue"}
                for k, v in sorted(inputs.get("parameters", {}).items())
            },
            "artifacts": dict(sorted(inputs.get("artifacts", {}).items())),
        }
    return tasks


def substance(path: str) -> dict:
    """The comparable parts of a compiled pipeline YAML."""
    with open(path) as f:
        spec = yaml.safe_load(f)
    components = {}
    for name, c in sorted(spec["components"].items()):
        entry = _definitions(c)
        if "dag" in c:
            entry["dag"] = _dag(c["dag"])
        else:
            entry["executor"] = c["executorLabel"]
        components[name] = entry
    executors = {}
    for name, e in sorted(spec["deploymentSpec"]["executors"].items()):
        container = e["container"]
        command = container["command"]
        executors[name] = {
            "image": container["image"],
            "args": container.get("args", []),
            "function": command[command.index("--function_to_execute") + 1]
            if "--function_to_execute" in command
            else container.get("args", [])[-1],
            "resources": container.get("resources", {}),
        }
    root = _definitions(spec["root"])
    defaults = {
        k: v.get("defaultValue")
        for k, v in spec["root"].get("inputDefinitions", {}).get("parameters", {}).items()
        if k != "config_json"  # the whole config: grows with every new key
    }
    return {
        "name": spec["pipelineInfo"]["name"],
        "components": components,
        "executors": executors,
        "root": {**root, "dag": _dag(spec["root"]["dag"]), "defaults": defaults},
    }
